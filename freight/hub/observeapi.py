"""What people watch: ``GET /v1/transfers`` (in flight, or ``?state=done``),
``GET``/``DELETE /v1/connections`` (one's own relayed connections) and
``GET /v1/admin/overview`` (the dashboard's figures: counted, never listed,
so it answers as quickly with 10,000 agents as with one).

A user sees only their own transfers and connections; an admin sees
everyone's (``?mine=1``: only their own). Someone else's connection is
"not found" exactly as an unknown one is, so ids cannot be probed."""

from __future__ import annotations

import shutil
import time
from typing import Any

from aiohttp import web

from .. import __version__
from ..errors import NotFound, UsageError
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.relaycodes import BY_PEER, HangupCode
from ..store.eventquery import EventFilter, decode_cursor, encode_cursor
from ..store.rows import EventRow
from .eventsapi import MAX_PAGE
from .requests import admin_user, current_user
from .rest import bandwidth_status
from .services import STATE, Hub
from .streams import User

__all__ = ["DONE_KINDS", "SECURITY_KINDS", "add_routes"]

# Events that end a transfer, and what each says of its digest.
DONE_KINDS = ("stream_end", "stream_failed", "pull_end", "agent_file_received")
SECURITY_KINDS = (
    "security",
    "login_failure",
    "agent_login_failure",
    "enrol_failure",
    "password_change_failure",
    "link_unknown",
    "connection_killed",
)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "0")
    if value not in ("0", "1", "true", "false"):
        raise UsageError(f"{name} must be 1 or 0")
    return value in ("1", "true")


def _finished(e: EventRow) -> dict[str, Any]:
    d = e.detail
    if e.kind == "stream_failed":
        verdict = f"failed: {d.get('reason', '?')}"
    elif e.kind == "pull_end":
        verdict = "verified" if d.get("verified") else "digest mismatch"
    else:
        verdict = "verified"
    return {
        "id": e.id,
        "kind": {"stream_end": "push", "stream_failed": "push", "pull_end": "pull"}.get(
            e.kind, "agent"
        ),
        "user": e.actor,
        "name": d.get("name", ""),
        "size": d.get("size"),
        "digest": d.get("digest", ""),
        "verdict": verdict,
        "ended": e.ts,
    }


async def list_transfers(request: web.Request) -> web.Response:
    """In flight (``state=live``, the default) or finished (``state=done``:
    newest first, a page at a time by ``cursor``, ``limit`` 1..1000)."""
    user = await current_user(request)
    allowed = ("state", "mine", "limit", "cursor")
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise UsageError(
            f"unknown parameter {unknown[0][:40]!r}; the parameters are {', '.join(allowed)}"
        )
    state = request.query.get("state", "live")
    if state not in ("live", "done"):
        raise UsageError("state must be live (in flight) or done (finished)")
    mine = _flag(request, "mine")
    everyone = user.role == "admin" and not mine
    hub = request.app[STATE]
    if state == "live":
        rows = hub.transfers.in_flight(hub.relay.live(), None if everyone else user.id)
        return web.json_response({"transfers": rows, "next": None})
    return web.json_response(await _done(request, hub, user, everyone))


async def _done(request: web.Request, hub: Hub, user: User, everyone: bool) -> dict[str, Any]:
    text = request.query.get("limit", "50")
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 1 <= int(text) <= MAX_PAGE:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_PAGE}")
    f = EventFilter(kinds=DONE_KINDS, actor=None if everyone else user.name)
    cursor = request.query.get("cursor")
    after = decode_cursor(f, cursor) if cursor else None
    rows, last = await hub.db.find_events(f, after=after, limit=int(text))
    return {
        "transfers": [_finished(e) for e in rows],
        "next": encode_cursor(f, last) if last is not None else None,
    }


def _mine(user: User, hub: Hub) -> list[Any]:
    return [c for c in hub.relay.live() if user.id in (c.users[DIAL].id, c.users[ACCEPT].id)]


async def my_connections(request: web.Request) -> web.Response:
    user = await current_user(request)
    hub = request.app[STATE]
    now = time.time()
    return web.json_response([c.describe(now) for c in _mine(user, hub)])


async def end_my_connection(request: web.Request) -> web.Response:
    user = await current_user(request)
    hub = request.app[STATE]
    cid = request.match_info["cid"]
    conn = hub.relay.conns.get(cid) if len(cid) <= 128 else None
    if conn is None or user.id not in (conn.users[DIAL].id, conn.users[ACCEPT].id):
        raise NotFound(f"no live connection {cid[:64]!r} of yours; see: freight conns")
    hub.relay.end(conn, HangupCode.KILLED, f"ended by {user.name}", by=BY_PEER)
    await hub.events.emit("connection_killed", user.name, cid=cid)
    return web.json_response({"killed": cid})


async def overview(request: web.Request) -> web.Response:
    await admin_user(request)
    hub = request.app[STATE]
    board = hub.transfers
    roles: dict[int, str] = {a.user.id: a.user.role for a in hub.relay.attachments if not a.closed}
    conns = list(hub.relay.live())
    disk = shutil.disk_usage(hub.layout.root)
    security, _ = await hub.db.find_events(EventFilter(kinds=SECURITY_KINDS), limit=10)
    # Online as GET /v1/agents says it: the agent's command channel is attached.
    online = len({a.user.id for a in hub.relay.attachments if a.commands})
    return web.json_response(
        {
            "version": __version__,
            "started": board.started,
            "uptime": round(time.time() - board.started, 3),
            "attached": {
                "users": sum(1 for r in roles.values() if r != "agent"),
                "agents": sum(1 for r in roles.values() if r == "agent"),
            },
            "agents": {"online": online, "total": await hub.db.agent_count()},
            "streams": await hub.db.active_stream_count(),
            "transfers": len(board.live),
            "connections": len(conns),
            "throughput": round(board.throughput()),
            "hour": board.hour(),
            "disk": {"free": disk.free, "total": disk.total},
            "bandwidth": bandwidth_status(hub.bandwidth),
            "security": [e.as_json() for e in security],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/transfers", list_transfers)
    app.router.add_get("/v1/connections", my_connections)
    app.router.add_delete("/v1/connections/{cid}", end_my_connection)
    app.router.add_get("/v1/admin/overview", overview)
