"""``freight loadtest --workers N``: N processes share the clients (client
number I runs in worker I mod N), their figures merge into one report.

The parent starts the hub when asked (``--start-hub``; it alone strikes
``hub_kill``), starts each worker as ``freight loadtest SHEET --hub URL
--worker W/N --tag TAG --seed S``, waits until every worker has set up its
gates, accounts and agents, and then tells them all to go at once. A worker
writes one JSON line a second (its cumulative counts and that second's
latency histogram per row) and, at the end, its rows' snapshots; the parent
sums the counts, merges the histograms (HDR histograms add exactly) and
judges the expect clauses on the merged rows.

A worker's lines (stdout), in order: ``{"ready": true}``, then
``{"t": T, "rows": {ROW: {...}}}`` each second, then ``{"final": {ROW:
snapshot}, "seconds": S}``. It reads one line, ``go``, on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..client.api import Client
from ..errors import FreightError, RemoteProtocolError
from ..tasks import Supervisor
from .localhub import HubSpec, LocalHub
from .runner import HubMeter, Result, Sample, catch_interrupt, hub_alive
from .scenario import Scenario
from .schedule import fault_times
from .stats import RowStats, Window, add_sparse, sparse
from .verdict import judge

READY_TIMEOUT: Final = 900.0  # seconds every worker gets to set up
END_GRACE: Final = 60.0  # seconds past the duration a worker gets to report
MAX_LINE: Final = 16 << 20  # bytes of one worker line


class WorkerFailed(RemoteProtocolError):
    """A load test worker process ended without its report, or said
    something else than its line protocol."""

    code = "worker_failed"
    hint = "run with --workers 1 to see the error"


def worker_line(sample: Sample) -> str:
    """A worker's second, as its parent reads it."""
    rows = {
        rid: {
            **{k: v for k, v in r.items() if k not in ("p50", "p99")},
            "interval": sparse(sample.intervals[rid]),
        }
        for rid, r in sample.rows.items()
    }
    return json.dumps({"t": sample.t, "rows": rows})


