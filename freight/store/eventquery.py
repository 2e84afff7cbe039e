"""The event log's one query: filters, a sort, and keyset pages.

A page never counts or skips rows: it continues after the sort key of the
last row it handed out (``after``), so the thousandth page costs what the
first does, and each filter in time order is one range of an index
(migration 0010). Free text is a list of words, each of which must begin a
word of the event's kind, actor or detail (letters and digits; ``10.0.0.7``
is the words 10 0 0 7 in a row): the FTS5 index answers it on SQLite, a
regular expression over the three columns on PostgreSQL.

The cursor a page hands out is opaque to clients: the sort and the last
row's key, base64 JSON, checked in full when it comes back."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from math import isfinite
from typing import Any

import sqlalchemy as sa

from ..errors import UsageError
from . import schema as t

__all__ = [
    "FTS_LOOKUP",
    "FTS_SCAN",
    "MAX_WORDS",
    "SORTS",
    "EventFilter",
    "decode_cursor",
    "encode_cursor",
    "event_query",
    "fts_match",
    "row_key",
    "words_of",
]

# The columns each sort orders by, most significant first (id last: unique).
SORTS: dict[str, tuple[str, ...]] = {
    "ts": ("ts", "id"),
    "kind": ("kind", "ts", "id"),
    "actor": ("actor", "ts", "id"),
}
MAX_WORDS = 8
FTS_LOOKUP = "lookup"
FTS_SCAN = "scan"
MAX_WORD = 64
MAX_CURSOR = 1024  # characters
MAX_ID = 2**62
MAX_TS = 1e12  # seconds (the year 33658)
_WORD = re.compile(r"[0-9a-z]+")


def words_of(text: str) -> tuple[str, ...]:
    """The words of a search (lower case letters and digits, ASCII)."""
    return tuple(_WORD.findall(text.lower()))


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events, in which order. Empty means "any"."""

    kinds: tuple[str, ...] = ()
    actor: str | None = None
    agent: str | None = None
    address: str | None = None
    since: float | None = None  # ts >= since
    until: float | None = None  # ts < until
    words: tuple[str, ...] = ()  # each begins a word of kind, actor or detail
    sort: str = "-ts"

    def __post_init__(self) -> None:
        if self.sort.lstrip("-") not in SORTS:
            raise UsageError(f"sort must be one of {', '.join(SORTS)}, with - for descending")

    @property
    def columns(self) -> tuple[str, ...]:
        return SORTS[self.sort.lstrip("-")]

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")


def row_key(f: EventFilter, row: Any) -> tuple[Any, ...]:
    """The sort key of a result row (what the next page continues after)."""
    return tuple(getattr(row, c) for c in f.columns)


