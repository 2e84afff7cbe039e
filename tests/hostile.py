"""Hostile and scripted clients for the limit tests: raw control WebSockets
with a saved login, frames sent by hand."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from tests.support import Client, Hub


def insecure_ssl() -> ssl.SSLContext:
    """Loopback tests talk to the hub's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def token_of(client: Client) -> str:
    """The bearer token ``client`` saved at login."""
    cfg = json.loads((client.config / "config.json").read_text())
    return str(cfg["hubs"][cfg["hub"]]["token"])


async def control_ws(hub: Hub, token: str) -> tuple[aiohttp.ClientSession, Any]:
    """A raw control WebSocket (no Hello sent yet); close the session after."""
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    try:
        ws = await session.ws_connect(f"{hub.url}/v1/control", ssl=insecure_ssl())
    except BaseException:
        await session.close()
        raise
    return session, ws
