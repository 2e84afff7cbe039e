"""The event log (what happened, by whom) and the hub's settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .rows import EventRow


class Events(Repository):
    async def add_event(self, kind: str, actor: str, detail: Mapping[str, Any]) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.events.insert().values(
                    ts=self.clock(), kind=kind, actor=actor, detail=json.dumps(dict(detail))
                )
            )

    async def list_events(self, kind: str | None = None, limit: int = 100) -> list[EventRow]:
        """The newest events first (of one ``kind`` if given)."""
        q = sa.select(t.events).order_by(t.events.c.id.desc()).limit(limit)
        if kind:
            q = q.where(t.events.c.kind == kind)
        async with self.engine.connect() as c:
            rows = (await c.execute(q)).all()
        return [
            EventRow(id=r.id, ts=r.ts, kind=r.kind, actor=r.actor, detail=json.loads(r.detail))
            for r in rows
        ]

    async def get_setting(self, key: str) -> str | None:
        value = await self._scalar(sa.select(t.settings.c.value).where(t.settings.c.key == key))
        return None if value is None else str(value)

    async def set_setting(self, key: str, value: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.settings.delete().where(t.settings.c.key == key))
            await c.execute(t.settings.insert().values(key=key, value=value))
