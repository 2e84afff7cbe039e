"""Hostile and scripted clients for the limit tests: raw control WebSockets
with a saved login, frames sent by hand."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import aiohttp

from freight.protocol import messages as m
from freight.protocol.frames import decode_frame, encode_frame
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


async def attach(hub: Hub, token: str) -> tuple[aiohttp.ClientSession, Any, m.AnyMessage]:
    """A raw control channel after Hello: the hub's answer (Welcome, or an
    Error refusing the channel) comes back with it."""
    session, ws = await control_ws(hub, token)
    await ws.send_bytes(encode_frame(m.Hello(version=1)))
    return session, ws, await recv_frame(ws)


async def recv_frame(ws: Any, timeout: float = 10) -> m.AnyMessage:
    item = await asyncio.wait_for(ws.receive(), timeout)
    assert item.type == aiohttp.WSMsgType.BINARY, item
    return decode_frame(item.data)[0]


async def ticket(ws: Any) -> m.TicketGrant:
    await ws.send_bytes(encode_frame(m.TicketRequest(rid="r1")))
    grant = await recv_frame(ws)
    assert isinstance(grant, m.TicketGrant), grant
    return grant
