"""Host keys bound to an account's identity key (protocol/msgkeys.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from freight.protocol.msgkeys import BadHostKey, host_id, sign_host_key, verify_host_key


def _raw(key: object) -> bytes:
    return key.public_key().public_bytes_raw()  # type: ignore[attr-defined]


def test_a_signed_host_key_verifies_and_names_its_host() -> None:
    identity, key = Ed25519PrivateKey.generate(), _raw(X25519PrivateKey.generate())
    sig = sign_host_key(identity, key)
    hid = verify_host_key(_raw(identity), key, sig)
    assert hid == host_id(key)
    assert len(hid) == 32
    assert int(hid, 16) >= 0


def test_another_identity_or_another_key_is_refused() -> None:
    identity, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key, key2 = _raw(X25519PrivateKey.generate()), _raw(X25519PrivateKey.generate())
    sig = sign_host_key(identity, key)
    with pytest.raises(BadHostKey, match="not signed"):
        verify_host_key(_raw(other), key, sig)
    with pytest.raises(BadHostKey, match="not signed"):
        verify_host_key(_raw(identity), key2, sig)
    with pytest.raises(BadHostKey, match="not signed"):
        verify_host_key(_raw(identity), key, bytes(64))
    with pytest.raises(BadHostKey, match="32 bytes"):
        verify_host_key(_raw(identity), key[:31], sig)


def test_host_ids_differ_per_key() -> None:
    keys = {_raw(X25519PrivateKey.generate()) for _ in range(20)}
    assert len({host_id(k) for k in keys}) == 20
