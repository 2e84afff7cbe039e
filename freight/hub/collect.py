"""Deduplicated collection: the scheduler and the store (the REST side,
policies and offers, is :mod:`.collectapi`).

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
import json
import os
import shutil
import time
from typing import Any

from ..protocol.agents import UPLOAD_PREFIX
from ..store.commands import TERMINAL_COMMAND_STATES
from .commands import CommandQueue
from .core import Core
from .relay import Router


class Collector:
    """The scheduler: turns wanted content into upload commands."""

    def __init__(
        self,
        core: Core,
        relay: Router,
        queue: CommandQueue,
        *,
        concurrency: int = 4,
        release_per_tick: int = 4,
        reissue_after: float = 600.0,
        reserve: int = 1 << 30,
        max_attempts: int = 5,
    ) -> None:
        self.st = core
        self.relay = relay
        self.queue = queue
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
        att = self.relay.presence.attachment_of(agent_id)
        if att is None:
            return True
        return any(
            (conn := self.relay.conns.get(cid)) is not None and conn.app == "freight.files"
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

            async def issue(command_id: int, row: Any = row, agent_id: int = agent_id) -> None:
                await db.update_content(
                    row.digest,
                    state="issued",
                    source=agent_id,
                    command_id=command_id,
                    issued=now,
                    attempts=int(row.attempts) + 1,
                )

            await self.queue.enqueue(agent_id, "upload", args, "collector", prepare=issue)
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
                if self.st.bucket is None:  # a bucket holds it by its digest already
                    target = self.st.layout.cas_path(digest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    await asyncio.to_thread(os.replace, path, target)
                stored = True
                reason = "stored"
        finally:
            if file_row is not None:
                await db.delete_file(agent_id, name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # (nothing there with a bucket)
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
        await self.queue.enqueue(agent_id, "rescan", "{}", "hub")
