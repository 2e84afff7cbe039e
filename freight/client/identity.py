"""This device's identity for end-to-end connections: an Ed25519 key kept
in the client's folder (0600), registered with the hub for the account."""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError
from ..protocol.e2e import load_identity, new_identity, public_of
from .config import ClientConfig
from .session import HubSession

__all__ = ["identity_key", "register_identity"]


def identity_key(config: ClientConfig) -> Any:
    """This device's Ed25519 identity key, created on first use (0600)."""
    path = config.root / "identity.key"
    try:
        return load_identity(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        pass
    except ValueError:
        raise UsageError(f"{path} is damaged; delete it and log in again") from None
    private, _ = new_identity()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    return load_identity(private)


async def register_identity(session: HubSession, config: ClientConfig) -> Any:
    """Make sure the hub lists this device's identity key for the account."""
    key = identity_key(config)
    await session.request("PUT", "/v1/keys", json={"key": public_of(key).hex()})
    return key
