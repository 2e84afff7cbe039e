"""Collection over HTTP: admins set policies and see what was collected;
agents fetch the policies that select them and offer what those select
(the scheduler and the store are :mod:`.collect`)."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import re
import time
from typing import Any

from aiohttp import web

from ..engine.pipeline import read_blocks
from ..errors import NotFound, UsageError
from ..units import parse_size
from .blobfiles import BucketSource
from .links import BLOCK, READ_AHEAD, byte_range, ranged_response
from .requests import admin_user, current_user
from .services import COLLECTOR, STATE, Hub

DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_BATCH = 2000
MAX_EVERY = 366 * 86400.0  # seconds between a policy's scans


def _policy_json(r: Any) -> dict[str, Any]:
    return {
        "name": r["name"],
        "agents": r["agents"],
        "include": json.loads(r["include"]),
        "exclude": json.loads(r["exclude"]),
        "max_size": r["max_size"],
        "every": r["every"],
    }


async def put_policy(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise UsageError("a policy name is 1-64 of A-Z a-z 0-9 _ . -")
    try:
        body = await request.json()
        row = {
            "name": name,
            "agents": str(body.get("agents", "*")),
            "include": json.dumps([str(g) for g in body.get("include", [])]),
            "exclude": json.dumps([str(g) for g in body.get("exclude", [])]),
            "max_size": parse_size(str(body.get("max_size", "0"))),
            "every": float(body.get("every", 3600)),
        }
    except (ValueError, TypeError, AttributeError):
        raise UsageError("a policy is JSON: agents, include, exclude, max_size, every") from None
    if not 0 < row["every"] <= MAX_EVERY:  # also NaN and infinity
        raise UsageError(f"'every' is seconds between scans: more than 0, at most {MAX_EVERY}")
    old = next((p for p in await st.db.list_policies() if p.name == name), None)
    await st.db.put_policy(row)
    await st.events.emit("policy_set", admin.name, name=name)
    await _rescan(st, admin.name, [row["agents"]] + ([str(old.agents)] if old else []))
    return web.json_response(_policy_json(row))


async def _rescan(st: Hub, by: str, patterns: list[str]) -> None:
    """Queue a ``rescan`` for every agent a changed policy selects (or
    selected): online agents start at once, the others when they attach,
    so agents need not poll for policies."""
    for agent in await st.db.list_agents():
        if agent.disabled or not any(fnmatch.fnmatchcase(agent.name, p) for p in patterns):
            continue
        await st.commands.enqueue(int(agent.id), "rescan", "{}", by)


async def list_policies(request: web.Request) -> web.Response:
    user = await current_user(request)
    rows = [_policy_json(r.as_dict()) for r in await request.app[STATE].db.list_policies()]
    if user.role == "agent":  # an agent sees the policies that select it
        rows = [r for r in rows if fnmatch.fnmatchcase(user.name, r["agents"])]
    elif user.role != "admin":
        raise UsageError("policies are for admins and agents")
    return web.json_response(rows)


async def delete_policy(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    old = next((p for p in await st.db.list_policies() if p.name == name), None)
    if old is None or not await st.db.delete_policy(name):
        raise NotFound(f"no policy {name!r}")
    await st.events.emit("policy_removed", admin.name, name=name)
    await _rescan(st, admin.name, [str(old.agents)])  # they stop offering for it
    return web.json_response({"removed": name})


# Seconds either side of 1970 an offer's mtime may be (about 3,000 years):
# beyond that no file system keeps it, and the store's integers overflow.
MAX_MTIME = 1e11


def _check_offer(o: Any) -> dict[str, Any]:
    size, mtime = (o.get("size"), o.get("mtime")) if isinstance(o, dict) else (None, None)
    if (
        not isinstance(o, dict)
        or not DIGEST.match(str(o.get("digest", "")))
        or isinstance(size, bool)
        or not isinstance(size, int)
        or not 0 <= size < 1 << 63
        or isinstance(mtime, bool)
        or not isinstance(mtime, int | float)
        or not math.isfinite(mtime)
        or not abs(mtime) < MAX_MTIME
    ):
        raise UsageError(
            "each offer needs path, size (bytes), mtime (seconds) and a BLAKE3 digest (64 hex)"
        )
    path = str(o.get("path", ""))
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise UsageError(f"offer path {path[:80]!r} must be absolute")
    return {"path": path, "size": size, "mtime": float(mtime), "digest": o["digest"]}


async def offers(request: web.Request) -> web.Response:
    """A batch of offers from an agent; the answer acknowledges the batch."""
    user = await current_user(request)
    if user.role != "agent":
        raise UsageError("only agents offer files")
    st = request.app[STATE]
    try:
        body = await request.json()
        batch = str(body["batch"])
        policy = str(body["policy"])
        items = [_check_offer(o) for o in body.get("offers", [])]
        removed = [str(p) for p in body.get("removed", [])]
    except (ValueError, KeyError, TypeError):
        raise UsageError("offers need batch, policy and a list of offers") from None
    if len(items) + len(removed) > MAX_BATCH:
        raise UsageError(f"at most {MAX_BATCH} offers per batch")
    wanted = await st.db.record_offers(user.id, policy, items, time.time())
    if removed:
        await st.db.forget_paths(user.id, removed)
    if wanted:
        request.app[COLLECTOR].wake.set()
    return web.json_response({"ack": batch, "wanted": wanted})


async def collected(request: web.Request) -> web.Response:
    await admin_user(request)
    rows = await request.app[STATE].db.collected(request.query.get("policy"))
    by_digest: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = by_digest.setdefault(
            r.digest,
            {"digest": r.digest, "size": r.size, "state": r.state, "holders": []},
        )
        entry["holders"].append({"agent": r.agent, "path": r.path, "mtime": r.mtime})
    return web.json_response(list(by_digest.values()))


async def stats(request: web.Request) -> web.Response:
    await admin_user(request)
    st = request.app[STATE]
    out = await st.db.collection_stats()
    out["paused_for_disk"] = int(request.app[COLLECTOR].paused_for_disk)
    return web.json_response(out)


async def get_content(request: web.Request) -> web.StreamResponse:
    await admin_user(request)
    st = request.app[STATE]
    digest = request.match_info["digest"]
    row = await st.db.get_content(digest) if DIGEST.match(digest) else None
    if row is None or row.state != "stored":
        raise NotFound(f"no collected content {digest[:16]}…")
    if st.bucket is None:
        return web.FileResponse(st.layout.cas_path(digest))
    size = int(row.size)
    start, end = byte_range(request.headers.get("Range", ""), size)  # a resumed get
    resp = ranged_response(start, end, size)
    await resp.prepare(request)
    source = BucketSource(st.bucket, digest, size)
    try:
        blocks = read_blocks(source.read, None, start, end, block=BLOCK, max_bytes=READ_AHEAD)
        async with contextlib.aclosing(blocks):
            async for block in blocks:
                await resp.write(block)
    finally:
        source.close()
    await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/collect/policies", list_policies)
    app.router.add_put("/v1/collect/policies/{name}", put_policy)
    app.router.add_delete("/v1/collect/policies/{name}", delete_policy)
    app.router.add_post("/v1/collect/offers", offers)
    app.router.add_get("/v1/collected", collected)
    app.router.add_get("/v1/collected/stats", stats)
    app.router.add_get("/v1/collected/{digest}", get_content)
