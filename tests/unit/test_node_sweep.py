"""A node's heartbeat asks the database for commands queued on another node
(for the agents attached to it) only once another node has been alive: a
node alone since it started asks every SOLO_SWEEP-th beat, as a safety net.
Real node rows in a real SQLite database; the relay and the command queue
are stand-ins that hold attached agents and count the sweeps."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from freight.hub.nodes import SOLO_SWEEP, NodeService, NodeSettings
from freight.store.db import Database


class _Relay:
    def __init__(self) -> None:
        agent = SimpleNamespace(user=SimpleNamespace(id=7), commands=True, closed=False)
        self.attachments = [agent]
        self.places = None

    async def recheck_places(self) -> None:
        return None


class _Commands:
    def __init__(self) -> None:
        self.sweeps: list[list[int]] = []

    async def sweep(self, agent_ids: list[int], *, created_before: float | None = None) -> int:
        self.sweeps.append(agent_ids)
        return 0


class _Events:
    log = SimpleNamespace(warning=lambda *a, **k: None)

    async def emit(self, *a: Any, **k: Any) -> None:
        return None


def _node(db: Database, name: str, commands: _Commands) -> NodeService:
    streams = SimpleNamespace(receiving={})
    return NodeService(db, _Events(), _Relay(), streams, commands, NodeSettings(name, ""))  # type: ignore[arg-type]


async def test_a_node_alone_sweeps_for_commands_every_solo_sweep_beats(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "hub.db")
    await db.migrate()
    try:
        a_commands, b_commands = _Commands(), _Commands()
        a = _node(db, "a", a_commands)
        await a.register("https://a", 1)
        for _ in range(SOLO_SWEEP - 1):
            await a.beat_once()
        assert a_commands.sweeps == []  # alone: not at every beat
        await a.beat_once()
        assert a_commands.sweeps == [[7]]  # but every SOLO_SWEEP-th

        b = _node(db, "b", b_commands)
        await b.register("https://b", 2)
        await b.beat_once()
        assert b_commands.sweeps == [[7]]  # b started beside a live node
        await a.beat_once()
        await a.beat_once()
        assert a_commands.sweeps == [[7], [7], [7]]  # in company: every beat
    finally:
        await db.close()
