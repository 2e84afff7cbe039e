"""A messaging host's key: X25519, bound to its account by an identity key.

A host (an agent, ``freight daemon``, or a command acting as its own host)
keeps one X25519 key; its **host id** is the first 16 bytes of the key's
BLAKE2b digest, in hex. The host announces the key (MsgHello) with an
Ed25519 signature by one of its account's identity keys over
:data:`KEY_CONTEXT` followed by the 32 key bytes: the hub checks that the
identity key is one the account registered, and every host that seals a
message for it (or opens one from it) checks the signature. See
docs/protocol.md "Messaging".
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import RemoteProtocolError

KEY_CONTEXT: Final = b"freight msg key v1\x00"
HOST_ID_BYTES: Final = 16


class BadHostKey(RemoteProtocolError):
    """A host key whose signature, identity or id does not check out."""

    code = "bad_host_key"


def host_id(key: bytes) -> str:
    """The host id of X25519 public key ``key`` (32 hex digits)."""
    if len(key) != 32:
        raise BadHostKey(f"a host key has 32 bytes, not {len(key)}")
    return hashlib.blake2b(key, digest_size=HOST_ID_BYTES).hexdigest()


def sign_host_key(identity: Ed25519PrivateKey, key: bytes) -> bytes:
    """The identity key's signature binding host key ``key`` to its account."""
    return identity.sign(KEY_CONTEXT + key)


def verify_host_key(identity: bytes, key: bytes, sig: bytes) -> str:
    """Check that ``identity`` (raw Ed25519 public key) signed host key
    ``key``; the host id on success, :class:`BadHostKey` otherwise."""
    hid = host_id(key)
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(sig, KEY_CONTEXT + key)
    except (InvalidSignature, ValueError):
        raise BadHostKey("the host key is not signed by the identity key it names") from None
    return hid
