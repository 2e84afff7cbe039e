"""State changes in the hub's database never go back: a command that is
answered stays answered whatever late frame arrives, and collected content
that is stored is not made wanted again by a scheduler round that read it
before it was stored (each change is a compare-and-set on the old state)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from freight.hub.collect import Collector
from freight.hub.commands import CommandQueue
from freight.store import Database, DataLayout
from freight.store import commands as queue
from freight.store import schema as t

DIGEST = "ab" * 32


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    d = Database.sqlite(tmp_path / "freight.db")
    await d.migrate()
    yield d
    await d.close()


async def _agent(db: Database) -> int:
    return await db.add_user("lab", "!", "agent")


async def _state(db: Database, command_id: int) -> str:
    row = await db.get_command(command_id)
    assert row is not None
    return str(row.state)


async def test_a_late_ack_or_delivery_does_not_reopen_a_done_command(db: Database) -> None:
    agent = await _agent(db)
    cid = await db.add_command(agent, "ping", "{}", "admin")
    assert await queue.mark_delivered(db, cid, agent, 5) == 1
    assert await queue.acknowledge(db, cid, agent)
    assert await queue.finish(db, cid, agent, "done", '{"ok": true}')
    # The agent's ack and a redelivery after a reconnect arrive late.
    assert not await queue.acknowledge(db, cid, agent)
    assert await queue.mark_delivered(db, cid, agent, 5) is None
    assert not await queue.finish(db, cid, agent, "failed", "{}")
    assert not await queue.finish(db, cid, None, "cancelled", "{}")
    assert await _state(db, cid) == "done"
    assert await queue.open_command(db, cid, agent) is None


async def test_only_the_commands_agent_moves_it(db: Database) -> None:
    agent = await _agent(db)
    other = await db.add_user("lab2", "!", "agent")
    cid = await db.add_command(agent, "ping", "{}", "admin")
    assert not await queue.acknowledge(db, cid, other)
    assert await queue.mark_delivered(db, cid, other, 5) is None
    assert not await queue.finish(db, cid, other, "done", "{}")
    assert await _state(db, cid) == "queued"


class _Events:
    log = logging.getLogger("test")

    async def emit(self, kind: str, actor: str, **detail: Any) -> None:
        pass


class _Relay:
    conns: dict[str, Any] = {}

    def attachment_of(self, agent_id: int) -> None:
        return None


async def _put_content(db: Database, state: str, *, updated: float, issued: float) -> int:
    agent = await _agent(db)
    cid = await db.add_command(agent, "upload", "{}", "collector")
    async with db.engine.begin() as c:
        await c.execute(
            t.content.insert().values(
                digest=DIGEST,
                size=10,
                state=state,
                source=agent,
                command_id=cid,
                issued=issued,
                attempts=1,
                received=0,
                created=0.0,
                updated=updated,
            )
        )
    return agent


async def _content_state(db: Database) -> str:
    async with db.engine.connect() as c:
        q = sa.select(t.content.c.state).where(t.content.c.digest == DIGEST)
        return str((await c.execute(q)).scalar_one())


@pytest.mark.parametrize(
    ("start", "meanwhile"),
    [
        # A finish the scheduler took for crashed stores the content meanwhile.
        ("finishing", "stored"),
        # An upload the scheduler took for unanswered is answered meanwhile.
        ("issued", "finishing"),
    ],
)
async def test_a_scheduler_round_does_not_undo_what_happened_meanwhile(
    db: Database, tmp_path: Path, start: str, meanwhile: str
) -> None:
    await _put_content(db, start, updated=0.0, issued=0.0)
    read = db.content_in_state
    changed = []

    async def read_then_change(state: str, limit: int = 1000) -> Any:
        rows = await read(state, limit)
        if state == start and not changed:  # another task runs between read and write
            changed.append(meanwhile)
            async with db.engine.begin() as c:
                await c.execute(t.content.update().values(state=meanwhile))
        return rows

    db.content_in_state = read_then_change  # type: ignore[method-assign]
    st = SimpleNamespace(db=db, layout=DataLayout(tmp_path), events=_Events(), relay=_Relay())
    queue = CommandQueue(st, _Relay())  # type: ignore[arg-type]
    collector = Collector(st, _Relay(), queue, reserve=0)  # type: ignore[arg-type]
    await collector.tick(10_000.0)
    assert await _content_state(db) == meanwhile
