"""The short way in for programs: ``freight.connect`` and ``freight.listen``,
and the tunnels ``freight.forward``, ``freight.forward_udp`` and
``freight.expose``.

    async with freight.connect(hub, to="bob", app="chat") as conn:
        await conn.send(b"hello")
        reply = await conn.recv()

    async with freight.listen(hub, app="chat") as listener:
        async for conn in listener:
            ...

    async with freight.forward(hub, to="lab-pc-7:127.0.0.1:5432") as fwd:
        host, port = fwd.address          # connect there: it reaches lab-pc-7's port

    async with freight.expose(hub, name="web", target="127.0.0.1:3000", allow=["bob"]):
        ...                               # bob reaches it with forward(to="alice:web")

    async with freight.forward_udp(hub, to="lab-pc-7:127.0.0.1:53") as fwd:
        host, port = fwd.address          # datagrams there reach lab-pc-7's UDP port 53

``hub`` is the URL of a hub this machine has logged in to (``freight
login``), or None for the last one. Each call keeps its own attachment,
re-established across network faults and hub restarts. Both are shortcuts
for :meth:`freight.Client.connect` and :meth:`freight.Client.listen`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from .client.api import Client
from .client.config import ClientConfig
from .client.listener import Listener
from .client.pacing import resolve_limit
from .client.relay import Connection, RelayClient
from .client.session import HubSession, canonical_url, parse_hub_url
from .client.tunnels import DEFAULT_MAX_CONNS, ForwardServer, TunnelServer
from .client.tunnels import expose as _expose
from .client.tunnels import unexpose as _unexpose
from .client.udpforward import UdpForward, serve_udp
from .errors import UsageError
from .names import check_user_name
from .protocol.datagrams import IDLE_TIMEOUT, MAX_FLOWS, FlowLimits
from .protocol.tunnel import parse_bind, parse_destination, parse_name, parse_target
from .units import parse_limit

__all__ = ["connect", "expose", "forward", "forward_udp", "listen"]


@asynccontextmanager
async def connect(
    hub: str | None = None,
    *,
    to: str,
    app: str,
    transport: str = "auto",
    timeout: float | None = None,
) -> AsyncIterator[Connection]:
    """An end-to-end encrypted connection to ``to``'s ``app``; closed (after
    everything sent is acknowledged) when the block ends."""
    async with (
        Client(hub, transport=transport) as client,
        client.connect(to, app, timeout=timeout) as conn,
    ):
        yield conn


@asynccontextmanager
async def listen(
    hub: str | None = None, *, app: str, peer: str = "*", transport: str = "auto"
) -> AsyncIterator[Listener]:
    """Accept connections for ``app`` (from ``peer`` only, unless ``*``)."""
    async with (
        Client(hub, transport=transport) as client,
        client.listen(app, peer=peer) as listener,
    ):
        yield listener


def _relay(hub: str | None, transport: str, config_dir: Path | None) -> RelayClient:
    config = ClientConfig(config_dir)
    url = canonical_url(parse_hub_url(hub)) if hub else None
    return RelayClient(HubSession.from_config(config, url), config, transport=transport)


@asynccontextmanager
async def forward(
    hub: str | None = None,
    *,
    to: str,
    local: str = "0",
    max_conns: int = DEFAULT_MAX_CONNS,
    spare: bool = True,
    limit: str | None = None,
    transport: str = "auto",
    config_dir: Path | None = None,
) -> AsyncIterator[ForwardServer]:
    """``freight forward LOCAL TO`` for the length of the block: ``to`` is
    ``AGENT:HOST:PORT`` or ``USER:NAME``, ``local`` ``[BIND:]PORT`` (``0``:
    any free port; the server's ``address`` says which). ``config_dir``: the
    login to use (default: this user's, as the CLI). ``limit``: ``RATE`` or
    ``PCT%`` each way for all its connections together, as ``--limit``."""
    try:
        host, port = parse_bind(local)
        dest = parse_destination(to)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    wanted = parse_limit(limit) if limit else None
    async with _relay(hub, transport, config_dir) as relay:
        await relay.start()
        up = down = 0
        if wanted is not None:
            up = await resolve_limit(wanted, relay.session, "up")
            down = await resolve_limit(wanted, relay.session, "down")
        server = ForwardServer(
            relay,
            dest,
            host,
            port,
            max_conns=max_conns,
            spare=spare,
            limit_up=up,
            limit_down=down,
        )
        async with server:
            yield server


@asynccontextmanager
async def forward_udp(
    hub: str | None = None,
    *,
    to: str,
    local: str = "0",
    idle: float = IDLE_TIMEOUT,
    max_flows: int = MAX_FLOWS,
    transport: str = "auto",
    config_dir: Path | None = None,
) -> AsyncIterator[UdpForward]:
    """``freight forward --udp LOCAL TO`` for the length of the block: each
    source address that sends to the local UDP port is one flow, ended after
    ``idle`` seconds without a datagram; ``to`` is ``AGENT:HOST:PORT`` (an
    agent's ``udp/`` target) or ``USER:NAME`` (a name exposed with udp)."""
    try:
        host, port = parse_bind(local)
        dest = parse_destination(to)
        limits = FlowLimits(idle_timeout=idle, max_flows=max_flows)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with _relay(hub, transport, config_dir) as relay:
        await relay.start()
        async with UdpForward(relay, dest, host, port, limits=limits) as server:
            yield server


@asynccontextmanager
async def expose(
    hub: str | None = None,
    *,
    name: str,
    target: str,
    allow: Iterable[str],
    udp: bool = False,
    transport: str = "auto",
    config_dir: Path | None = None,
) -> AsyncIterator[TunnelServer]:
    """``freight expose NAME TARGET --allow … [--udp]`` for the length of the
    block: ``target`` is ``[HOST:]PORT`` on this machine's network, ``allow``
    the accounts that may forward to it (``*``: every account)."""
    try:
        parse_name(name)
        aim = parse_target(target if ":" in target else f"127.0.0.1:{target}")
        accounts = frozenset(a if a == "*" else check_user_name(a) for a in allow)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not accounts:
        raise UsageError("say who may use it: allow=[USER, ...] or allow=['*']")
    if udp or aim.udp:
        aim = replace(aim, udp=True)
        serve_udp()
    async with _relay(hub, transport, config_dir) as relay:
        await relay.start()
        server = await _expose(relay, name, aim, accounts)
        try:
            yield server
        finally:
            await _unexpose(relay, server)
