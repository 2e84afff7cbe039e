"""A node on an embedded (SQLite) database goes on serving when its
heartbeat is slow: the database is busy (a crowd of agents logging in after
a restart, pushes committing checkpoints), not out of reach, and no other
node could see another view of it. Before, two slow heartbeats in a row made
the hub answer 503 to every request and close every client's channel,
whose return made the database busier still. Real SQLite database; the
relay and the command queue are stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from freight.hub.nodes import MISSED, NodeService, NodeSettings
from freight.store.db import Database

BEAT = 0.05

pytestmark = pytest.mark.timeout(30)


class _Events:
    def __init__(self) -> None:
        self.logged: list[str] = []
        self.log = SimpleNamespace(
            warning=lambda kind, **_: self.logged.append(kind),
            error=lambda kind, **_: self.logged.append(kind),
        )

    async def emit(self, *a: Any, **k: Any) -> None:
        return None


def _node(db: Database, events: _Events, clock: list[float]) -> NodeService:
    relay = SimpleNamespace(attachments=[], places=None, spawn=lambda coro: coro.close())
    streams = SimpleNamespace(receiving={})
    commands = SimpleNamespace()
    return NodeService(
        db,  # type: ignore[arg-type]
        events,  # type: ignore[arg-type]
        relay,  # type: ignore[arg-type]
        streams,  # type: ignore[arg-type]
        commands,  # type: ignore[arg-type]
        NodeSettings("solo", "", beat=BEAT),
        clock=lambda: clock[0],
    )


async def test_a_node_on_sqlite_serves_on_through_slow_heartbeats(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "hub.db")
    await db.migrate()
    clock = [1000.0]
    try:
        events = _Events()
        node = _node(db, events, clock)
        await node.register("https://solo", 1)
        beat = db.beat_and_count

        async def busy(*a: Any, **k: Any) -> Any:
            await asyncio.sleep(BEAT * 4)  # longer than a heartbeat may take
            return await beat(*a, **k)

        db.beat_and_count = busy  # type: ignore[method-assign]
        for _ in range(MISSED + 2):
            clock[0] += BEAT * 2
            await node.beat_once()
        assert events.logged.count("node_heartbeat_failed") == MISSED + 2
        assert "node_not_serving" not in events.logged
        assert node.refusal() is None

        db.beat_and_count = beat  # type: ignore[method-assign]
        await node.beat_once()
        assert node.refusal() is None
    finally:
        await db.close()


async def test_a_node_on_a_shared_database_stops_serving_when_its_heartbeat_hangs(
    tmp_path: Path,
) -> None:
    """A heartbeat stuck past its own timeout (a rollback waiting on a
    frozen connection does not heed the cancellation) still counts as
    missed: the rule runs on the clock, not only when the call returns."""
    db = Database.sqlite(tmp_path / "hub.db")
    await db.migrate()
    try:
        events = _Events()
        node = _node(db, events, [0.0])
        node.clock = time.time  # the rule's clock, real: run() below sleeps for real
        await node.register("https://solo", 1)
        node.shared_db = True  # as on PostgreSQL
        stuck = asyncio.get_running_loop().create_future()

        async def hangs(*a: Any, **k: Any) -> Any:
            while True:
                try:
                    return await asyncio.shield(stuck)
                except asyncio.CancelledError:
                    if stuck.done():  # the test's end
                        raise
                    # swallowed, as by a driver stuck in its rollback

        db.beat_and_count = hangs  # type: ignore[method-assign]
        runner = asyncio.get_running_loop().create_task(node.run())
        try:
            deadline = time.monotonic() + 5
            while node.refusal() is None:
                assert time.monotonic() < deadline, "the node still serves"
                await asyncio.sleep(BEAT / 2)
            assert "cannot reach the database" in str(node.refusal())
        finally:
            stuck.set_result(None)
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    finally:
        await db.close()
