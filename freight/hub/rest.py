"""The hub's own REST endpoints: health, files, bandwidth, active streams,
metrics and relayed connections (accounts, keys, agents and
collection have their own modules)."""

from __future__ import annotations

import heapq
import json
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..errors import NotFound, UsageError
from ..protocol.limits import PROTOCOL_VERSION
from ..units import format_rate
from .bandwidth import BandwidthManager, Budget
from .requests import admin_user, current_user
from .services import STATE
from .streams import minute_of_day


def bandwidth_status(bandwidth: BandwidthManager) -> dict[str, Any]:
    total = bandwidth.budget.total_at(minute_of_day())
    return {
        "budget": bandwidth.budget.spec,
        "now": total,
        "now_text": format_rate(total),
        "active_streams": len(bandwidth.active),
    }


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "version": __version__, "protocol": PROTOCOL_VERSION})


async def list_files(request: web.Request) -> web.Response:
    user = await current_user(request)
    rows = await request.app[STATE].db.list_files(user.id)
    return web.json_response(
        [
            {
                "name": r.name,
                "size": r.size,
                "digest": r.digest,
                "mtime": r.mtime,
                "created": r.created,
            }
            for r in rows
        ]
    )


async def delete_file(request: web.Request) -> web.Response:
    user = await current_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    if not await st.core.forget_file(user.id, name):
        raise NotFound(f"no file named {name!r} on the hub")
    await st.events.emit("file_removed", user.name, name=name)
    return web.json_response({"removed": name})


async def get_bandwidth(request: web.Request) -> web.Response:
    await current_user(request)
    return web.json_response(bandwidth_status(request.app[STATE].bandwidth))


async def put_bandwidth(request: web.Request) -> web.Response:
    user = await admin_user(request)
    st = request.app[STATE]
    try:
        spec = str((await request.json())["budget"])
    except (ValueError, KeyError, TypeError):
        raise UsageError("body must be JSON with a 'budget' field") from None
    st.bandwidth.budget = Budget.parse(spec)
    await st.db.set_setting("bandwidth", spec)
    await st.events.emit("bandwidth_changed", user.name, budget=spec)
    return web.json_response(bandwidth_status(st.bandwidth))


async def get_compression(request: web.Request) -> web.Response:
    await admin_user(request)
    return web.json_response(request.app[STATE].streams.compression.as_dict())


async def put_compression(request: web.Request) -> web.Response:
    """``{"level": "auto|none|fast|max", "user": NAME}``: the level the hub
    asks of pushes, its own or (with ``user``) one account's."""
    admin = await admin_user(request)
    st = request.app[STATE]
    try:
        body = await request.json()
        level, user = body["level"], body.get("user", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError("body must be JSON with a 'level' field") from None
    if not isinstance(level, str) or not isinstance(user, str) or len(user) > 256:
        raise UsageError("'level' and 'user' must be short strings")
    if user and await st.db.user_by_name(user) is None:
        raise NotFound(f"no user named {user!r}")
    policy = st.streams.compression
    policy.set(level, user)
    saved = policy.as_dict()
    saved.pop("load")
    await st.db.set_setting("compression", json.dumps(saved))
    await st.events.emit("compression_changed", admin.name, level=level, user=user)
    return web.json_response(policy.as_dict())


async def list_streams(request: web.Request) -> web.Response:
    await admin_user(request)
    rows = await request.app[STATE].db.active_streams()
    return web.json_response(
        [
            {
                k: getattr(r, k)
                for k in ("user_id", "sid", "name", "size", "checkpoint", "state", "updated")
            }
            for r in rows
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


MAX_CONNECTION_PAGE = 1000


async def list_connections(request: web.Request) -> web.Response:
    """Every live relayed connection (a list), or with ``limit`` (1..1000)
    the newest ``limit`` of them and how many there are: ``{"connections":
    [...], "total": N}`` (only those are described)."""
    await admin_user(request)
    now = time.time()
    conns = list(request.app[STATE].relay.live())
    if "limit" not in request.query:
        return web.json_response([c.describe(now) for c in conns])
    text = request.query["limit"]
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not (
        1 <= int(text) <= MAX_CONNECTION_PAGE
    ):
        raise UsageError(f"limit must be a whole number from 1 to {MAX_CONNECTION_PAGE}")
    newest = heapq.nlargest(int(text), conns, key=lambda c: c.started)
    return web.json_response(
        {"connections": [c.describe(now) for c in newest], "total": len(conns)}
    )


async def kill_connection(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    cid = request.match_info["cid"]
    if not st.relay.kill(cid, admin.name):
        raise NotFound(f"no live connection {cid!r}")
    await st.events.emit("connection_killed", admin.name, cid=cid)
    return web.json_response({"killed": cid})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/files", list_files)
    app.router.add_delete("/v1/files/{name:.+}", delete_file)
    app.router.add_get("/v1/bandwidth", get_bandwidth)
    app.router.add_put("/v1/admin/bandwidth", put_bandwidth)
    app.router.add_get("/v1/admin/compression", get_compression)
    app.router.add_put("/v1/admin/compression", put_compression)
    app.router.add_get("/v1/admin/streams", list_streams)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/connections", list_connections)
    app.router.add_delete("/v1/admin/connections/{cid}", kill_connection)
    app.router.add_get("/metrics", metrics)
