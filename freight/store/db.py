"""The hub's database: SQLAlchemy Core (async) on SQLite or PostgreSQL.

All SQL lives in this package, one repository per aggregate:

=================  ====================================  ======================
``db.users``       accounts                              :mod:`.users`
``db.logins``      logins (tokens) and identity keys     :mod:`.accounts`
``db.streams``     pushes under way and stored files     :mod:`.streams`
``db.relay_keys``  keys the relay vouches for, codes     :mod:`.relaykeys`
``db.agents``      enrolment tokens and agents           :mod:`.agents`
``db.commands``    agents' durable commands              :mod:`.commands`
``db.collection``  policies, catalogue, content          :mod:`.collection`
``db.events``      the event log and settings            :mod:`.events`
``db.links``       links to stored files                 :mod:`.links`
``db.approvals``   registrations, roles, applications    :mod:`.approvals`
``db.nodes_repo``  hub nodes, who receives each push     :mod:`.nodes`
=================  ====================================  ======================

Each returns frozen typed rows (:mod:`.rows`); command and content states
change only as their lifecycle table allows. :class:`Database` is all of
them over one engine and one clock (so ``db.user_by_name(...)`` and
``db.users.user_by_name(...)`` are the same call).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .accounts import Logins
from .agents import Agents
from .approvals import Approvals
from .base import Repository
from .collection import Collection
from .commands import OPEN_COMMAND_STATES, Commands
from .events import Events
from .links import Links
from .nodes import Nodes
from .places import RelayPlaces
from .relaykeys import CODE_QUARANTINE, RelayKeys
from .streams import Streams
from .users import Users

__all__ = ["CODE_QUARANTINE", "MIGRATIONS", "OPEN_COMMAND_STATES", "Database"]

MIGRATIONS = Path(__file__).parent / "migrations"


# How long a connection waits for SQLite's write lock before it fails with
# "database is locked" (seconds).
BUSY_TIMEOUT = 10.0
# PostgreSQL ends a transaction left this long without a statement, and
# releases its row locks. A node stopped between two statements (SIGSTOP,
# a paused VM, a swap storm) keeps its connection open: without this, the
# nodes taking its pushes over would wait on its locks for as long as it
# stays stopped. In seconds; the hub's own transactions take milliseconds
# between their statements (a migration's batches too).
STUCK_AFTER = 10.0


def _sqlite_pragmas(busy_timeout: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers run beside the writer; synchronous=FULL makes every
        # commit durable, which a checkpoint promise relies on.
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def _connect_args(url: str, stuck_after: float) -> dict[str, Any]:
    if sa.engine.make_url(url).get_driver_name() != "asyncpg":
        return {}
    ms = str(int(stuck_after * 1000))
    return {"server_settings": {"idle_in_transaction_session_timeout": ms}}


class _OneWriter(AsyncEngine):
    """An engine whose write transactions (``begin()``) take turns on one
    asyncio lock, first come first served. SQLite admits one writer at a
    time, and left to itself every pooled connection that wants to write
    waits in SQLite's busy handler, which polls and keeps no queue: under a
    crowd of attaching agents, with the event loop slow to let the current
    writer commit, some wait past the busy timeout and fail with "database
    is locked". A writer waits for its turn before it takes a pooled
    connection, so waiting writers hold none of the pool's connections.
    Reads (``connect()``) still run beside the writer (WAL)."""

    __slots__ = ("_writer",)

    def __init__(self, sync_engine: sa.Engine) -> None:
        super().__init__(sync_engine)
        self._writer = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer, super().begin() as conn:
            yield conn


class Database(
    Users,
    Logins,
    Streams,
    RelayKeys,
    Agents,
    Commands,
    Collection,
    Events,
    Links,
    Approvals,
    Nodes,
    RelayPlaces,
):
    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        stuck_after: float = STUCK_AFTER,
    ) -> None:
        self.url = url
        engine = create_async_engine(url, connect_args=_connect_args(url, stuck_after))
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout))
            engine = _OneWriter(engine.sync_engine)
        Repository.__init__(self, engine, clock)

    @classmethod
    def sqlite(
        cls,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> Database:
        return cls(f"sqlite+aiosqlite:///{path}", clock, busy_timeout=busy_timeout)

    # The repositories, each seen through its own type.

    @property
    def users(self) -> Users:
        return self

    @property
    def logins(self) -> Logins:
        return self

    @property
    def streams(self) -> Streams:
        return self

    @property
    def relay_keys(self) -> RelayKeys:
        return self

    @property
    def agents(self) -> Agents:
        return self

    @property
    def commands(self) -> Commands:
        return self

    @property
    def collection(self) -> Collection:
        return self

    @property
    def events(self) -> Events:
        return self

    @property
    def links(self) -> Links:
        return self

    @property
    def approvals(self) -> Approvals:
        return self

    @property
    def nodes_repo(self) -> Nodes:
        return self

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config(str(MIGRATIONS / "alembic.ini"))
        cfg.set_main_option("script_location", str(MIGRATIONS))

        def run(sync_conn: sa.Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        sqlite = self.engine.dialect.name == "sqlite"
        async with self.engine.begin() as conn:
            if sqlite:
                # A migration that rebuilds a table drops the old one, which
                # with foreign keys on deletes every row referring to it.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.run_sync(run)
        if sqlite:  # new connections turn foreign keys on again
            await self.engine.dispose()

    async def close(self) -> None:
        await self.engine.dispose()
