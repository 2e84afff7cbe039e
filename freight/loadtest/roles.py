"""What one simulated client of each role does, as a real client of the SDK
over real TLS through its row's fault gate (:mod:`.gate`).

Each client runs until cancelled at the end of its row; a failure counts
as an error of its kind and the client starts again after a short,
jittered back-off, as a real program would. Operations due while a client
was away are counted from when they were due (the open model).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import __version__
from ..agent.files import APP
from ..client.api import Client
from ..client.session import HubSession, open_channel
from ..errors import FreightError
from ..protocol import messages as m
from ..protocol.agents import login_message
from .gate import Gate
from .scenario import Row
from .schedule import Pacer, draw_size, interval, loops
from .stats import RowStats

BACKOFF_FIRST: Final = 0.5  # seconds before a failed client starts again
BACKOFF_MAX: Final = 5.0
ECHO_GRACE: Final = 2.0  # seconds an echo may still arrive after the end
BLOCK: Final = 1 << 20  # random bytes that payloads are cut from
MAX_OUTSTANDING: Final = 10_000  # messages one connect client keeps waiting for
MAX_GARBAGE: Final = 64  # garbage connections one client keeps open at once
GARBAGE_HOLD: Final = 30.0  # seconds the hub may keep a garbage connection open


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
    peers: list[tuple[str, Path]] = field(default_factory=list)  # the peer row's logins
    logins: list[tuple[str, Path]] = field(default_factory=list)  # (account, login) per client
    file_size: int = 0  # for file:PATH sizes
    pending: list[int] = field(default_factory=list)  # faults each client has not recovered from
    draining: bool = False  # the run is ending: send nothing new
    outstanding: int = 0  # messages sent and not yet answered

    def __post_init__(self) -> None:
        self.pending = [0] * self.row.count
        if not self.block:
            self.block = os.urandom(BLOCK)

    def payload(self, size: int, seq: int) -> bytes:
        head = seq.to_bytes(8, "big")
        body = self.block * (size // BLOCK + 1) if size > BLOCK else self.block
        start = self.rng.randrange(0, BLOCK)
        return (head + body[start:] + body[:start])[: max(size, 8)]

    def ok(self, i: int) -> None:
        """Client ``i`` did something that works: it got over its faults."""
        if self.pending[i]:
            self.stats.recovered += self.pending[i]
            self.pending[i] = 0

    def struck(self) -> None:
        """A fault hit the row: every client it reached has one to get over."""
        for i in range(self.row.count):
            self.pending[i] += 1
        self.stats.faults += self.row.count

    def transport(self) -> dict[str, str]:
        t = self.row.transport
        if t in ("tls", "direct"):
            return {"transport": "auto", "data_path": t}
        return {"transport": t, "data_path": "auto"}


def kind_of(exc: BaseException) -> str:
    if isinstance(exc, FreightError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def forever(run: RowRun, i: int, attempt: Callable[[], Awaitable[None]]) -> None:
    """Run ``attempt`` again after each failure, with a jittered back-off."""
    delay = BACKOFF_FIRST
    while True:
        started = time.monotonic()
        try:
            await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            run.stats.error(kind_of(exc))
        if time.monotonic() - started > 10:
            delay = BACKOFF_FIRST
        await asyncio.sleep(run.rng.uniform(delay / 2, delay))
        delay = min(BACKOFF_MAX, delay * 2)


# --- listen: accept connections and echo every message --------------------


async def listen_client(run: RowRun, i: int) -> None:
    _, login = run.logins[i]
    client = Client(run.gate.url, config_dir=login, **run.transport())
    peer = "*"

    async def echo(conn: Any) -> None:
        with contextlib.suppress(FreightError, OSError):
            async for data in conn:
                await conn.send(data)
                run.stats.ops += 1
                run.stats.bytes += len(data)
                run.ok(i)

    async def attempt() -> None:
        echoes: set[asyncio.Task[None]] = set()
        async with client.listen(run.row.app, peer=peer) as listener:
            run.stats.attach()
            try:
                async for conn in listener:
                    task = asyncio.create_task(echo(conn))
                    echoes.add(task)
                    task.add_done_callback(echoes.discard)
            finally:
                run.stats.detach()
                for task in echoes:
                    task.cancel()

    try:
        await forever(run, i, attempt)
    finally:
        await client.aclose()


# --- connect: messages of the row's size, echoed back --------------------


async def connect_client(run: RowRun, i: int) -> None:
    account, _ = run.peers[i % len(run.peers)]
    client = Client(run.gate.url, config_dir=run.logins[i][1], **run.transport())
    every = interval(run.row.rate, run.row.count)
    pacer = Pacer.for_client(run.clock(), every, run.rng) if every else None
    assert run.row.size is not None
    size = run.row.size
    seq = 0

    async def attempt() -> None:
        nonlocal seq
        waiting: deque[tuple[float, float, int]] = deque()  # (due, sent, bytes)
        window = asyncio.Semaphore(loops(run.row.rate)) if pacer is None else None

        async def receive(conn: Any) -> None:
            async for _ in conn:
                due, sent, n = waiting.popleft()
                run.outstanding -= 1
                run.stats.record(due, sent, run.clock(), n)
                run.ok(i)
                if window is not None:
                    window.release()

        async def send(conn: Any) -> None:
            nonlocal seq
            while not run.draining:
                if pacer is not None:
                    due = pacer.next_due()
                    await asyncio.sleep(max(0.0, due - run.clock()))
                else:
                    assert window is not None
                    await window.acquire()
                    due = run.clock()
                if run.draining:
                    break
                if len(waiting) >= MAX_OUTSTANDING:
                    run.stats.lost += 1  # this far behind, the message is given up
                    continue
                n = draw_size(size, run.rng, run.file_size)
                seq += 1
                waiting.append((due, run.clock(), n))
                run.outstanding += 1
                await conn.send(run.payload(n, seq))
            await asyncio.Event().wait()  # the answers still come in

        async with client.connect(account, run.row.app, timeout=30) as conn:
            run.stats.attach()
            tasks = [asyncio.create_task(receive(conn)), asyncio.create_task(send(conn))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a failure is this attempt's
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                run.stats.detach()
                run.stats.lost += len(waiting)
                run.outstanding -= len(waiting)

    try:
        await forever(run, i, attempt)
    finally:
        await client.aclose()


# --- push: files of the row's sizes, checked by their digest --------------


async def push_client(run: RowRun, i: int) -> None:
    client = Client(run.gate.url, config_dir=run.config, **run.transport())
    every = interval(run.row.rate, run.row.count)
    pacer = Pacer.for_client(run.clock(), every, run.rng) if every else None
    assert run.row.size is not None
    work = Path(tempfile.mkdtemp(prefix=f"freight-loadtest-{run.row.id}-"))
    k = 0

    async def one(due: float) -> None:
        nonlocal k
        k += 1
        n = draw_size(run.row.size, run.rng, run.file_size)  # type: ignore[arg-type]
        path = work / f"{i}-{k}"
        digest = await asyncio.to_thread(_write, path, run, n, k)
        name = f"{run.tag}/{run.row.id}/{i}-{k}"
        start = run.clock()
        try:
            results = await client.push(path, as_name=name)
        finally:
            path.unlink(missing_ok=True)
        run.stats.record(due, start, run.clock(), n)
        if results and results[0].digest == digest:
            run.stats.verified += 1
        else:
            run.stats.mismatched += 1
        run.ok(i)
        with contextlib.suppress(FreightError):
            await client.rm(name)

    async def attempt() -> None:
        while True:
            due = run.clock()
            if pacer is not None:
                due = pacer.next_due()
                await asyncio.sleep(max(0.0, due - run.clock()))
            await one(due)

    try:
        jobs = [forever(run, i, attempt) for _ in range(loops(run.row.rate))]
        await asyncio.gather(*jobs)
    finally:
        await client.aclose()
        for leftover in work.iterdir():
            leftover.unlink(missing_ok=True)
        work.rmdir()


def _write(path: Path, run: RowRun, size: int, seq: int) -> str:
    """A file of ``size`` bytes unlike any other of the run; its BLAKE3."""
    h = blake3.blake3()
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


# --- garbage: bytes that are no protocol at all ----------------------------


async def garbage_client(run: RowRun, i: int) -> None:
    """Open connections on the row's schedule, write garbage into each (raw
    half the time, inside TLS the other half), and time how soon the hub
    ends it: the hub gives a stranger 10 s to say something sensible. One
    it keeps open for 30 s is an error (``kept_open``)."""
    every = interval(run.row.rate, run.row.count) or 1.0
    pacer = Pacer.for_client(run.clock(), every, run.rng)
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    room = asyncio.Semaphore(MAX_GARBAGE)
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        start = run.clock()
        inside = run.rng.random() < 0.5
        try:
            async with asyncio.timeout(GARBAGE_HOLD):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", run.gate.port, ssl=tls if inside else None
                )
                try:
                    writer.write(os.urandom(run.rng.randrange(1, 4096)))
                    await writer.drain()
                    while await reader.read(65536):
                        pass
                finally:
                    writer.transport.abort()
        except TimeoutError:
            run.stats.error("kept_open")
            return
        except (OSError, ssl.SSLError, ConnectionError):
            pass  # ended by the hub: what it should do
        finally:
            room.release()
        run.stats.record(due, start, run.clock())
        run.ok(i)

    try:
        while True:
            due = pacer.next_due()
            await asyncio.sleep(max(0.0, due - run.clock()))
            await room.acquire()
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()


# --- agent-idle: an enrolled agent that stays attached --------------------


async def agent_client(run: RowRun, i: int) -> None:
    name = f"{run.tag}-{run.row.id}-{i}"
    key = Ed25519PrivateKey.generate()
    anon = HubSession(run.gate.url, fingerprint=run.fingerprint)
    try:
        token = await run.admin.request("POST", "/v1/agents/tokens", {"name": name, "ttl": 3600})
        pub = key.public_key().public_bytes_raw().hex()
        await anon.request("POST", "/v1/agents/enroll", {"token": token["token"], "key": pub})
    except FreightError as exc:
        run.stats.error(kind_of(exc))
        await anon.aclose()
        return

    async def attempt() -> None:
        nonce = (await anon.request("POST", "/v1/agents/challenge", {"name": name}))["challenge"]
        sig = key.sign(login_message(name, nonce, run.fingerprint)).hex()
        body = await anon.request(
            "POST", "/v1/agents/login", {"name": name, "challenge": nonce, "signature": sig}
        )
        session = HubSession(
            run.gate.url, fingerprint=run.fingerprint, token=str(body["token"]), **_t(run)
        )
        try:
            chan, _ = await open_channel(session, hello=f"freight-agent/{__version__}")
            try:
                rid = secrets.token_hex(8)
                await chan.send(m.Listen(rid=rid, app=APP))
                msg, _ = await asyncio.wait_for(chan.recv(), 30)
                if not (isinstance(msg, m.Done) and msg.rid == rid):
                    raise FreightError(f"the hub answered the agent's listen with {msg!r}")
                run.stats.attach()
                run.stats.ops += 1
                run.ok(i)
                try:
                    while True:
                        await chan.recv()
                finally:
                    run.stats.detach()
            finally:
                await chan.aclose()
        finally:
            await session.aclose()

    try:
        await forever(run, i, attempt)
    finally:
        await anon.aclose()


def _t(run: RowRun) -> dict[str, str]:
    t = run.transport()["transport"]
    return {"transport": t}


ROLES: Final[dict[str, Callable[[RowRun, int], Coroutine[Any, Any, None]]]] = {
    "agent-idle": agent_client,
    "listen": listen_client,
    "connect": connect_client,
    "push": push_client,
    "garbage": garbage_client,
}