def _after(f: EventFilter, key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    """Rows strictly past ``key`` in the filter's order: (a, b, c) beyond
    (x, y, z), spelled so that the first column is an index range."""
    cols = [t.events.c[name] for name in f.columns]

    def beyond(col: Any, value: Any) -> sa.ColumnElement[bool]:
        return col < value if f.descending else col > value  # type: ignore[no-any-return]

    cond = beyond(cols[-1], key[-1])
    for col, value in zip(reversed(cols[:-1]), reversed(key[:-1]), strict=True):
        cond = sa.or_(beyond(col, value), sa.and_(col == value, cond))
    first = cols[0] <= key[0] if f.descending else cols[0] >= key[0]
    return sa.and_(first, cond)


def fts_match(words: tuple[str, ...]) -> str:
    """The FTS5 query of ``words``: each a quoted prefix, so no FTS5 syntax
    can come through."""
    return " AND ".join(f'"{w}"*' for w in words)


def _text_match(words: tuple[str, ...], fts: str) -> sa.ColumnElement[bool]:
    e = t.events.c
    if fts:
        hits = sa.text("SELECT rowid FROM events_fts WHERE events_fts MATCH :match").bindparams(
            match=fts_match(words)
        )
        rowids = hits.columns(sa.column("rowid", sa.Integer))
        if fts == FTS_SCAN:
            # ``id + 0`` is no index: SQLite walks the sort's index and keeps
            # the rows in the (hashed) set of matches, stopping at the page's
            # end; for a common word that beats sorting all its matches.
            return (e.id + 0).in_(rowids)
        return e.id.in_(rowids)
    text = sa.func.lower(e.kind + " " + e.actor + " " + e.detail)
    # Words are [0-9a-z]+ (words_of): nothing in them is a regex operator.
    return sa.and_(*(text.regexp_match(f"(^|[^0-9a-z]){w}") for w in words))


def may_walk(f: EventFilter) -> bool:
    """Whether ``f`` sorts by one column (kind, actor) and picks rows by
    another: then SQLite takes the picking column's index and sorts every
    row it picks (80,000 logins sorted by actor: 40-230 ms), unless told
    to walk the sort's index instead (see :func:`event_query`)."""
    first = f.columns[0]
    picked = [n for n in ("kind", "actor", "agent", "address") if _picks(f, n)]
    return first != "ts" and not f.words and any(n != first for n in picked)


def _picks(f: EventFilter, name: str) -> bool:
    return bool(f.kinds) if name == "kind" else getattr(f, name) is not None


def picked_count(f: EventFilter, most: int) -> sa.Select[Any]:
    """How many events ``f``'s columns pick (times and text aside), counted
    to ``most`` at the most: one range of an index."""
    inner = sa.select(sa.literal(1)).where(*_picking(f, walk=False)).limit(most)
    return sa.select(sa.func.count()).select_from(inner.subquery())


def _picking(f: EventFilter, *, walk: bool) -> list[sa.ColumnElement[bool]]:
    """The conditions on kind, actor, agent and address. With ``walk``
    those on another column than the sort's are written ``col || ''``, so
    no index serves them and SQLite walks the sort's index, keeping the
    rows they pick (a page of a common kind sorted by actor: ~1 ms)."""
    e = t.events.c
    sort = f.columns[0]

    def col(name: str) -> Any:
        return e[name] + "" if walk and name != sort else e[name]

    conds: list[sa.ColumnElement[bool]] = []
    if len(f.kinds) == 1:
        conds.append(col("kind") == f.kinds[0])
    elif f.kinds:
        conds.append(col("kind").in_(f.kinds))
    for name in ("actor", "agent", "address"):
        value = getattr(f, name)
        if value is not None:
            conds.append(col(name) == value)
    return conds


def event_query(
    f: EventFilter, *, after: tuple[Any, ...] | None, limit: int, fts: str, walk: bool = False
) -> sa.Select[Any]:
    """The SELECT of one page of events matching ``f``. ``fts``: how free
    text is matched: ``FTS_LOOKUP`` (the index's matches, then sorted: few
    matches), ``FTS_SCAN`` (the sort's index, keeping matches: many) or ""
    (no FTS5: a regular expression, as on PostgreSQL). ``walk``: walk the
    sort's index (see :func:`may_walk`), for columns that pick many rows."""
    e = t.events.c
    conds = _picking(f, walk=walk)
    if f.since is not None:
        conds.append(e.ts >= f.since)
    if f.until is not None:
        conds.append(e.ts < f.until)
    if f.words:
        conds.append(_text_match(f.words, fts))
    if after is not None:
        conds.append(_after(f, after))
    order = [e[c].desc() if f.descending else e[c].asc() for c in f.columns]
    return sa.select(t.events).where(*conds).order_by(*order).limit(limit)


def encode_cursor(f: EventFilter, key: tuple[Any, ...]) -> str:
    raw = json.dumps([f.sort, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(f: EventFilter, cursor: str) -> tuple[Any, ...]:
    """The key a cursor continues after; a cursor of another sort, damaged
    or made up is refused."""
    bad = UsageError("cursor must be the 'next' value of a previous page with the same sort")
    if len(cursor) > MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error):
        raise bad from None
    if not isinstance(value, list) or len(value) != len(f.columns) + 1 or value[0] != f.sort:
        raise bad
    key = value[1:]
    for name, item in zip(f.columns, key, strict=True):
        number = isinstance(item, int | float) and not isinstance(item, bool)
        ok = {
            "ts": number and isfinite(item) and abs(item) < MAX_TS,
            "id": number and isinstance(item, int) and 0 <= item < MAX_ID,
        }.get(name, isinstance(item, str) and len(item) <= MAX_CURSOR)
        if not ok:
            raise bad
    return tuple(float(v) if n == "ts" else v for n, v in zip(f.columns, key, strict=True))
