"""The short way in for programs: ``freight.connect`` and ``freight.listen``.

    async with freight.connect(hub, to="bob", app="chat") as conn:
        await conn.send(b"hello")
        reply = await conn.recv()

    async with freight.listen(hub, app="chat") as listener:
        async for conn in listener:
            ...

``hub`` is the URL of a hub this machine has logged in to (``freight
login``), or None for the last one. Each call keeps its own attachment,
re-established across network faults and hub restarts. Both are shortcuts
for :meth:`freight.Client.connect` and :meth:`freight.Client.listen`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .client.api import Client
from .client.listener import Listener
from .client.relay import Connection

__all__ = ["connect", "listen"]


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
