"""What every simulated client shares: its row's run (:class:`RowRun`),
the error kinds it counts, the restart loop, and test files unlike any
other. The roles themselves are in :mod:`.roles_relay`, :mod:`.roles_files`
and :mod:`.roles_other`; :mod:`.roles` names them."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import blake3

from ..client.api import Client
from ..errors import FreightError, RateLimited
from ..tasks import Supervisor
from .gate import Gate
from .scenario import Row
from .schedule import Pacer, interval, loops
from .stats import RowStats

BACKOFF_FIRST: Final = 0.5  # seconds before a failed client starts again
BACKOFF_MAX: Final = 5.0
ECHO_GRACE: Final = 2.0  # seconds an echo may still arrive after the end
BLOCK: Final = 1 << 20  # random bytes that payloads are cut from
MAX_OUTSTANDING: Final = 10_000  # messages one connect client keeps waiting for
MAX_INFLIGHT: Final = 256  # operations one open-model client has in flight at once
MAX_CODES: Final = 1024  # send offers waiting for a receiver, per receive row


@dataclass
class RowRun:
    """One row's share of the run, as its clients see it."""

    row: Row
    stats: RowStats
    gate: Gate
    fingerprint: str  # the hub's certificate
    tag: str  # this run's name prefix on the hub
    config: Path  # the row's login (a copy of the tester's, for the gate)
    admin: Client  # the tester's own login, straight to the hub
    clock: Callable[[], float]  # seconds since the run started
    rng: random.Random
    block: bytes = b""
    work: Path = Path()  # the row's own temporary folder
    peer_run: RowRun | None = None  # the row its peer column names
    # The clients of this process (all, or one worker's share) by number.
    mine: list[int] = field(default_factory=list)
    logins: dict[int, Path] = field(default_factory=dict)  # client -> its own login
    file_size: int = 0  # for file:PATH sizes
    nodes: list[str] = field(default_factory=list)  # a cluster's other nodes, reached directly
    pending: list[int] = field(default_factory=list)  # faults each client has not recovered from
    draining: bool = False  # the run is ending: send nothing new
    outstanding: int = 0  # messages sent and not yet answered
    serves: set[str] = field(default_factory=set)  # listen rows: relay, msg, tunnel
    # receive rows: what send rows offer (code, BLAKE3, the sending row)
    codes: asyncio.Queue[tuple[str, str, RowStats]] = field(
        default_factory=lambda: asyncio.Queue(MAX_CODES)
    )

    def __post_init__(self) -> None:
        self.pending = [0] * self.row.count
        if not self.mine:
            self.mine = list(range(self.row.count))
        if not self.block:
            self.block = os.urandom(BLOCK)

    def payload(self, size: int, seq: int) -> bytes:
        """``size`` bytes (at least 8): the sequence number, then the random
        block from a random offset, wrapping round. Only what is sent is
        copied: a message of 128 B costs 128 B, not the 1 MiB block."""
        out = bytearray(seq.to_bytes(8, "big"))
        need = max(size, 8) - 8
        start = self.rng.randrange(0, BLOCK)
        view = memoryview(self.block)
        while need:
            take = min(need, BLOCK - start)
            out += view[start : start + take]
            need -= take
            start = 0
        return bytes(out)

    def ok(self, i: int) -> None:
        """Client ``i`` did something that works: it got over its faults."""
        if self.pending[i]:
            self.stats.recovered += self.pending[i]
            self.pending[i] = 0

    def struck(self) -> None:
        """A fault hit the row: every client it reached has one to get over."""
        for i in self.mine:
            self.pending[i] += 1
        self.stats.faults += len(self.mine)

    def transport(self) -> dict[str, str]:
        t = self.row.transport
        if t in ("tls", "direct"):
            return {"transport": "auto", "data_path": t}
        return {"transport": t, "data_path": "auto"}

    def account(self, i: int) -> str:
        """The name of client ``i``'s own account (or agent) on the hub."""
        return f"{self.tag}-{self.row.id}-{i}"

    def peer_account(self, i: int) -> str:
        """The account client ``i`` talks to: client ``i mod M`` of its peer
        row (perhaps in another worker: the name says which)."""
        assert self.peer_run is not None
        return self.peer_run.account(i % self.peer_run.row.count)

    def host_of(self, i: int) -> int:
        """The client whose process is client ``i``'s messaging host: client
        ``i mod hosts`` (each its own without a ``hosts`` column). The first
        ``hosts`` clients start first, so the hosts are up before the rest."""
        return i % (self.row.hosts or self.row.count)

    def login(self, i: int) -> Path:
        """Client ``i``'s login: its own account's, or the row's shared one."""
        return self.logins.get(i, self.config)


