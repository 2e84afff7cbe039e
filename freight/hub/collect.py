"""Deduplicated collection: policies, offers, the scheduler, the store.

Agents scan what their policies select and *offer* (path, size, mtime,
BLAKE3) in batches; the hub acknowledges each batch after recording it in
the catalogue (so an agent resends only what was not acknowledged). Per
content hash the hub decides: already stored → only the catalogue row;
otherwise the content is *wanted*. The scheduler asks one holder at a time
to upload a wanted content — an online agent that is not busy, preferring
the best throughput seen — as a durable ``upload`` command; the agent
pushes the file as a resumable stream; on its result the hub checks the
digest it computed itself while receiving and that the content is still
wanted (a newer offer for the path may have replaced it), then moves it
into the content-addressed store. Everything lives in the database, so
offers, queues and uploads survive a restart of the hub or an agent; after
a restart, uploads are released a few per second, not all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import shutil
import time
from typing import Any

from aiohttp import web

from ..errors import NotFound, UsageError
from ..store.commands import TERMINAL_COMMAND_STATES
from ..units import parse_size
from . import commands
from .app import STATE, admin_user, current_user
from .state import HubState

DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_BATCH = 2000
UPLOAD_PREFIX = ".collect/"


class Collector:
    """The scheduler: turns wanted content into upload commands."""

    def __init__(
        self,
        st: HubState,
        *,
        concurrency: int = 4,
        release_per_tick: int = 4,
        reissue_after: float = 600.0,
        reserve: int = 1 << 30,
        max_attempts: int = 5,
    ) -> None:
        self.st = st
        self.concurrency = concurrency
        self.release_per_tick = release_per_tick
        self.reissue_after = reissue_after
        self.reserve = reserve
        self.max_attempts = max_attempts
        self.throughput: dict[int, float] = {}  # agent id -> bytes/s seen
        self.paused_for_disk = False
        self.wake = asyncio.Event()

    def disk_low(self) -> bool:
        free = shutil.disk_usage(self.st.layout.root).free
        low = free < self.reserve
        if low != self.paused_for_disk:
            self.paused_for_disk = low
            self.st.events.log.warning(
                "collection_paused" if low else "collection_resumed", free=free
            )
        return low

    def busy(self, agent_id: int, uploading: set[int]) -> bool:
        """An agent uploading already, or serving a person (interactive file
        manager work comes first), gets no collection work now."""
        if agent_id in uploading:
            return True
        att = self.st.relay.attachment_of(agent_id)
        if att is None:
            return True
        return any(
            (conn := self.st.relay.conns.get(cid)) is not None and conn.app == "freight.files"
            for cid in att.ends
        )

    async def tick(self, now: float) -> int:
        """One round of scheduling; returns how many uploads were issued."""
        db = self.st.db
        for row in await db.content_in_state("finishing"):  # a crash mid-finish
            if row.updated < now - 60:
                await db.update_content(row.digest, state="wanted", was="finishing")
        for row in await db.content_in_state("issued"):
            command = await db.get_command(int(row.command_id))
            if command is not None and command.state in TERMINAL_COMMAND_STATES:
                # Answered, but the hub stopped before acting on it.
                agent = await db.user_by_id(int(row.source))
                if agent is not None:
                    await self.finished(
                        int(command.id),
                        int(agent.id),
                        str(agent.name),
                        command.state == "done",
                        str(command.result),
                    )
                    continue
            if row.issued < now - self.reissue_after:  # no answer: ask again
                await db.update_content(row.digest, state="wanted", was="issued")
        if self.disk_low():
            return 0
        issued_rows = await db.content_in_state("issued")
        uploading = {int(r.source) for r in issued_rows}
        room = min(self.concurrency - len(issued_rows), self.release_per_tick)
        issued = 0
        for row in await db.content_in_state("wanted", limit=200):
            if issued >= room:
                break
            if row.attempts >= self.max_attempts:
                await db.update_content(row.digest, state="failed")
                continue
            everyone = await db.holders(row.digest)
            if not everyone:  # every path offering it now holds something newer
                await db.update_content(row.digest, state="superseded")
                continue
            holders = [h for h in everyone if not self.busy(int(h.agent_id), uploading)]
            if not holders:
                continue
            best = max(holders, key=lambda h: self.throughput.get(int(h.agent_id), 0.0))
            agent_id = int(best.agent_id)
            args = json.dumps({"digest": row.digest, "path": best.path, "size": row.size})
            command_id = await db.add_command(agent_id, "upload", args, "collector")
            await db.update_content(
                row.digest,
                state="issued",
                source=agent_id,
                command_id=command_id,
                issued=now,
                attempts=int(row.attempts) + 1,
            )
            att = self.st.relay.attachment_of(agent_id)
            if att is not None:
                await commands.deliver(self.st, att, command_id, "upload", args)
            uploading.add(agent_id)
            issued += 1
        return issued

    async def run(self, every: float = 0.5) -> None:
        while True:
            try:
                await self.tick(time.time())
            except Exception as exc:  # never let the scheduler die
                self.st.events.log.warning("collector_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), every)
            self.wake.clear()

    async def finished(
        self, command_id: int, agent_id: int, agent_name: str, ok: bool, result: str
    ) -> bool:
        """An agent answered an upload command; False if it was not one."""
        db = self.st.db
        row = await db.claim_upload(command_id, agent_id)
        if row is None:
            # Not an upload, already finished, or not this agent's: an upload
            # is bound to the agent it was requested from.
            return False
        digest = str(row.digest)
        name = UPLOAD_PREFIX + digest
        file_row = await db.get_file(agent_id, name)
        received = int(file_row.size) if file_row is not None else 0
        path = self.st.layout.file_path(agent_id, name)
        stored = False
        try:
            if not ok or file_row is None:
                reason = "upload failed" if not ok else "nothing arrived"
            elif file_row.digest != digest:
                reason = "content changed during the upload"  # our own hash
                await self._changed_at_source(command_id, agent_id, digest)
            elif not await db.holders(digest):
                reason = "no longer wanted"
            else:
                target = self.st.layout.cas_path(digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(os.replace, path, target)
                stored = True
                reason = "stored"
        finally:
            if file_row is not None:
                await db.delete_file(agent_id, name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        elapsed = max(1e-3, time.time() - float(row.issued))
        if received:
            self.throughput[agent_id] = received / elapsed
        state = "stored" if stored else ("superseded" if not await db.holders(digest) else "wanted")
        await db.update_content(digest, state=state, received=int(row.received) + received)
        await self.st.events.emit(
            "collect_" + ("stored" if stored else "rejected"),
            agent_name,
            digest=digest,
            reason=reason,
            detail=result[:200],
        )
        self.wake.set()
        return True

    async def _changed_at_source(self, command_id: int, agent_id: int, digest: str) -> None:
        """The file changed while it was uploaded: this agent's path no
        longer holds ``digest`` (asking it again would fail again), and a
        rescan has the agent offer what the path holds now."""
        command = await self.st.db.get_command(command_id)
        if command is None:
            return
        path = str(json.loads(command.args).get("path", ""))
        await self.st.db.forget_holder(agent_id, path, digest)
        rescan = await self.st.db.add_command(agent_id, "rescan", "{}", "hub")
        att = self.st.relay.attachment_of(agent_id)
        if att is not None:
            await commands.deliver(self.st, att, rescan, "rescan", "{}")


# --- REST ------------------------------------------------------------------------


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
    old = next((p for p in await st.db.list_policies() if p.name == name), None)
    await st.db.put_policy(row)
    await st.events.emit("policy_set", admin.name, name=name)
    await _rescan(st, admin.name, [row["agents"]] + ([str(old.agents)] if old else []))
    return web.json_response(_policy_json(row))


async def _rescan(st: HubState, by: str, patterns: list[str]) -> None:
    """Queue a ``rescan`` for every agent a changed policy selects (or
    selected): online agents start at once, the others when they attach,
    so agents need not poll for policies."""
    online = {
        att.user.id: att
        for att in st.relay.attachments
        if att.user.role == "agent" and att.commands and not att.closed
    }
    for agent in await st.db.list_agents():
        if agent.disabled or not any(fnmatch.fnmatchcase(agent.name, p) for p in patterns):
            continue
        agent_id = int(agent.id)
        command_id = await st.db.add_command(agent_id, "rescan", "{}", by)
        att = online.get(agent_id)
        if att is not None:
            await commands.deliver(st, att, command_id, "rescan", "{}")


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


def _check_offer(o: Any) -> dict[str, Any]:
    if not isinstance(o, dict) or not DIGEST.match(str(o.get("digest", ""))):
        raise UsageError("each offer needs path, size, mtime and a BLAKE3 digest (64 hex)")
    path = str(o.get("path", ""))
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise UsageError(f"offer path {path[:80]!r} must be absolute")
    return {"path": path, "size": int(o["size"]), "mtime": float(o["mtime"]), "digest": o["digest"]}


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
        st.collector.wake.set()
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
    out["paused_for_disk"] = int(st.collector.paused_for_disk)
    return web.json_response(out)


async def get_content(request: web.Request) -> web.StreamResponse:
    await admin_user(request)
    st = request.app[STATE]
    digest = request.match_info["digest"]
    row = await st.db.get_content(digest) if DIGEST.match(digest) else None
    if row is None or row.state != "stored":
        raise NotFound(f"no collected content {digest[:16]}…")
    return web.FileResponse(st.layout.cas_path(digest))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/collect/policies", list_policies)
    app.router.add_put("/v1/collect/policies/{name}", put_policy)
    app.router.add_delete("/v1/collect/policies/{name}", delete_policy)
    app.router.add_post("/v1/collect/offers", offers)
    app.router.add_get("/v1/collected", collected)
    app.router.add_get("/v1/collected/stats", stats)
    app.router.add_get("/v1/collected/{digest}", get_content)
