"""The agent's side of collection: scan, offer, upload on request.

For each policy that selects this agent (fetched from the hub), the agent
scans its roots incrementally (a local cache by path, size, mtime and inode,
so unchanged files are not hashed again), and offers what it found in
batches; each batch is sent again until the hub acknowledges it. Only what
changed since the last acknowledged offer goes out, unless the hub asks
for everything again (``resend_offers``). ``upload`` pushes one file as a
resumable stream, after checking it is still inside a root.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from pathlib import Path
from typing import Any

import structlog

from ..client.options import QuietReporter, options_from_env
from ..client.transfer import push_many
from ..errors import FreightError, NetworkError, UsageError
from ..protocol.agents import UPLOAD_PREFIX
from ..protocol.retry import Backoff, BackoffState
from .roots import resolve
from .scan import ScanCache, scan

log = structlog.get_logger("freight.agent")

BATCH = 1000
MIN_EVERY = 5.0
# New, changed and removed policies reach agents as queued rescan commands
# (delivered on attach when offline); this poll is only a safety net, so an
# hour: 5,000 agents polling every 5 min cost the hub ~6 % of a core.
POLICY_POLL = 3600.0
# A batch the hub did not take is sent again after 0.5-1 s, doubling to 30 s.
OFFER_BACKOFF = Backoff(first=1.0, max_delay=30.0, low=0.5)


class Offerer:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.kick = asyncio.Event()
        self.resend = False
        # What the hub has acknowledged, per policy: path -> (size, mtime, digest).
        self.acked: dict[str, dict[str, tuple[int, float, str]]] = {}
        self.last_scan: dict[str, float] = {}
        # Retries of a batch: the clock, random source and sleep are the
        # caller's, so a test can drive them.
        self.clock = time.monotonic
        self.rand = random.random
        self.sleep = asyncio.sleep

    def trigger(self, *, resend: bool) -> None:
        self.resend = self.resend or resend
        self.last_scan.clear()
        self.kick.set()

    async def run(self, relay: Any) -> None:
        """Scan each policy when it is due; never give up on the hub."""
        cache = ScanCache(self.agent.config.root / "scan-cache.sqlite")
        try:
            while True:
                # New or changed policies arrive as a rescan command; this
                # poll is only the safety net (thousands of agents poll).
                wait = POLICY_POLL
                try:
                    policies = await relay.session.request("GET", "/v1/collect/policies")
                    now = time.monotonic()
                    for p in policies:
                        every = max(MIN_EVERY, float(p["every"]))
                        due = self.last_scan.get(p["name"], -1e18) + every
                        if now >= due:
                            await self.scan_and_offer(relay, cache, p)
                            self.last_scan[p["name"]] = time.monotonic()
                            due = self.last_scan[p["name"]] + every
                        wait = min(wait, max(0.5, due - time.monotonic()))
                    self.resend = False
                except (NetworkError, OSError) as exc:
                    log.info("offers_deferred", error=str(exc))
                    wait = random.uniform(1.0, 5.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.kick.wait(), wait)
                self.kick.clear()
        finally:
            cache.close()

    async def scan_and_offer(self, relay: Any, cache: ScanCache, policy: dict[str, Any]) -> None:
        name = str(policy["name"])
        result = await asyncio.to_thread(
            scan,
            self.agent.roots,
            list(policy["include"]),
            list(policy["exclude"]),
            int(policy["max_size"]),
            cache,
        )
        acked = self.acked.setdefault(name, {})
        if self.resend:
            acked.clear()
        fresh = [f for f in result.found if acked.get(f.path) != (f.size, f.mtime, f.digest)]
        current = {f.path for f in result.found}
        # Gone since we offered them, or (after a restart of the agent, when
        # nothing is remembered as offered) since the last scan.
        gone = sorted({p for p in acked if p not in current} | set(result.removed))
        log.info(
            "scanned",
            policy=name,
            files=len(result.found),
            hashed=result.hashed,
            offering=len(fresh),
            removed=len(gone),
        )
        for i in range(0, max(len(fresh), len(gone)), BATCH):
            chunk = fresh[i : i + BATCH]
            body = {
                "batch": secrets.token_hex(8),
                "policy": name,
                "offers": [
                    {"path": f.path, "size": f.size, "mtime": f.mtime, "digest": f.digest}
                    for f in chunk
                ],
                "removed": gone[i : i + BATCH],
            }
            await self._send_batch(relay, body)
            for f in chunk:
                acked[f.path] = (f.size, f.mtime, f.digest)
            for p in gone[i : i + BATCH]:
                acked.pop(p, None)

    async def _send_batch(self, relay: Any, body: dict[str, Any]) -> None:
        """Send one batch until the hub acknowledges that very batch."""
        failures = BackoffState(OFFER_BACKOFF)
        while True:
            try:
                answer = await relay.session.request("POST", "/v1/collect/offers", body)
                if answer.get("ack") == body["batch"]:
                    return
                error = "the hub acknowledged another batch"
            except (NetworkError, OSError) as exc:
                error = str(exc)
            delay = failures.failed(self.clock(), self.rand())
            assert delay is not None  # this policy never gives up
            log.info("offer_retry", error=error, retry_in=round(delay, 1))
            await self.sleep(delay)

    async def upload(self, args: dict[str, Any], relay: Any) -> dict[str, Any]:
        digest = str(args["digest"])
        path = resolve(str(args["path"]), self.agent.roots)
        if not path.is_file():
            raise UsageError(f"{path} is no longer there")
        name = UPLOAD_PREFIX + digest
        try:
            results = await push_many(
                relay.session,
                self.agent.config,
                [(Path(path), name)],
                options_from_env(),
                QuietReporter(),
            )
        except FreightError as exc:
            raise UsageError(f"upload of {path} failed: {exc.message}") from None
        r = results[0]
        return {"name": name, "size": r.size, "digest": r.digest, "seconds": r.seconds}
