"""The short way in for programs: ``freight.connect`` and ``freight.listen``.

    async with freight.connect(hub, to="bob", app="chat") as conn:
        await conn.send(b"hello")
        reply = await conn.recv()

    async with freight.listen(hub, app="chat") as listener:
        async for conn in listener:
            ...

``hub`` is the URL of a hub this machine has logged in to (``freight
login``), or None for the last one. Each call keeps its own attachment,
re-established across network faults and hub restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .client.config import ClientConfig
from .client.listener import Listener
from .client.relay import Connection, RelayClient
from .client.session import HubSession


def _relay(hub: str | None, transport: str) -> RelayClient:
    config = ClientConfig()
    return RelayClient(HubSession.from_config(config, hub), config, transport=transport)


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
    async with _relay(hub, transport) as relay:
        await relay.start()
        conn = await relay.connect(to, app, timeout=timeout)
        async with conn:
            yield conn


@asynccontextmanager
async def listen(
    hub: str | None = None, *, app: str, peer: str = "*", transport: str = "auto"
) -> AsyncIterator[Listener]:
    """Accept connections for ``app`` (from ``peer`` only, unless ``*``)."""
    async with _relay(hub, transport) as relay:
        await relay.start()
        listener = await relay.listen(app, peer)
        try:
            yield listener
        finally:
            await listener.aclose()
