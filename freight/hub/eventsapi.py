"""``GET /v1/admin/events``: the event log, filtered, sorted, a page at a
time (keyset cursor), or exported whole as CSV or JSON.

Every parameter is checked before any query runs, and a wrong one is a 400
whose message gives the accepted form. Pages and exports go through
:meth:`freight.store.events.Events.find_events`: an index range each, never
a scan of the table, never the whole table in memory (an export is
streamed in batches, at most ``MAX_EXPORT`` rows)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from math import isfinite
from typing import Any

from aiohttp import web

from ..errors import UsageError
from ..eventcsv import csv_header, csv_lines
from ..names import has_control
from ..store.eventquery import (
    MAX_WORD,
    MAX_WORDS,
    SORTS,
    EventFilter,
    decode_cursor,
    encode_cursor,
    words_of,
)
from .requests import admin_user
from .services import STATE

__all__ = ["MAX_EXPORT", "MAX_PAGE", "add_routes", "parse_filter", "parse_time"]

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_EXPORT = 1_000_000
MAX_KINDS = 32
MAX_VALUE = 128  # characters of actor, agent, address
MAX_QUERY = 256  # characters of free text
PARAMS = (
    "kind",
    "actor",
    "agent",
    "address",
    "since",
    "until",
    "q",
    "sort",
    "limit",
    "cursor",
    "format",
)
_KIND = re.compile(r"[a-z0-9_]{1,32}")
_EPOCH = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def parse_time(name: str, text: str) -> float:
    """Epoch seconds, or an ISO 8601 date or time (UTC unless it says)."""
    bad = UsageError(
        f"{name} must be epoch seconds (1767225600) or ISO 8601 "
        f"(2026-01-01, 2026-01-01T12:00:00Z, 2026-01-01T12:00:00+01:00)"
    )
    if len(text) > 64:
        raise bad
    if _EPOCH.fullmatch(text):
        value = float(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise bad from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    if not isfinite(value) or abs(value) >= 1e12:
        raise bad
    return value


def _one(query: Any, name: str) -> str | None:
    """The one value of a parameter (None if absent), bounded."""
    values = query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise UsageError(f"give {name} once")
    value = values[0]
    if len(value) > MAX_VALUE or has_control(value):
        raise UsageError(f"{name} must be at most {MAX_VALUE} printable characters")
    return value


def parse_filter(query: Any) -> EventFilter:
    """The filter and sort of a request's query string (a MultiDict)."""
    unknown = sorted(set(query.keys()) - set(PARAMS))
    if unknown:
        shown = unknown[0][:40]
        raise UsageError(f"unknown parameter {shown!r}; the parameters are {', '.join(PARAMS)}")
    kinds: list[str] = []
    for value in query.getall("kind", []):
        kinds.extend(k for k in value.split(",") if k)
    if len(kinds) > MAX_KINDS or not all(_KIND.fullmatch(k) for k in kinds):
        raise UsageError(
            f"kind must be event kinds (letters, digits, _), several as kind=a,b "
            f"(at most {MAX_KINDS})"
        )
    values = {n: _one(query, n) for n in ("actor", "agent", "address")}
    since = _one(query, "since")
    until = _one(query, "until")
    text = query.getall("q", [])
    if len(text) > 1 or (text and len(text[0]) > MAX_QUERY):
        raise UsageError(f"q must be given once, at most {MAX_QUERY} characters")
    words = words_of(text[0]) if text else ()
    if text and text[0].strip() and not words:
        raise UsageError("q must hold a word of letters or digits")
    if len(words) > MAX_WORDS or any(len(w) > MAX_WORD for w in words):
        raise UsageError(f"q may hold at most {MAX_WORDS} words of at most {MAX_WORD} characters")
    sort = _one(query, "sort") or "-ts"
    if sort.lstrip("-") not in SORTS or sort.count("-") > 1:
        raise UsageError(f"sort must be one of {', '.join(SORTS)}, with a - in front to reverse")
    return EventFilter(
        kinds=tuple(dict.fromkeys(kinds)),
        actor=values["actor"],
        agent=values["agent"],
        address=values["address"],
        since=parse_time("since", since) if since is not None else None,
        until=parse_time("until", until) if until is not None else None,
        words=words,
        sort=sort,
    )


def _limit(query: Any, most: int, default: int) -> int:
    text = _one(query, "limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 1 <= int(text) <= most:
        raise UsageError(f"limit must be a whole number from 1 to {most}")
    return int(text)


async def list_events(request: web.Request) -> web.StreamResponse:
    await admin_user(request)
    query = request.query
    f = parse_filter(query)
    fmt = _one(query, "format")
    if fmt not in (None, "csv", "json"):
        raise UsageError("format must be csv or json (an export of every matching event)")
    cursors = query.getall("cursor", [])
    if len(cursors) > 1:
        raise UsageError("give cursor once")
    after = decode_cursor(f, cursors[0]) if cursors and cursors[0] else None
    db = request.app[STATE].db
    if fmt is not None:
        return await _export(request, f, after, fmt, _limit(query, MAX_EXPORT, MAX_EXPORT))
    rows, last = await db.find_events(f, after=after, limit=_limit(query, MAX_PAGE, DEFAULT_PAGE))
    return web.json_response(
        {
            "events": [e.as_json() for e in rows],
            "next": encode_cursor(f, last) if last is not None else None,
        }
    )


async def _export(
    request: web.Request, f: EventFilter, after: Any, fmt: str, limit: int
) -> web.StreamResponse:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json",
            "Content-Disposition": f'attachment; filename="events-{stamp}.{fmt}"',
        }
    )
    await response.prepare(request)
    db = request.app[STATE].db
    first = True
    await response.write(csv_header().encode() if fmt == "csv" else b"[")
    async for batch in db.stream_events(f, limit=limit, after=after):
        if fmt == "csv":
            chunk = csv_lines(e.as_json() for e in batch)
        else:
            lines = [json.dumps(e.as_json(), separators=(",", ":")) for e in batch]
            chunk = ("\n" if first else ",\n") + ",\n".join(lines)
        first = False
        await response.write(chunk.encode())
    if fmt == "json":
        await response.write(b"\n]\n")
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/events", list_events)
