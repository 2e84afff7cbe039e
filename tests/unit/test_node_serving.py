"""A node on an embedded (SQLite) database goes on serving when its
heartbeat is slow: the database is busy (a crowd of agents logging in after
a restart, pushes committing checkpoints), not out of reach, and no other
node could see another view of it. Before, two slow heartbeats in a row made
the hub answer 503 to every request and close every client's channel,
whose return made the database busier still. Real SQLite database; the
relay and the command queue are stand-ins."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from freight.hub.nodes import MISSED, NodeService, NodeSettings
from freight.store.db import Database

BEAT = 0.05


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
