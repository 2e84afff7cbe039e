"""One load test run: set up each row (its fault gate, its logins and, for
``listen`` rows, an account per client), start every client at its time,
strike the faults on schedule, sample the live figures every second, stop
each row at its end, and judge every ``expect`` clause.

Accounts and agents the run makes on the hub are named ``lt<hex>-ROW-N``
and are disabled (accounts) or removed (agents) when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import random
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..client.api import Client
from ..client.config import ClientConfig
from ..client.session import canonical_url, hostport, parse_hub_url
from ..errors import FreightError, UsageError
from ..tasks import Supervisor
from .clients import ECHO_GRACE, RowRun
from .gate import Gate
from .localhub import HubSpec, LocalHub, proc_usage
from .roles import ROLES, SERVICE
from .scenario import Scenario
from .schedule import client_starts, fault_times
from .stats import RowStats
from .verdict import Verdict, judge

SETUP_CONCURRENCY: Final = 8  # accounts made and logged in at once
STOP_TIMEOUT: Final = 10.0  # seconds the clients get to stop
ALIVE_TIMEOUT: Final = 5.0
TRIM_EVERY: Final = 10  # seconds between giving freed memory back
# Roles whose every client is an account of its own (the hub keeps one
# listener per account and application, one connection per pair of
# accounts and application, 64 open codes per account); the others share
# the tester's login.
OWN_ACCOUNTS: Final = frozenset({"listen", "connect", "message", "request", "forward", "send"})


@dataclass
class Sample:
    """One second of the live view."""

    t: float
    rows: dict[str, dict[str, Any]]
    hub_cpu: float | None = None  # % of one core over the last second
    hub_rss: int | None = None
    intervals: dict[str, Any] = field(default_factory=dict)  # row -> HdrHistogram of the second


@dataclass
class Result:
    seed: int
    seconds: float
    stats: dict[str, RowStats]
    verdicts: list[Verdict]
    hub_alive: bool
    hub_restarts: int = 0
    interrupted: bool = False  # Ctrl-C ended it early
    ended_at: float = 0.0  # wall-clock time (epoch seconds) the clients were stopped

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


class Run:
    def __init__(
        self,
        scenario: Scenario,
        *,
        duration: float,
        seed: int,
        hub: str | None = None,
        config_dir: Path | None = None,
        start_hub: bool = False,
        spec: HubSpec | None = None,
        on_sample: Callable[[Sample], None] | None = None,
        share: tuple[int, int] = (0, 1),
        tag: str | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        """``share`` (W, N): this process runs the clients whose number is W
        mod N (a worker of ``--workers N``), all of them by default; ``tag``
        names the run's accounts (the same in every worker); ``ready`` is
        awaited between the set-up and the start (all workers start at the
        word of their parent); ``on_result`` hears the result before the
        accounts and agents the run made are cleaned up."""
        self.scenario = scenario
        self.duration = duration
        self.seed = seed
        self.rng = random.Random(seed)
        self.hub_url = hub
        self.config_dir = config_dir
        self.local = LocalHub(spec=spec) if start_hub else None
        self.on_sample = on_sample or (lambda _: None)
        self.tag = tag or "lt" + secrets.token_hex(3)
        self.share = share
        self.ready = ready
        self.on_result = on_result or (lambda _: None)
        self.work = Path(tempfile.mkdtemp(prefix="freight-loadtest-"))
        self.rows: dict[str, RowRun] = {}
        self.gates: list[Gate] = []
        self.made_users: list[str] = []
        self.t0 = 0.0
        self.tasks = Supervisor("loadtest")  # the clients, the sampler, hub restarts
        self.stopped = asyncio.Event()  # set by Ctrl-C (or a worker's parent): end now
        self.file_sizes: dict[str, int] = {}  # rows whose size is file:PATH
        for row in scenario.rows:
            if row.size is not None and row.size.kind == "file":
                try:
                    self.file_sizes[row.id] = Path(row.size.file).stat().st_size
                except OSError as exc:
                    raise UsageError(
                        f"row {row.id!r}, column size: cannot read {row.size.file}: "
                        f"{exc.strerror or exc}"
                    ) from None
            if any(f.kind == "hub_kill" for f in row.faults) and not start_hub and not tag:
                raise UsageError(
                    f"row {row.id!r}: hub_kill needs a hub of the tester's own (--start-hub)"
                )

    def clock(self) -> float:
        return time.monotonic() - self.t0

    # --- set-up -----------------------------------------------------------------

    async def _admin(self) -> tuple[Client, str, str]:
        """The tester's login, its user name and the hub's fingerprint."""
        if self.local is not None:
            await self.local.start()
            admin = await Client.login(
                self.local.url,
                "admin",
                self.local.password,
                fingerprint=self.local.fingerprint,
                config_dir=self.work / "admin",
            )
            return admin, "admin", self.local.fingerprint
        admin = Client(self.hub_url, config_dir=self.config_dir)
        url, login = admin.config.current(admin.hub)
        admin.hub = url
        fingerprint = admin.config.pinned(hostport(parse_hub_url(url))) or ""
        if not fingerprint:
            raise UsageError(f"no pinned certificate for {url}: log in with freight login first")
        needs_admin = (OWN_ACCOUNTS | {"agent-idle"}) & {r.role for r in self.scenario.rows}
        if needs_admin and login.get("role") != "admin":
            raise UsageError(
                f"rows of {', '.join(sorted(needs_admin))} make accounts or agents on the hub: "
                "log in as an admin"
            )
        return admin, str(login["user"]), fingerprint

    async def _setup(self) -> None:
        self.admin, me, self.fingerprint = await self._admin()
        url = parse_hub_url(str(self.admin.hub))
        # A cluster's other nodes are reached directly (the gate's faults
        # are on the first node's path).
        others = self.local.others if self.local is not None else []
        token = ClientConfig(self.admin.config.root).current(str(self.admin.hub))[1]["token"]
        share = self.share
        for row in self.scenario.rows:
            slow = next((f.rate for f in row.faults if f.kind == "slow_reader"), None)
            gate = Gate(
                (url.host or "127.0.0.1", url.port or 8443),
                bad_tls=any(f.kind == "bad_tls" for f in row.faults),
                slow_rate=slow,
                rng=random.Random(self.rng.random()),
                relay=bool(row.faults),  # a row without faults goes straight to the hub
            )
            await gate.start()
            self.gates.append(gate)
            login = self.work / row.id
            (login / "files").mkdir(parents=True)
            cfg = ClientConfig(login)
            cfg.pin(f"{gate.host}:{gate.port}", self.fingerprint)  # as the client looks it up
            home = canonical_url(parse_hub_url(gate.url))
            for node in others:
                cfg.pin(hostport(parse_hub_url(node)), self.fingerprint)
            cfg.save_login(home, me, token, "user", nodes=[home, *others] if others else None)
            self.rows[row.id] = RowRun(
                row=row,
                stats=RowStats(row.id),
                gate=gate,
                fingerprint=self.fingerprint,
                tag=self.tag,
                config=login,
                admin=self.admin,
                clock=self.clock,
                rng=random.Random(f"{self.seed}:{row.id}:{share[0]}"),
                work=login / "files",
                nodes=others,
                mine=[i for i in range(row.count) if i % share[1] == share[0]],
            )
        for run in self.rows.values():
            run.file_size = self.file_sizes.get(run.row.id, 0)
            if run.row.peer and run.row.peer != "*":
                run.peer_run = self.rows[run.row.peer]
                if run.row.role in SERVICE:
                    run.peer_run.serves.add(SERVICE[run.row.role])
        gate_limit = asyncio.Semaphore(SETUP_CONCURRENCY)
        for row in self.scenario.rows:
            if row.role in OWN_ACCOUNTS:
                run = self.rows[row.id]
                # Applications sharing a messaging host use its account.
                own = [i for i in run.mine if run.host_of(i) == i]
                made = await asyncio.gather(*(self._account(run, i, gate_limit) for i in own))
                run.logins = dict(zip(own, made, strict=True))

    async def _account(self, run: RowRun, i: int, limit: asyncio.Semaphore) -> Path:
        name = run.account(i)
        password = secrets.token_urlsafe(18)
        async with limit:
            await self.admin.request("POST", "/v1/users", {"name": name, "password": password})
            self.made_users.append(name)
            login = self.work / run.row.id / f"client-{i}"
            client = await Client.login(
                run.gate.url, name, password, fingerprint=self.fingerprint, config_dir=login
            )
            await client.aclose()
        return login

    # --- the run ----------------------------------------------------------------

    async def run(self) -> Result:
        try:
            await self._setup()
            if self.ready is not None:
                await self.ready()
            result = await self._go()
            self.on_result(result)  # before the clean-up: the summary comes at once
            return result
        finally:
            await self._teardown()

    async def _go(self) -> Result:
        self.t0 = time.monotonic()
        tasks: dict[str, list[asyncio.Task[None]]] = {rid: [] for rid in self.rows}
        timers: list[asyncio.TimerHandle] = []
        loop = asyncio.get_running_loop()
        for rid, run in self.rows.items():
            role = ROLES[run.row.role]
            starts = client_starts(run.row)
            for i in run.mine:
                start = starts[i]
                if start < self.duration:
                    work = _later(start, self.clock, role(run, i))
                    tasks[rid].append(self.tasks.spawn(work, name=f"{rid}-{i}", detached=True))
                    run.stats.clients += 1
            if run.row.end is not None and run.row.end < self.duration:
                # A row that ends early; at the run's end all stop together,
                # after what was attached then is counted.
                timers.append(loop.call_at(self.t0 + run.row.end, _end_row, run, tasks[rid]))
            when = random.Random(f"{self.seed}:{rid}:faults")  # the same in every worker
            for fault in run.row.faults:
                if fault.kind == "hub_kill" and self.local is None:
                    continue  # the parent of the workers owns the hub
                for at in fault_times(fault, self.duration, when):
                    timers.append(loop.call_at(self.t0 + at, self._strike, run, fault.kind))
        sampler = self.tasks.spawn(self._sample(), name="sampler")
        with catch_interrupt(self.stopped):
            await wait_or_stop(self.stopped, self.duration - self.clock())
        try:
            for run in self.rows.values():
                if not run.draining:  # (a row that ended early counted then)
                    run.stats.attached_end = run.stats.attached
                    run.draining = True
            await self._drain()
        finally:
            for timer in timers:
                timer.cancel()
            sampler.cancel()
            every = [t for ts in tasks.values() for t in ts]
            _cancel_all(every)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.gather(*every, return_exceptions=True)
        seconds = self.clock()
        ended_at = time.time()
        alive = await self._hub_alive()
        verdicts = [
            judge(expect, run.stats, seconds, alive)
            for run in self.rows.values()
            for expect in run.row.expect
        ]
        stats = {rid: run.stats for rid, run in self.rows.items()}
        restarts = self.local.restarts if self.local else 0
        stopped = self.stopped.is_set()
        return Result(self.seed, seconds, stats, verdicts, alive, restarts, stopped, ended_at)

    async def _drain(self) -> None:
        """Let the answers to messages already sent arrive (at most
        ECHO_GRACE seconds); what is still unanswered then is lost."""
        deadline = time.monotonic() + ECHO_GRACE
        while any(r.outstanding > 0 for r in self.rows.values()):
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)

    def _strike(self, run: RowRun, kind: str) -> None:
        gate = run.gate
        if kind == "hub_kill":
            assert self.local is not None
            self._background(self.local.kill_and_restart())
        elif kind == "drop":
            gate.drop(spread=1.0)
        elif kind == "reconnect_storm":
            gate.drop()
        elif kind == "half_open":
            gate.half_open()
        elif kind == "stall":
            gate.stall()
        elif kind == "garbage":
            gate.garbage()
        elif kind == "drop_every":
            gate.drop()
        run.struck()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        self.tasks.spawn(work, name="fault", detached=True)

    async def _sample(self) -> None:
        last: dict[str, tuple[int, int]] = {rid: (0, 0) for rid in self.rows}
        meter = HubMeter(self.local)
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            rows: dict[str, dict[str, Any]] = {}
            intervals: dict[str, Any] = {}
            for rid, run in self.rows.items():
                s = run.stats
                ops, nbytes = last[rid]
                rows[rid] = {
                    "ops": s.ops,
                    "sent": s.sent,
                    "bytes": s.bytes,
                    "clients": s.clients,
                    "attached": s.attached,
                    "ops_s": s.ops - ops,
                    "bytes_s": s.bytes - nbytes,
                    "errors": sum(s.errors.values()),
                    "faults": s.faults,
                    "recovered": s.recovered,
                    **s.window.percentiles(now),
                }
                last[rid] = (s.ops, s.bytes)
                intervals[rid] = s.take_interval()
            sample = Sample(round(now, 1), rows, intervals=intervals)
            meter.read(sample)
            if int(now) % TRIM_EVERY == 0:
                give_back_memory()
            self.on_sample(sample)

    async def _hub_alive(self) -> bool:
        return await hub_alive(self.admin)

    async def _remove_what_was_made(self) -> None:
        """Disable the accounts and remove the agents this run made, a few
        requests at a time."""
        calls = [("POST", f"/v1/users/{name}/disable") for name in self.made_users]
        for run in self.rows.values():
            if run.row.role == "agent-idle":
                calls += [("DELETE", f"/v1/agents/{run.account(i)}") for i in run.mine]
        limit = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def call(method: str, path: str) -> None:
            async with limit:
                with contextlib.suppress(FreightError):
                    await self.admin.request(method, path)

        await asyncio.gather(*(call(m, p) for m, p in calls))

    async def _teardown(self) -> None:
        if hasattr(self, "admin"):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await self._remove_what_was_made()
            await self.admin.aclose()
        for gate in self.gates:
            await gate.aclose()
        await self.tasks.aclose()
        if self.local is not None:
            await self.local.stop()
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def catch_interrupt(stopped: asyncio.Event) -> Iterator[None]:
    """While the run lasts, the first Ctrl-C ends it early (the summary of
    what was measured is still printed); a second one interrupts at once."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        stopped.set()
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, first)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def wait_or_stop(stopped: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), max(0.0, seconds))


