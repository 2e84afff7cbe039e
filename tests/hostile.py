"""Hostile and scripted clients for the limit tests: raw control WebSockets
with a saved login, frames sent by hand, an agent driven by hand."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from freight.agent.config import AgentConfig
from freight.agent.daemon import agent_login
from freight.client.config import ClientConfig
from freight.client.options import QuietReporter, options_from_env
from freight.client.session import HubSession
from freight.client.transfer import push_many
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


class RawAgent:
    """An enrolled agent's own credentials (its config folder), driven by
    hand instead of by ``freight agent run``: a crashing or lying agent."""

    def __init__(self, hub: Hub, config_dir: Path) -> None:
        self.hub = hub
        self.config = ClientConfig(config_dir)
        self.cfg = AgentConfig.load(self.config)

    async def token(self) -> str:
        return await agent_login(self.cfg, self.config)

    async def attach(self, token: str) -> tuple[aiohttp.ClientSession, Any, m.AnyMessage]:
        """A control channel that says it is the agent's command channel."""
        session, ws = await control_ws(self.hub, token)
        await ws.send_bytes(encode_frame(m.Hello(version=1, agent="freight-agent/raw")))
        return session, ws, await recv_frame(ws)

    async def push(self, token: str, path: Path, name: str) -> None:
        """``freight push`` with the agent's login, as its uploads do."""
        session = HubSession(self.cfg.hub, fingerprint=self.cfg.fingerprint, token=token)
        async with session:
            await push_many(
                session, self.config, [(path, name)], options_from_env(), QuietReporter()
            )


async def settled(ws: Any) -> None:
    """Wait until the hub has handled every frame sent before on ``ws``: it
    handles control frames in order, and answers a ticket request."""
    await ws.send_bytes(encode_frame(m.TicketRequest(rid="sync")))
    while True:
        msg = await recv_frame(ws)
        if isinstance(msg, m.TicketGrant) and msg.rid == "sync":
            return
