"""A hub node's own session on PostgreSQL, named after the process
(``application_name``), so other nodes can tell at once that it died.

A process that dies (SIGKILL, a crash, the machine's power) drops its
connections; the database ends their sessions within milliseconds and they
leave ``pg_stat_activity``. A node that is alive but has lost its session
notices on its next ping (:class:`freight.hub.nodes.NodeService` pings every
half second) and stops writing. Other nodes therefore take over its pushes
once its session has been gone longer than a node may write without a ping,
instead of waiting for its heartbeat's lease (docs/cluster.md).

Only PostgreSQL through asyncpg has sessions others can see; on SQLite a
hub runs alone and nothing here is used.
"""

from __future__ import annotations

import asyncio
import contextlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = ["SESSION_PREFIX", "SessionWatch", "session_name", "watchable"]

SESSION_PREFIX = "freight-node "


def session_name(incarnation: str) -> str:
    """The ``application_name`` of node process ``incarnation``'s session."""
    return SESSION_PREFIX + incarnation


def watchable(engine: AsyncEngine) -> bool:
    """Whether sessions on this database are visible to every node."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"


class SessionWatch:
    """One connection of its own, named after node process ``incarnation``."""

    def __init__(self, engine: AsyncEngine, incarnation: str) -> None:
        self.engine = create_async_engine(
            engine.url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": session_name(incarnation)}},
        )
        self.conn: AsyncConnection | None = None

    async def ping(self) -> None:
        """Raises (the driver's error) if the session is gone or out of reach."""
        if self.conn is None:
            self.conn = await self.engine.connect()
        await self.conn.execute(sa.text("SELECT 1"))

    async def drop(self) -> None:
        """Forget the connection (the next ping opens another)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await conn.invalidate()

    async def aclose(self) -> None:
        await self.drop()
        await self.engine.dispose()
