"""What every repository of the hub's database shares: the engine, the
clock (injected, ``time.time`` unless a test passes another) and turning
result rows into typed rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from .rows import row_of

R = TypeVar("R")

# Lists passed to ``IN (...)`` go in slices of this many.
IN_SLICE = 500


class Repository:
    """One aggregate's queries. Usable alone (``Commands(engine, clock)``);
    :class:`.db.Database` is all of them over one engine."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    async def _first(self, cls: type[R], query: Any) -> R | None:
        async with self.engine.connect() as c:
            row = (await c.execute(query)).first()
            return row_of(cls, row._mapping) if row else None

    async def _all(self, cls: type[R], query: Any) -> list[R]:
        async with self.engine.connect() as c:
            return [row_of(cls, r._mapping) for r in (await c.execute(query)).all()]

    async def _scalar(self, query: Any) -> Any:
        async with self.engine.connect() as c:
            return (await c.execute(query)).scalar()
