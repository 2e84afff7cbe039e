"""State changes of agent commands that must happen once: each is a
conditional update, so a repeated or replayed frame finds the command in
another state and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .db import OPEN_COMMAND_STATES, Database

TERMINAL_COMMAND_STATES = ("done", "failed", "cancelled")


async def _transition(
    db: Database, command_id: int, agent_id: int | None, states: tuple[str, ...], **values: Any
) -> bool:
    c = t.commands.c
    where = [c.id == command_id, c.state.in_(states)]
    if agent_id is not None:
        where.append(c.agent_id == agent_id)
    async with db.engine.begin() as conn:
        res = await conn.execute(
            t.commands.update().where(*where).values(**values, updated=time.time())
        )
        return bool(res.rowcount == 1)


async def mark_delivered(db: Database, command_id: int, agent_id: int, limit: int) -> int | None:
    """Count one more hand-over of an open command that was handed over
    fewer than ``limit`` times. Returns its count after this one, 0 if it
    has had ``limit`` already (nothing changed), None if it is not open."""
    c = t.commands.c
    async with db.engine.begin() as conn:
        res = await conn.execute(
            t.commands.update()
            .where(
                c.id == command_id,
                c.agent_id == agent_id,
                c.state.in_(OPEN_COMMAND_STATES),
                c.deliveries < limit,
            )
            .values(state="delivered", deliveries=c.deliveries + 1, updated=time.time())
        )
        q = sa.select(c.deliveries, c.state).where(c.id == command_id, c.agent_id == agent_id)
        row = (await conn.execute(q)).first()
    if row is None or row.state not in OPEN_COMMAND_STATES:
        return None
    return int(row.deliveries) if res.rowcount == 1 else 0


async def acknowledge(db: Database, command_id: int, agent_id: int) -> bool:
    """The agent has the command (an ack never reopens an answered one)."""
    return await _transition(db, command_id, agent_id, ("queued", "delivered"), state="acked")


async def finish(
    db: Database, command_id: int, agent_id: int | None, state: str, result: str
) -> bool:
    """Record the outcome of an open command; False if it was not open."""
    assert state in TERMINAL_COMMAND_STATES
    return await _transition(
        db, command_id, agent_id, OPEN_COMMAND_STATES, state=state, result=result
    )


async def open_command(db: Database, command_id: int, agent_id: int) -> Mapping[str, Any] | None:
    """Command ``command_id`` if it belongs to ``agent_id`` and is open."""
    c = t.commands.c
    return await db._first(
        sa.select(t.commands).where(
            c.id == command_id, c.agent_id == agent_id, c.state.in_(OPEN_COMMAND_STATES)
        )
    )