class Fleet:
    def __init__(
        self,
        sheet: Path,
        scenario: Scenario,
        *,
        workers: int,
        duration: float,
        seed: int,
        hub: str | None,
        start_hub: bool,
        on_sample: Callable[[Sample], None],
        spec: HubSpec | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.sheet = sheet
        self.scenario = scenario
        self.n = workers
        self.duration = duration
        self.seed = seed
        self.hub = hub
        self.local = LocalHub(spec=spec) if start_hub else None
        self.on_sample = on_sample
        self.on_result = on_result or (lambda _: None)
        self.tag = "lt" + secrets.token_hex(3)
        self.procs: list[asyncio.subprocess.Process] = []
        self.latest: list[dict[str, Any]] = []
        self.finals: list[dict[str, Any]] = []
        self.config: Path | None = None  # the login to the local hub
        self.interrupted = False
        self.windows = {r.id: Window() for r in scenario.rows}
        # Each row's second so far (merged from the workers), and the one before.
        self.intervals = {r.id: RowStats(r.id) for r in scenario.rows}

    async def run(self) -> Result:
        try:
            env = await self._hub_env()
            await self._spawn(env)
            result = await self._go(env)
            self.on_result(result)
            # The workers clean up what they made on the hub, then end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(END_GRACE):
                    await asyncio.gather(*(proc.wait() for proc in self.procs))
            return result
        finally:
            for proc in self.procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if self.local is not None:
                await self.local.stop()
            if self.config is not None:
                shutil.rmtree(self.config, ignore_errors=True)

    async def _hub_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.local is not None:
            await self.local.start()
            config = Path(tempfile.mkdtemp(prefix="freight-loadtest-login-"))
            await (
                await Client.login(
                    self.local.url,
                    "admin",
                    self.local.password,
                    fingerprint=self.local.fingerprint,
                    config_dir=config,
                )
            ).aclose()
            env["FREIGHT_CONFIG_DIR"] = str(config)
            self.hub = self.local.url
            self.config = config
        return env

    async def _spawn(self, env: dict[str, str]) -> None:
        args = [str(self.sheet), "--duration", f"{self.duration}s", "--seed", str(self.seed)]
        args += ["--tag", self.tag] + (["--hub", self.hub] if self.hub else [])
        for w in range(self.n):
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "freight", "loadtest", *args,
                    "--worker", f"{w}/{self.n}",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=None, env=env, limit=MAX_LINE,
                )
            )  # fmt: skip
        async with asyncio.timeout(READY_TIMEOUT):
            for proc in self.procs:
                line = await self._line(proc)
                if not line.get("ready"):
                    raise WorkerFailed(f"a worker said {str(line)[:200]} instead of ready")

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        raw = await proc.stdout.readline()
        if not raw:
            raise WorkerFailed(f"a worker (pid {proc.pid}) ended before its report")
        data: dict[str, Any] = json.loads(raw)
        return data

    async def _go(self, env: dict[str, str]) -> Result:
        t0 = time.monotonic()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        self.latest = [{} for _ in self.procs]
        async with Supervisor("loadtest-parent") as tasks:
            readers = [
                tasks.spawn(self._read(w, p), name=f"worker-{w}") for w, p in enumerate(self.procs)
            ]
            self._hub_kills(t0, tasks)
            tasks.spawn(self._tick(t0), name="ticker")
            stopped = asyncio.Event()
            with catch_interrupt(stopped):
                tasks.spawn(self._forward_stop(stopped), name="stop")
                async with asyncio.timeout(self.duration + END_GRACE):
                    await asyncio.gather(*readers)
            self.interrupted = stopped.is_set()
        seconds = max((f.get("seconds", 0.0) for f in self.finals), default=0.0)
        ended_at = time.time()
        stats = {
            r.id: RowStats.merge(r.id, [f["final"][r.id] for f in self.finals])
            for r in self.scenario.rows
        }
        alive = await self._alive()
        verdicts = [
            judge(expect, stats[row.id], seconds, alive)
            for row in self.scenario.rows
            for expect in row.expect
        ]
        restarts = self.local.restarts if self.local else 0
        return Result(
            self.seed, seconds, stats, verdicts, alive, restarts, self.interrupted, ended_at
        )

    async def _forward_stop(self, stopped: asyncio.Event) -> None:
        """Ctrl-C here: every worker ends its share now and reports."""
        await stopped.wait()
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                with contextlib.suppress(OSError):
                    proc.stdin.write(b"stop\n")

    def _hub_kills(self, t0: float, tasks: Supervisor) -> None:
        if self.local is None:
            return
        local = self.local

        async def kill_at(at: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            await local.kill_and_restart()

        for row in self.scenario.rows:
            when = random.Random(f"{self.seed}:{row.id}:faults")
            for fault in row.faults:
                if fault.kind == "hub_kill":
                    for at in fault_times(fault, self.duration, when):
                        tasks.spawn(kill_at(at), name="hub-kill", detached=True)

    async def _read(self, w: int, proc: asyncio.subprocess.Process) -> None:
        while True:
            line = await self._line(proc)
            if "final" in line:
                self.finals.append(line)
                return
            self.latest[w] = line
            for rid, r in line["rows"].items():
                add_sparse(self.intervals[rid].interval, r["interval"])
                self.windows[rid].add_sparse(line["t"], r["interval"])

    async def _tick(self, t0: float) -> None:
        last: dict[str, tuple[int, int]] = {r.id: (0, 0) for r in self.scenario.rows}
        meter = HubMeter(self.local)
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic() - t0
            rows: dict[str, dict[str, Any]] = {}
            intervals: dict[str, Any] = {}
            for row in self.scenario.rows:
                parts = [x["rows"][row.id] for x in self.latest if x]
                total = {k: sum(int(p.get(k, 0)) for p in parts) for k in _SUMMED}
                ops, nbytes = last[row.id]
                rows[row.id] = {
                    **total,
                    "ops_s": total["ops"] - ops,
                    "bytes_s": total["bytes"] - nbytes,
                    **self.windows[row.id].percentiles(now),
                }
                last[row.id] = (total["ops"], total["bytes"])
                intervals[row.id] = self.intervals[row.id].take_interval()
            sample = Sample(round(now, 1), rows, intervals=intervals)
            meter.read(sample)
            self.on_sample(sample)

    async def _alive(self) -> bool:
        client = Client(self.hub, config_dir=self.config)
        try:
            return await hub_alive(client)
        finally:
            with contextlib.suppress(FreightError):
                await client.aclose()


_SUMMED: Final = ("ops", "sent", "bytes", "clients", "attached", "errors", "faults", "recovered")


async def serve_as_worker(run: Any) -> None:
    """Run ``run`` (a :class:`~.runner.Run` for this worker's share) with
    the line protocol above on stdin/stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: Any) -> None:
        sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        sys.stdout.flush()

    async def listen_for_stop() -> None:
        if (await reader.readline()).strip() == b"stop":
            run.stopped.set()

    async def ready() -> None:
        say({"ready": True})
        if (await reader.readline()).strip() != b"go":
            raise WorkerFailed("the parent did not say go")
        run.tasks.spawn(listen_for_stop(), name="parent", detached=True)

    def final(result: Result) -> None:
        snapshots = {rid: s.snapshot() for rid, s in result.stats.items()}
        say({"final": snapshots, "seconds": result.seconds})

    run.ready = ready
    run.on_sample = lambda sample: say(worker_line(sample))
    run.on_result = final  # before its clean-up: the parent's summary waits for it
    await run.run()
