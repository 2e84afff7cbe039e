"""Agents' durable commands. Every state change applies the lifecycle of
:mod:`freight.protocol.commands` as one conditional update (``UPDATE ...
WHERE state IN (the states the input may move from)``), so a repeated,
late or replayed frame finds the command in another state and changes
nothing: an ack never reopens an answered command.

The module functions (``mark_delivered(db, ...)`` ...) are the same calls
on a :class:`Commands` repository, kept for the hub's callers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..protocol.commands import (
    OPEN_COMMAND_STATES,
    OUTCOMES,
    TERMINAL_COMMAND_STATES,
    CommandInput,
    CommandState,
    command_sources,
    command_target,
)
from . import schema as t
from .base import IN_SLICE, Repository
from .rows import CommandRow

__all__ = [
    "OPEN_COMMAND_STATES",
    "TERMINAL_COMMAND_STATES",
    "Commands",
    "acknowledge",
    "finish",
    "mark_delivered",
    "open_command",
]

_OPEN = sorted(s.value for s in OPEN_COMMAND_STATES)


def _sources(event: CommandInput) -> list[str]:
    return [s.value for s in command_sources(event)]


class Commands(Repository):
    async def add_command(self, agent_id: int, kind: str, args: str, requested_by: str) -> int:
        now = self.clock()
        async with self.engine.begin() as c:
            res = await c.execute(
                t.commands.insert().values(
                    agent_id=agent_id,
                    kind=kind,
                    args=args,
                    state=CommandState.QUEUED.value,
                    result="null",
                    requested_by=requested_by,
                    created=now,
                    updated=now,
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def get_command(self, command_id: int) -> CommandRow | None:
        return await self._first(
            CommandRow, sa.select(t.commands).where(t.commands.c.id == command_id)
        )

    async def open_command_counts(self) -> dict[int, int]:
        """Per agent id, how many commands wait for its answer."""
        q = (
            sa.select(t.commands.c.agent_id, sa.func.count())
            .where(t.commands.c.state.in_(_OPEN))
            .group_by(t.commands.c.agent_id)
        )
        async with self.engine.connect() as c:
            return {int(a): int(n) for a, n in (await c.execute(q)).all()}

    async def open_commands(self, agent_id: int) -> list[CommandRow]:
        """Commands the agent has not answered yet, oldest first."""
        c = t.commands.c
        q = sa.select(t.commands).where(c.agent_id == agent_id, c.state.in_(_OPEN))
        return await self._all(CommandRow, q.order_by(c.id))

    async def undelivered_commands(
        self, agent_ids: Sequence[int], *, created_before: float | None = None
    ) -> list[CommandRow]:
        """Open commands of these agents never handed over yet, oldest first
        (a cluster node's sweep: queued on another node); ``created_before``:
        only those queued before then."""
        c = t.commands.c
        out: list[CommandRow] = []
        ids = list(agent_ids)
        for i in range(0, len(ids), IN_SLICE):
            q = sa.select(t.commands).where(
                c.agent_id.in_(ids[i : i + IN_SLICE]), c.state.in_(_OPEN), c.deliveries == 0
            )
            if created_before is not None:
                q = q.where(c.created < created_before)
            out += await self._all(CommandRow, q.order_by(c.id))
        return out

    async def open_command(self, command_id: int, agent_id: int) -> CommandRow | None:
        """Command ``command_id`` if it belongs to ``agent_id`` and is open."""
        c = t.commands.c
        q = sa.select(t.commands).where(
            c.id == command_id, c.agent_id == agent_id, c.state.in_(_OPEN)
        )
        return await self._first(CommandRow, q)

    async def transition(
        self, command_id: int, agent_id: int | None, event: CommandInput, **values: Any
    ) -> bool:
        """Apply ``event`` to the command if its state allows it (and it is
        ``agent_id``'s, if given); False, and nothing changed, if not."""
        c = t.commands.c
        where = [c.id == command_id, c.state.in_(_sources(event))]
        if agent_id is not None:
            where.append(c.agent_id == agent_id)
        target = command_target(event).value
        async with self.engine.begin() as conn:
            res = await conn.execute(
                t.commands.update()
                .where(*where)
                .values(**values, state=target, updated=self.clock())
            )
            return bool(res.rowcount == 1)

    async def mark_delivered(self, command_id: int, agent_id: int, limit: int) -> int | None:
        """Count one more hand-over of an open command that was handed over
        fewer than ``limit`` times. Returns its count after this one, 0 if it
        has had ``limit`` already (nothing changed), None if it is not open."""
        c = t.commands.c
        async with self.engine.begin() as conn:
            res = await conn.execute(
                t.commands.update()
                .where(
                    c.id == command_id,
                    c.agent_id == agent_id,
                    c.state.in_(_sources(CommandInput.DELIVER)),
                    c.deliveries < limit,
                )
                .values(
                    state=command_target(CommandInput.DELIVER).value,
                    deliveries=c.deliveries + 1,
                    updated=self.clock(),
                )
            )
            q = sa.select(c.deliveries, c.state).where(c.id == command_id, c.agent_id == agent_id)
            row = (await conn.execute(q)).first()
        if row is None or row.state not in OPEN_COMMAND_STATES:
            return None
        return int(row.deliveries) if res.rowcount == 1 else 0

    async def acknowledge(self, command_id: int, agent_id: int) -> bool:
        """The agent has the command (an ack never reopens an answered one)."""
        return await self.transition(command_id, agent_id, CommandInput.ACK)

    async def finish(self, command_id: int, agent_id: int | None, state: str, result: str) -> bool:
        """Record the outcome (``done``, ``failed`` or ``cancelled``) of an
        open command; False if it was not open."""
        return await self.transition(command_id, agent_id, OUTCOMES[state], result=result)


async def mark_delivered(db: Commands, command_id: int, agent_id: int, limit: int) -> int | None:
    return await db.mark_delivered(command_id, agent_id, limit)


async def acknowledge(db: Commands, command_id: int, agent_id: int) -> bool:
    return await db.acknowledge(command_id, agent_id)


async def finish(
    db: Commands, command_id: int, agent_id: int | None, state: str, result: str
) -> bool:
    return await db.finish(command_id, agent_id, state, result)


async def open_command(db: Commands, command_id: int, agent_id: int) -> CommandRow | None:
    return await db.open_command(command_id, agent_id)
