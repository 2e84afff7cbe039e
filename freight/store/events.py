"""The event log (what happened, by whom) and the hub's settings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .eventcols import event_address, event_agent
from .eventquery import (
    FTS_LOOKUP,
    FTS_SCAN,
    EventFilter,
    event_query,
    fts_match,
    may_walk,
    picked_count,
    row_key,
)
from .rows import EventRow

# Rows fetched per query when streaming an export.
EXPORT_BATCH = 2000
# Free text with at least this many matches is found by walking the sort's
# index (measured on 1,000,000 events: a word in 46,000 of them 27 ms
# instead of 300 ms; a word in one of them 3 ms instead of 130 ms the
# other way round).
DENSE_MATCHES = 2000
# Rows a sort's other column picks from which a page walks the sort's index
# (at 20,000 of 1,000,000 a page of 100 reads ~5,000 rows of it; fewer
# picked rows are quicker sorted).
WALK_AT = 20_000


def _event(r: Any) -> EventRow:
    try:
        detail = json.loads(r.detail)
    except ValueError:
        detail = {"text": r.detail}
    return EventRow(
        id=r.id,
        ts=r.ts,
        kind=r.kind,
        actor=r.actor,
        detail=detail if isinstance(detail, dict) else {"value": detail},
        agent=r.agent,
        address=r.address,
    )


class Events(Repository):
    _fts: bool | None = None  # whether events_fts exists (looked up once)
    _dense = DENSE_MATCHES
    _walk_at = WALK_AT

    async def add_event(self, kind: str, actor: str, detail: Mapping[str, Any]) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.events.insert().values(
                    ts=self.clock(),
                    kind=kind,
                    actor=actor,
                    detail=json.dumps(dict(detail)),
                    agent=event_agent(kind, actor, detail),
                    address=event_address(detail),
                )
            )

    async def has_fts(self) -> bool:
        """Whether the full-text index of the event log exists (SQLite with
        FTS5; else searches scan)."""
        if self._fts is None:
            if self.engine.dialect.name != "sqlite":
                self._fts = False
            else:
                query = sa.text("SELECT 1 FROM sqlite_master WHERE name = 'events_fts'")
                self._fts = await self._scalar(query) is not None
        return self._fts

    async def list_events(self, kind: str | None = None, limit: int = 100) -> list[EventRow]:
        """The newest events first (of one ``kind`` if given)."""
        rows, _ = await self.find_events(EventFilter(kinds=(kind,) if kind else ()), limit=limit)
        return rows

    async def find_events(
        self, f: EventFilter, *, after: tuple[Any, ...] | None = None, limit: int = 100
    ) -> tuple[list[EventRow], tuple[Any, ...] | None]:
        """One page of the events ``f`` selects, and the key the next page
        continues after (None: this was the last)."""
        async with self.engine.connect() as c:
            fts = ""
            if f.words and await self.has_fts():
                count = sa.text(
                    "SELECT count(*) FROM (SELECT rowid FROM events_fts "
                    "WHERE events_fts MATCH :match LIMIT :most)"
                ).bindparams(match=fts_match(f.words), most=self._dense)
                dense = (await c.execute(count)).scalar_one() >= self._dense
                fts = FTS_SCAN if dense else FTS_LOOKUP
            walk = False
            if may_walk(f):  # many rows picked: walk the sort's index instead
                picked = (await c.execute(picked_count(f, self._walk_at))).scalar_one()
                walk = picked >= self._walk_at
            query = event_query(f, after=after, limit=limit + 1, fts=fts, walk=walk)
            rows = (await c.execute(query)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_event(r) for r in rows], (row_key(f, rows[-1]) if more else None)

    async def stream_events(
        self,
        f: EventFilter,
        *,
        limit: int,
        after: tuple[Any, ...] | None = None,
        batch: int = EXPORT_BATCH,
    ) -> AsyncIterator[list[EventRow]]:
        """Every event ``f`` selects past ``after`` (at most ``limit``), a
        batch at a time: each batch one keyset query, so nothing holds more
        than a batch."""
        left = limit
        while left > 0:
            rows, after = await self.find_events(f, after=after, limit=min(batch, left))
            if rows:
                yield rows
            left -= len(rows)
            if after is None:
                return

    async def get_setting(self, key: str) -> str | None:
        value = await self._scalar(sa.select(t.settings.c.value).where(t.settings.c.key == key))
        return None if value is None else str(value)

    async def set_setting(self, key: str, value: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.settings.delete().where(t.settings.c.key == key))
            await c.execute(t.settings.insert().values(key=key, value=value))