def kind_of(exc: BaseException) -> str:
    if isinstance(exc, FreightError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def waited_as_told(run: RowRun, exc: Exception) -> bool:
    """A hub that said when to try again (``rate_limited`` with
    ``Retry-After``): wait that long, no more, no less; True if waited."""
    if not isinstance(exc, RateLimited) or exc.retry_after <= 0:
        return False
    await asyncio.sleep(exc.retry_after * run.rng.uniform(1.0, 1.5))
    return True


async def forever(run: RowRun, i: int, attempt: Callable[[], Awaitable[None]]) -> None:
    """Run ``attempt`` again after each failure (or end), with a jittered
    back-off that starts over after 10 s of working."""
    delay = BACKOFF_FIRST
    while True:
        started = time.monotonic()
        try:
            await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            run.stats.error(kind_of(exc))
            if await waited_as_told(run, exc):
                continue
        if time.monotonic() - started > 10:
            delay = BACKOFF_FIRST
        await asyncio.sleep(run.rng.uniform(delay / 2, delay))
        delay = min(BACKOFF_MAX, delay * 2)


async def retried(run: RowRun, work: Callable[[], Awaitable[None]]) -> None:
    """``work()`` until it succeeds, each failure counted, with back-off."""
    delay = BACKOFF_FIRST
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            run.stats.error(kind_of(exc))
            if await waited_as_told(run, exc):
                continue
        await asyncio.sleep(run.rng.uniform(delay / 2, delay))
        delay = min(BACKOFF_MAX, delay * 2)


def write_file(path: Path, run: RowRun, size: int, seq: int) -> str:
    """A file of ``size`` bytes unlike any other of the run (or, for a
    ``file:PATH`` size, a copy of that file); its BLAKE3."""
    h = blake3.blake3()
    if run.row.size is not None and run.row.size.kind == "file":
        with open(run.row.size.file, "rb") as src, path.open("wb") as f:
            while block := src.read(BLOCK):
                f.write(block)
                h.update(block)
        return h.hexdigest()
    with path.open("wb") as f:
        head = f"{run.tag}/{run.row.id}/{seq}/".encode()
        left = size
        offset = seq % BLOCK
        while left > 0:
            chunk = (head + run.block[offset:] + run.block[:offset])[: min(left, BLOCK)]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            head = b""
    return h.hexdigest()


async def issue(run: RowRun, i: int, op: Callable[[float], Awaitable[None]]) -> None:
    """Run ``op(due)`` on the row's schedule until the run drains.

    Open model (``N/s``, ``total:N/s``): each operation is its own task,
    started at its due time whatever the earlier ones are doing, at most
    :data:`MAX_INFLIGHT` at once (an operation that waits for room has
    that wait in its latency). Closed model (``concurrency:N``, or no
    rate): N loops, each starting its next operation when the last ended.
    A failed operation counts as an error of its kind; a closed loop then
    backs off before its next one."""

    async def guarded(due: float) -> bool:
        try:
            await op(due)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            run.stats.error(kind_of(exc))
            return False

    every = interval(run.row.rate, run.row.count)
    if every is None:

        async def loop() -> None:
            delay = BACKOFF_FIRST
            while not run.draining:
                if await guarded(run.clock()):
                    delay = BACKOFF_FIRST
                else:
                    await asyncio.sleep(run.rng.uniform(delay / 2, delay))
                    delay = min(BACKOFF_MAX, delay * 2)

        await asyncio.gather(*(loop() for _ in range(loops(run.row.rate))))
        return
    pacer = Pacer.for_client(run.clock(), every, run.rng)
    room = asyncio.Semaphore(MAX_INFLIGHT)
    idle = asyncio.Event()
    idle.set()
    in_flight = 0

    async def one(due: float) -> None:
        nonlocal in_flight
        try:
            await guarded(due)
        finally:
            room.release()
            in_flight -= 1
            if in_flight == 0:
                idle.set()

    async with Supervisor(f"{run.row.id}-{i}") as ops:
        while not run.draining:
            due = pacer.next_due()
            await asyncio.sleep(max(0.0, due - run.clock()))
            await room.acquire()
            if run.draining:
                room.release()
                break
            in_flight += 1
            idle.clear()
            ops.spawn(one(due), name="op", detached=True)
        await idle.wait()  # what was started finishes (the run's stop cuts it short)


def digest_of(path: Path) -> str:
    """The BLAKE3 of a file, as the hub and the transfers compute it."""
    h = blake3.blake3()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()
