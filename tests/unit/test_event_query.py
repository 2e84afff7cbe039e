"""The event log's query builder over a real SQLite database, against a
Python model of the same rows: every filter, sort and page size, walked to
the end by cursor, returns exactly the model's rows in the model's order
(with the full-text index, and with the scan PostgreSQL uses)."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.errors import UsageError
from freight.store import Database
from freight.store import schema as t
from freight.store.eventquery import (
    EventFilter,
    decode_cursor,
    encode_cursor,
    event_query,
    may_walk,
)
from tests.support import Clock

KINDS = ("login", "login_failure", "agent_login", "stream_end", "command_queued", "security")
ACTORS = ("admin", "ann", "bob", "lab1", "lab2")
WORDS = ("alpha", "beta", "gamma", "report", "10.0.0.7", "x_y")
N = 300


def _model_rows(seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(N):
        kind = rnd.choice(KINDS)
        actor = rnd.choice(ACTORS)
        detail: dict[str, Any] = {"note": " ".join(rnd.sample(WORDS, 2))}
        if rnd.random() < 0.5:
            detail["address"] = f"10.0.{rnd.randrange(3)}.{rnd.randrange(3)}"
        if kind == "command_queued":
            detail["agent"] = rnd.choice(("lab1", "lab2"))
        # Few distinct times: ties are broken by id, in the sort's direction.
        rows.append({"ts": 1000.0 + rnd.randrange(60) + i // 100, "kind": kind,
                     "actor": actor, "detail": detail})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    path = tmp_path_factory.mktemp("events") / "freight.db"
    rows = _model_rows()

    async def go() -> list[dict[str, Any]]:
        clock = Clock(0.0)
        db = Database.sqlite(path, clock)
        await db.migrate()
        try:
            for r in rows:
                clock.now = r["ts"]
                await db.add_event(r["kind"], r["actor"], r["detail"])
            stored, _ = await db.find_events(EventFilter(sort="ts"), limit=N)
        finally:
            await db.close()
        return [e.as_json() for e in stored]

    yield path, asyncio.run(go())


def _words(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.lower())


def _matches(e: dict[str, Any], f: EventFilter) -> bool:
    import json

    if f.kinds and e["kind"] not in f.kinds:
        return False
    for name in ("actor", "agent", "address"):
        if getattr(f, name) is not None and e[name] != getattr(f, name):
            return False
    if f.since is not None and e["ts"] < f.since:
        return False
    if f.until is not None and e["ts"] >= f.until:
        return False
    text = _words(e["kind"]) + _words(e["actor"]) + _words(json.dumps(e["detail"]))
    return all(any(t.startswith(w) for t in text) for w in f.words)


def model(rows: list[dict[str, Any]], f: EventFilter) -> list[int]:
    hits = [e for e in rows if _matches(e, f)]
    hits.sort(key=lambda e: tuple(e[c] for c in f.columns), reverse=f.descending)
    return [e["id"] for e in hits]


async def walk(db: Database, f: EventFilter, page: int) -> list[int]:
    ids: list[int] = []
    after = None
    for _ in range(N + 2):
        rows, last = await db.find_events(f, after=after, limit=page)
        assert len(rows) <= page
        ids += [e.id for e in rows]
        if last is None:
            return ids
        # Through the opaque cursor, as a client hands it back.
        after = decode_cursor(f, encode_cursor(f, last))
    raise AssertionError("the walk did not end")


filters = st.builds(
    EventFilter,
    kinds=st.lists(st.sampled_from(KINDS), max_size=3, unique=True).map(tuple),
    actor=st.none() | st.sampled_from(ACTORS),
    agent=st.none() | st.sampled_from(("lab1", "lab2", "nobody")),
    address=st.none() | st.sampled_from(("10.0.0.0", "10.0.1.2")),
    since=st.none() | st.floats(990, 1065),
    until=st.none() | st.floats(990, 1065),
    words=st.lists(
        st.sampled_from(("al", "beta", "10", "7", "x", "login", "lab", "y")), max_size=2
    ).map(tuple),
    sort=st.sampled_from(("ts", "-ts", "kind", "-kind", "actor", "-actor")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    f=filters,
    page=st.integers(1, 40),
    fts=st.sampled_from(("lookup", "scan", "regex")),
    sort_walk=st.booleans(),
)
def test_every_filter_sort_and_page_size_walks_the_models_rows(
    seeded: tuple[Path, list[dict[str, Any]]], f: EventFilter, page: int, fts: str, sort_walk: bool
) -> None:
    path, rows = seeded

    async def go() -> list[int]:
        db = Database.sqlite(path)
        try:
            assert await db.has_fts()
            db._fts = fts != "regex"  # regex: the scan PostgreSQL does
            db._dense = 0 if fts == "scan" else N + 1  # every search dense, or none
            db._walk_at = 0 if sort_walk else N + 1  # walk the sort's index always, or never
            return await walk(db, f, page)
        finally:
            await db.close()

    assert asyncio.run(go()) == model(rows, f)


def test_the_columns_are_taken_from_the_detail(seeded: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = seeded
    assert len(rows) == N
    for e in rows:
        assert e["address"] == e["detail"].get("address", "")
        want = e["detail"].get("agent") or (e["actor"] if e["kind"] == "agent_login" else "")
        assert e["agent"] == want, e


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "W10", "WyJ0cyIsMSwyXQ", "WyItdHMiLCJ4IiwyXQ", "WyItdHMiLDEsLTFd", "A" * 2000],
)
def test_a_bad_cursor_is_a_usage_error(cursor: str) -> None:
    with pytest.raises(UsageError, match="cursor must be"):
        decode_cursor(EventFilter(), cursor)


PG_CASES = [
    EventFilter(),
    EventFilter(kinds=("login", "security"), sort="kind"),
    EventFilter(actor="ann", sort="-actor"),
    EventFilter(agent="lab1", since=1010.0, until=1050.0),
    EventFilter(address="10.0.1.2", sort="ts"),
    EventFilter(words=("al", "10")),
    EventFilter(words=("x", "y"), sort="-kind"),
    EventFilter(words=("login",), kinds=("agent_login", "login")),
]


def test_postgresql_gives_the_same_pages(tmp_path: Path) -> None:
    """The same rows and filters on PostgreSQL, where free text is a
    regular expression instead of the FTS5 index."""
    import os
    import secrets

    import asyncpg

    host = os.environ.get("FREIGHT_TEST_PG_HOST", "127.0.0.1")
    user = os.environ.get("FREIGHT_TEST_PG_USER", "postgres")
    name = "freight_test_" + secrets.token_hex(4)
    rows = _model_rows()

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(host=host, user=user, database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def go() -> list[tuple[list[int], list[int]]]:
        try:
            await admin(f'CREATE DATABASE "{name}"')
        except Exception as exc:  # no server, no driver, or no rights
            pytest.skip(f"no PostgreSQL at {host}: {exc!r}")
        clock = Clock(0.0)
        db = Database(f"postgresql+asyncpg://{user}@{host}/{name}", clock)
        try:
            await db.migrate()
            assert not await db.has_fts()
            for r in rows:
                clock.now = r["ts"]
                await db.add_event(r["kind"], r["actor"], r["detail"])
            stored, _ = await db.find_events(EventFilter(sort="ts"), limit=N)
            stored_rows = [e.as_json() for e in stored]
            return [(await walk(db, f, 23), model(stored_rows, f)) for f in PG_CASES]
        finally:
            await db.close()
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    for got, want in asyncio.run(go()):
        assert want and got == want


def test_many_rows_of_a_kind_sorted_by_actor_walk_the_actor_index() -> None:
    """Picking by one column and sorting by another: SQLite would sort every
    row picked; past WALK_AT picked rows the query walks the sort's index
    (its plan says so), below it the picking column's index serves."""
    f = EventFilter(kinds=("login",), sort="-actor")
    assert may_walk(f) and not may_walk(EventFilter(kinds=("login",), sort="-ts"))
    assert not may_walk(EventFilter(kinds=("login",), sort="kind"))
    assert not may_walk(EventFilter(kinds=("login",), sort="actor", words=("x",)))
    engine = sa.create_engine("sqlite://")
    t.metadata.create_all(engine)

    def plan(walk: bool) -> str:
        query = event_query(f, after=None, limit=101, fts="", walk=walk)
        sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as c:
            return " ".join(str(r[-1]) for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))

    assert "ix_events_actor_ts" in plan(True) and "TEMP B-TREE" not in plan(True)
    assert "ix_events_kind_ts" in plan(False)
