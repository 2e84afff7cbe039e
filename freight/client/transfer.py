"""Push and pull with resume: the retry loop around the stream engines.

Each file is one stream with a stable id kept in the client's state folder,
so a dropped connection, a Ctrl-C or a crash resumes from the receiver's
last durable checkpoint when the same command runs again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..engine.streams import (
    FileSource,
    SendProgress,
    run_receiver,
    run_sender,
)
from ..errors import (
    FreightError,
    IntegrityError,
    NetworkError,
    SourceChanged,
    StorageError,
    UsageError,
    code_to_error,
)
from ..names import check_name
from ..protocol import messages as m
from ..protocol.errors import RemoteProtocolError
from ..protocol.retry import RetryPolicy, RetryState
from ..protocol.stream import StreamReceiver, StreamSender
from ..tasks import Supervisor
from ..transport.channel import ChannelClosed
from ..transport.proxy import ProxyRefused
from ..transport.shallow import shallow_writes
from .batch import Batch, BatchSender, plan, read_batch, split_small
from .config import ClientConfig, read_json, write_json_atomic
from .filesink import FileSink
from .options import (
    DISK_FULL_ERRNOS,
    QuietReporter,
    Reporter,
    TransferOptions,
    TransferResult,
)
from .pathrate import PathPacer, PathRate
from .probe import probe
from .session import HubSession, Link

# Batches of small files in flight at once. One: a second did not shorten a
# push of 10,000 small files here (11.2-11.7 s either way, 2 runs each) and
# took 60 % more CPU (the hub's two writers contend in the file system).
BATCHES_IN_FLIGHT = 1
# Errors after which trying again can help: the network, not the request.
RETRYABLE = (NetworkError, ChannelClosed, ConnectionError, TimeoutError, OSError)


class LinkHolder:
    """Keeps one link to the hub open and reconnects it after a failure."""

    def __init__(self, session: HubSession, data_path: str) -> None:
        self.session = session
        self.data_path = data_path
        self.link: Link | None = None
        # A link opened once: the hub is reachable and took our login, so
        # its streams get the whole retry policy (protocol.md section 9).
        self.reached = False

    async def get(self) -> Link:
        if self.link is None or (self.link.mux is not None and self.link.mux.closed.is_set()):
            await self.drop()
            self.link = await self.session.open_link(self.data_path)
            self.reached = True
        return self.link

    async def drop(self) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            await link.aclose()


async def with_retries(
    attempt: Callable[[], Any],
    policy: RetryPolicy,
    reporter: Reporter,
    holder: LinkHolder,
    progressed: Callable[[], bool],
    *,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Any:
    """Run ``attempt`` until it succeeds; reconnect at once after an attempt
    that made progress, otherwise wait as the retry policy says (on the
    clock, random numbers and sleep given: tests pass fakes)."""
    state = RetryState(policy)
    attempts = 0
    while True:
        attempts += 1
        try:
            return await attempt()
        except RETRYABLE as exc:
            if isinstance(exc, ProxyRefused):
                raise  # the proxy said no: asking again cannot help
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                raise StorageError(f"local disk full: {exc}") from None
            await holder.drop()
            if holder.reached:
                state.mark_started()
            now = clock()
            if progressed():
                state.succeeded()
                delay: float | None = 0.0
            else:
                delay = state.failed(now, rand())
            if delay is None:
                raise _gave_up(state, attempts, now, exc, holder.session) from None
            if state.started:
                reporter.notice(f"connection problem ({exc}); retrying in {delay:.0f} s")
            else:
                left = policy.limit(started=False) - state.elapsed(now)
                reporter.notice(
                    f"{_unreached(exc, holder.session)}; retrying in {delay:.0f} s, "
                    f"giving up in {_duration(left)}"
                )
            await sleep(delay)


def _unreached(exc: BaseException, session: HubSession) -> str:
    text = str(exc) or type(exc).__name__
    if "cannot reach the hub" in text:
        return text
    return f"cannot reach the hub at {session.url.host}:{session.url.port}: {text}"


def _gave_up(
    state: RetryState, attempts: int, now: float, exc: BaseException, session: HubSession
) -> NetworkError:
    took = _duration(state.elapsed(now))
    if not state.started:
        return NetworkError(
            f"{_unreached(exc, session)}; gave up after {attempts} attempts in {took}",
            hint="check the hub's address, that it is running and the network or proxy "
            "in between (--proxy); then run the same command again",
        )
    return NetworkError(f"giving up after {attempts} attempts in {took}: {exc}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


# --- push ------------------------------------------------------------------------


async def push_file(
    session: HubSession,
    holder: LinkHolder,
    config: ClientConfig,
    path: Path,
    name: str,
    opts: TransferOptions,
    reporter: Reporter,
    pacing: Callable[[], PathPacer] | None = None,
) -> TransferResult:
    name = check_name(name)
    path = path.resolve()
    try:
        source = FileSource(path)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    state_path = config.transfer_path("push", str(session.home), name, str(path))
    saved = read_json(state_path, None)
    restarted = False
    fresh = saved is None
    if saved and (saved.get("size") != source.size or saved.get("mtime") != source.mtime):
        reporter.notice(f"{path.name}: changed since the interrupted attempt; starting over")
        # Same stream id, marked fresh: the hub replaces the stale partial
        # instead of keeping it until the purge.
        fresh = restarted = True
    sid = saved["sid"] if saved else secrets.token_hex(16)
    write_json_atomic(
        state_path, {"sid": sid, "size": source.size, "mtime": source.mtime, "name": name}
    )
    progress = SendProgress()
    started = time.monotonic()
    reporter.start(name, source.size)
    # Progress is a checkpoint beyond where this run began; a first failure
    # that acknowledged nothing is not (it must not count the hub as reached).
    last_acked = 0
    attempts = 0
    resumed_from: int | None = None

    def progressed() -> bool:
        nonlocal last_acked
        moved = progress.acked > last_acked
        last_acked = progress.acked
        return moved

    async def attempt() -> m.EndStreamAck:
        nonlocal sid, fresh, restarted, attempts, resumed_from, source
        attempts += 1
        link = await holder.get()
        port = await link.stream_port(sid)
        sender = StreamSender(
            sid,
            name=name,
            size=source.size,
            mtime=source.mtime,
            want_level=opts.compress,
            fresh=fresh,
        )
        helpers = Supervisor(f"push {name}")
        helpers.spawn(_report(reporter, name, lambda: progress.sent), name="progress")
        pacer = pacing() if pacing is not None else None
        if pacer is not None and port.mux is not link.mux:  # pings need a connection of its own
            helpers.spawn(pacer.run(port.mux, lambda: progress.sent), name="path-pacer")
        elif pacer is not None:
            pacer.without_pings()
        try:
            with shallow_writes(port.mux.channel) if pacer is not None else nullcontext():
                return await run_sender(
                    port,
                    sender,
                    source,
                    limit=pacer.limit if pacer is not None else opts.limit,
                    stall_timeout=opts.stall_timeout,
                    progress=progress,
                    on_checkpoint=pacer.checkpoint if pacer is not None else None,
                )
        except SourceChanged:
            reporter.notice(f"{path.name}: differs from the part already sent; starting over")
            sid, fresh, restarted = secrets.token_hex(16), True, True
            # Look at the file afresh: it may have grown or shrunk meanwhile.
            source.close()
            try:
                source = FileSource(path)
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {exc.strerror}") from None
            reporter.start(name, source.size)
            write_json_atomic(
                state_path, {"sid": sid, "size": source.size, "mtime": source.mtime, "name": name}
            )
            raise ChannelClosed("restarting with a new stream") from None
        finally:
            await helpers.aclose()
            if resumed_from is None:
                resumed_from = progress.resumed_from
            # The hub knows this stream now: later attempts resume it. A new
            # stream id after a changed source needs no "fresh" either.
            fresh = False
            await link.release(port)

    try:
        ack = await with_retries(attempt, opts.retry, reporter, holder, progressed)
    finally:
        source.close()
    if not ack.verified:
        state_path.unlink(missing_ok=True)
        raise IntegrityError(f"the hub's digest of {name} does not match; run the push again")
    state_path.unlink(missing_ok=True)
    result = TransferResult(
        name=name,
        path=str(path),
        size=source.size,
        digest=ack.digest,
        seconds=time.monotonic() - started,
        resumed_from=resumed_from or 0,
        restarted=restarted,
        attempts=attempts,
        wire_bytes=progress.wire_bytes,
    )
    reporter.update(name, source.size)
    reporter.finish(name, result)
    return result


async def _report(reporter: Reporter, name: str, done: Callable[[], int]) -> None:
    while True:
        reporter.update(name, done())
        await asyncio.sleep(0.2)


# --- pull ------------------------------------------------------------------------


async def pull_file(
    session: HubSession,
    holder: LinkHolder,
    config: ClientConfig,
    name: str,
    dest: Path,
    opts: TransferOptions,
    reporter: Reporter,
) -> TransferResult:
    name = check_name(name)
    dest = dest.resolve()
    if dest.is_dir():
        dest = dest / Path(name).name
    state_path = config.transfer_path("pull", str(session.home), name, str(dest))
    sid = "p" + state_path.stem.split("-", 1)[1]
    started = time.monotonic()
    sink = FileSink(dest, state_path, opts)
    attempts = 0
    last_ckpt = int((read_json(state_path, {}) or {}).get("checkpoint", 0))
    resumed_from: int | None = None
    announced = False

    def progressed() -> bool:
        nonlocal last_ckpt
        saved = read_json(state_path, {}) or {}
        ckpt = int(saved.get("checkpoint", 0))
        moved = ckpt > last_ckpt
        last_ckpt = ckpt
        return moved

    async def attempt() -> m.EndStreamAck:
        nonlocal attempts, resumed_from, announced
        attempts += 1
        link = await holder.get()
        port = await link.stream_port(sid)
        helpers = Supervisor(f"pull {name}")
        try:
            await port.send(m.Pull(sid=sid, name=name))
            async with asyncio.timeout(opts.stall_timeout):
                first, _ = await port.recv()
            if isinstance(first, m.Abort | m.Error):
                raise code_to_error(first.code, first.message)
            if not isinstance(first, m.StartStream):
                raise RemoteProtocolError(f"expected start, got {type(first).__name__}")
            if not announced:
                reporter.start(name, first.size)
                announced = True
            receiver = StreamReceiver(sid)
            helpers.spawn(_report(reporter, name, lambda: receiver.received), name="progress")
            try:
                return await run_receiver(
                    port, receiver, sink, first, idle_timeout=opts.stall_timeout
                )
            except SourceChanged:
                reporter.notice(
                    f"{name}: changed on the hub since the interrupted attempt; starting over"
                )
                raise ChannelClosed("restarting") from None
        finally:
            await helpers.aclose()
            # After a finished stream the sink is closed; its resume point holds.
            if resumed_from is None and (sink.fd >= 0 or sink.resumed_from):
                resumed_from = sink.resumed_from
            sink.close()
            await link.release(port)

    ack = await with_retries(attempt, opts.retry, reporter, holder, progressed)
    if not ack.verified:
        raise IntegrityError(f"{name} arrived with a different digest; run the pull again")
    result = TransferResult(
        name=name,
        path=str(dest),
        size=ack.total,
        digest=ack.digest,
        seconds=time.monotonic() - started,
        resumed_from=resumed_from or 0,
        attempts=attempts,
    )
    reporter.update(name, ack.total)
    reporter.finish(name, result)
    return result


# --- many files -------------------------------------------------------------------


def expand_sources(paths: list[Path], as_name: str | None) -> list[tuple[Path, str]]:
    """(file, remote name) pairs; folders are walked recursively."""
    out: list[tuple[Path, str]] = []
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        base = as_name if as_name and len(paths) == 1 else p.resolve().name
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    full = Path(root) / f
                    rel = full.relative_to(p).as_posix()
                    out.append((full, f"{base}/{rel}"))
        else:
            out.append((p, base))
    if as_name and len(paths) > 1:
        raise UsageError("--as works with one path only")
    return out


async def push_many(
    session: HubSession,
    config: ClientConfig,
    items: list[tuple[Path, str]],
    opts: TransferOptions,
    reporter: Reporter,
) -> list[TransferResult]:
    """Push files: small ones in batches (when there are several), the
    others with up to ``opts.parallel`` streams at once."""
    small, large = split_small(items) if len(items) > 1 else ([], items)
    pacing = None
    if opts.percent is not None or opts.priority == "background":
        opts, pacing = await path_pacing(
            session, opts, streams=max(1, min(opts.parallel, len(large)))
        )
    groups = iter(list(plan(small)))
    pending = iter(large)  # the workers take the next item in turn
    sender = BatchSender(opts, reporter)
    results: list[TransferResult] = []

    async def batch_worker() -> None:
        holder = LinkHolder(session, opts.data_path)
        try:
            for group in groups:
                batch = await asyncio.to_thread(read_batch, group)
                results.extend(await _push_batch(sender, holder, batch, opts, reporter))
                for path, name in batch.grown:  # grew past the small limit meanwhile
                    results.append(
                        await push_file(session, holder, config, path, name, opts, reporter)
                    )
        finally:
            await holder.drop()

    async def worker() -> None:
        holder = LinkHolder(session, opts.data_path)
        try:
            for path, name in pending:
                results.append(
                    await push_file(session, holder, config, path, name, opts, reporter, pacing)
                )
        finally:
            await holder.drop()

    try:
        async with asyncio.TaskGroup() as tg:
            if small:
                for _ in range(BATCHES_IN_FLIGHT):
                    tg.create_task(batch_worker())
            for _ in range(max(1, min(opts.parallel, len(large)))):
                tg.create_task(worker())
    except* FreightError as group:
        raise group.exceptions[0] from None
    return results


async def path_pacing(
    session: HubSession, opts: TransferOptions, *, streams: int
) -> tuple[TransferOptions, Callable[[], PathPacer]]:
    """Measure the path up to the hub once for a push with ``--limit NN%``
    or ``--priority background``; returns the options for batches of small
    files (a fixed share) and a maker of each stream's pacer (the share
    split between ``streams`` streams at once)."""
    found = await probe(session, direction="up")
    assert found.up is not None
    path = PathRate(found.up.available, found.rtt, time.monotonic())
    percent = opts.percent / streams if opts.percent is not None else None
    background = opts.priority == "background"
    if percent is not None:
        opts = dataclasses.replace(opts, limit=max(1, int(found.up.available * percent / 100)))

    async def reprobe() -> float:
        again = await probe(session, direction="up")
        assert again.up is not None
        return again.up.available

    def pacer() -> PathPacer:
        return PathPacer(
            path,
            percent=percent,
            background=background,
            capacity=found.up.capacity if found.up else 0.0,
            reprobe=reprobe,
        )

    return opts, pacer


async def _push_batch(
    sender: BatchSender,
    holder: LinkHolder,
    batch: Batch,
    opts: TransferOptions,
    reporter: Reporter,
) -> list[TransferResult]:
    """One batch, until the hub has acknowledged all of it. A batch whose
    attempt fails is sent again as two halves (down to single files), so
    a path that cuts connections short still lets every batch through;
    an acknowledged part counts as progress (retried at once)."""
    if not batch.entries:
        return []
    started = time.monotonic()
    label = f"{len(batch.entries)} files from {batch.entries[0].name}"
    reporter.start(label, batch.size)
    todo = deque([batch])
    done: list[Batch] = []
    attempts = 0
    acked = 0

    async def attempt() -> None:
        nonlocal attempts, acked
        attempts += 1
        while todo:
            part = todo[0]
            try:
                await sender.send(holder, part)
            except RETRYABLE:
                if len(part.entries) > 1:
                    todo.popleft()
                    todo.extendleft(reversed(part.halves()))
                raise
            done.append(todo.popleft())
            acked += part.size
            reporter.update(label, acked)

    last = 0

    def progressed() -> bool:
        nonlocal last
        moved, last = acked > last, acked
        return moved

    await with_retries(attempt, opts.retry, reporter, holder, progressed)
    seconds = time.monotonic() - started
    out = [r for part in done for r in sender.results(part, seconds, attempts)]
    reporter.finish(label, out[-1])
    return out


async def pull_one(
    session: HubSession,
    config: ClientConfig,
    name: str,
    dest: Path,
    opts: TransferOptions,
    reporter: Reporter,
) -> TransferResult:
    holder = LinkHolder(session, opts.data_path)
    try:
        return await pull_file(session, holder, config, name, dest, opts, reporter)
    finally:
        await holder.drop()


__all__ = [
    "FreightError",
    "QuietReporter",
    "TransferOptions",
    "TransferResult",
    "expand_sources",
    "pull_one",
    "push_many",
]
