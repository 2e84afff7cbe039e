"""Message bodies sealed end to end between two messaging hosts.

The hub carries a message's routing header (MsgSend/MsgDeliver) and a sealed
payload it cannot read or alter unnoticed:

* pair keys: ``shared = X25519(my_private, their_public)``; the key for the
  direction a -> b is HKDF-SHA256(shared, salt = a's key || b's key,
  info = :data:`INFO`), 32 bytes, so a -> b and b -> a differ;
* payload: ``nonce (12 random bytes) || AES-256-GCM(key, nonce, body, aad)``
  where the additional data binds the header (:func:`aad`): id, both host
  ids, type, app, ticket, from_ticket, reply_to. Changing any of them makes
  :func:`open_body` fail with :class:`IntegrityError`.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError

INFO: Final = b"freight msg v1"
NONCE_BYTES: Final = 12
SEAL_OVERHEAD: Final = NONCE_BYTES + 16  # nonce and tag
MAX_MESSAGE_BODY: Final = 1024 * 1024


def new_host_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def pair_keys(mine: X25519PrivateKey, theirs: bytes) -> tuple[bytes, bytes]:
    """(key for what I send them, key for what they send me)."""
    try:
        shared = mine.exchange(X25519PublicKey.from_public_bytes(theirs))
    except ValueError:
        raise IntegrityError("the other host's key is not a usable X25519 key") from None
    me = public_bytes(mine)
    return direction_key(shared, me, theirs), direction_key(shared, theirs, me)


def direction_key(shared: bytes, sender: bytes, receiver: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=sender + receiver, info=INFO)
    return hkdf.derive(shared)


def aad(
    mid: str,
    sender: str,
    receiver: str,
    type_: int,
    app: str,
    ticket: str = "",
    from_ticket: str = "",
    reply_to: str = "",
) -> bytes:
    """The header bytes a seal binds (ids and host ids are 32 hex digits)."""
    try:
        head = bytes.fromhex(mid) + bytes.fromhex(sender) + bytes.fromhex(receiver)
    except ValueError:
        raise IntegrityError("a message or host id is not hex") from None
    if len(head) != 48:
        raise IntegrityError("message and host ids have 16 bytes each")
    return b"".join(
        (
            INFO,
            b"\0",
            head,
            type_.to_bytes(4, "big"),
            app.encode(),
            b"\0",
            ticket.encode(),
            b"\0",
            from_ticket.encode(),
            b"\0",
            reply_to.encode(),
        )
    )


def seal_body(key: bytes | AESGCM, body: bytes, header: bytes) -> bytes:
    """``body`` sealed with the direction key (or an AESGCM made of it,
    kept to save making one per message), bound to ``header`` (:func:`aad`)."""
    if len(body) > MAX_MESSAGE_BODY:
        raise IntegrityError(f"a message body has at most {MAX_MESSAGE_BODY} bytes")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, body, header)


def open_body(key: bytes | AESGCM, payload: bytes, header: bytes) -> bytes:
    """The body of a sealed payload, or :class:`IntegrityError`."""
    if len(payload) < SEAL_OVERHEAD or len(payload) > MAX_MESSAGE_BODY + SEAL_OVERHEAD:
        raise IntegrityError("a sealed message has the wrong size")
    try:
        return _aead(key).decrypt(payload[:NONCE_BYTES], payload[NONCE_BYTES:], header)
    except InvalidTag:
        raise IntegrityError("the message's seal does not verify") from None


def _aead(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)