def give_back_memory() -> None:
    """Hand the memory freed since to the system (glibc's ``malloc_trim``).
    A reconnect storm's buffers, freed again, otherwise stay in the heap as
    its high-water mark: over a long run the tester's resident memory rose
    in steps with each storm and stayed up, though nothing was kept."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class HubMeter:
    """The local hub's CPU (% of one core since the last reading) and memory;
    of a cluster, its nodes' together."""

    def __init__(self, local: LocalHub | None) -> None:
        self.local = local
        self.cpu: dict[int, float] = {}  # by process: CPU seconds at the last reading

    def read(self, sample: Sample) -> None:
        if self.local is None:
            return
        cpu: dict[int, float] = {}
        rss = spent = 0.0
        for pid in self.local.pids:
            usage = proc_usage(pid)
            if usage is None:
                continue
            cpu[pid] = usage[0]
            rss += usage[1]
            if pid in self.cpu and usage[0] >= self.cpu[pid]:
                spent += usage[0] - self.cpu[pid]
        if not cpu:
            return
        sample.hub_rss = int(rss)
        if self.cpu:
            sample.hub_cpu = 100.0 * spent
        self.cpu = cpu


async def hub_alive(client: Client) -> bool:
    """Whether the hub answers its health check within ALIVE_TIMEOUT."""
    try:
        async with asyncio.timeout(ALIVE_TIMEOUT):
            await client.request("GET", "/v1/health")
        return True
    except (FreightError, TimeoutError):
        return False


async def _later(at: float, clock: Callable[[], float], work: Coroutine[Any, Any, None]) -> None:
    try:
        await asyncio.sleep(max(0.0, at - clock()))
        await work
    finally:
        work.close()  # never started when cancelled while waiting


def _end_row(run: RowRun, tasks: list[asyncio.Task[None]]) -> None:
    run.stats.attached_end = run.stats.attached
    run.draining = True
    _cancel_all(tasks)


def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel each task once (a second cancel would cut its clean-up short)."""
    for task in tasks:
        if not task.done() and not task.cancelling():
            task.cancel()
