"""Push and pull with resume: the retry loop around the stream engines.

Each file is one stream with a stable id kept in the client's state folder,
so a dropped connection, a Ctrl-C or a crash resumes from the receiver's
last durable checkpoint when the same command runs again.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3

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
from ..protocol.stream import StreamReceiver, StreamRequested, StreamSender
from ..transport.channel import ChannelClosed
from ..transport.proxy import ProxyRefused
from ..transport.streaming import (
    Acceptance,
    FileSource,
    SendProgress,
    hash_prefix,
    run_receiver,
    run_sender,
)
from .config import ClientConfig, read_json, write_json_atomic
from .safefs import DEFAULT_FILE_MODE, FileExists, Tree, same_file
from .session import HubSession, Link

# Errors after which trying again can help: the network, not the request.
RETRYABLE = (NetworkError, ChannelClosed, ConnectionError, TimeoutError, OSError)
_DISK_FULL_ERRNOS = (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT


@dataclass
class TransferOptions:
    limit: int = 0
    compress: str = m.LEVEL_NONE
    data_path: str = "auto"
    parallel: int = 1
    stall_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Pulls by an agent: the destination is reached from this root without
    # following links, and an existing file is kept unless keep_existing
    # is off (the admin asked to replace it and the agent allows that).
    root: Path | None = None
    keep_existing: bool = False


def retry_policy_from_env() -> RetryPolicy:
    """Defaults from DESIGN.md; ``FREIGHT_RETRY_INTERVAL``, ``_STEADY`` and
    ``_GIVE_UP`` (seconds) override them, for the CLI and the agent alike."""

    def num(name: str, default: float) -> float:
        try:
            return float(os.environ.get(name, default))
        except ValueError:
            raise UsageError(f"{name} must be a number of seconds") from None

    return RetryPolicy(
        interval=num("FREIGHT_RETRY_INTERVAL", 30.0),
        steady_for=num("FREIGHT_RETRY_STEADY", 600.0),
        give_up_after=num("FREIGHT_RETRY_GIVE_UP", 7200.0),
    )


def stall_timeout_from_env() -> float:
    try:
        return float(os.environ.get("FREIGHT_STALL_TIMEOUT", "60"))
    except ValueError:
        raise UsageError("FREIGHT_STALL_TIMEOUT must be a number of seconds") from None


def options_from_env() -> TransferOptions:
    """Default transfer options with the retry and stall settings of the
    environment (what the agent uses for its uploads and downloads)."""
    return TransferOptions(stall_timeout=stall_timeout_from_env(), retry=retry_policy_from_env())


@dataclass
class TransferResult:
    name: str
    path: str
    size: int
    digest: str
    seconds: float
    resumed_from: int = 0
    restarted: bool = False
    attempts: int = 1
    wire_bytes: int = 0
    skipped: bool = False  # already in place with the same bytes (folder pulls)

    def as_dict(self) -> dict[str, Any]:
        rate = self.size / self.seconds if self.seconds > 0 else 0.0
        return {**self.__dict__, "bytes_per_second": round(rate)}


class Reporter(Protocol):
    def start(self, name: str, size: int) -> None: ...

    def update(self, name: str, done: int) -> None: ...

    def finish(self, name: str, result: TransferResult) -> None: ...

    def notice(self, text: str) -> None: ...


class QuietReporter:
    def start(self, name: str, size: int) -> None:
        pass

    def update(self, name: str, done: int) -> None:
        pass

    def finish(self, name: str, result: TransferResult) -> None:
        pass

    def notice(self, text: str) -> None:
        pass


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
) -> Any:
    """Run ``attempt`` until it succeeds; reconnect at once after an attempt
    that made progress, otherwise wait as the retry policy says."""
    state = RetryState(policy)
    attempts = 0
    while True:
        attempts += 1
        try:
            return await attempt()
        except RETRYABLE as exc:
            if isinstance(exc, ProxyRefused):
                raise  # the proxy said no: asking again cannot help
            if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
                raise StorageError(f"local disk full: {exc}") from None
            await holder.drop()
            if holder.reached:
                state.mark_started()
            now = time.monotonic()
            if progressed():
                state.succeeded()
                delay: float | None = 0.0
            else:
                delay = state.failed(now, random.random())
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
            await asyncio.sleep(delay)


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
) -> TransferResult:
    name = check_name(name)
    path = path.resolve()
    try:
        source = FileSource(path)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    state_path = config.transfer_path("push", str(session.url), name, str(path))
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
        ticker = asyncio.create_task(_report(reporter, name, lambda: progress.sent))
        try:
            return await run_sender(
                port,
                sender,
                source,
                limit=opts.limit,
                stall_timeout=opts.stall_timeout,
                progress=progress,
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
            ticker.cancel()
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


class FileSink:
    """Receives a pulled stream into ``DEST.freight-partial`` (``0600``
    until finished, opened without following a link that stands there);
    the checkpoint is durable when the partial is fsynced and the state
    file renamed."""

    def __init__(self, dest: Path, state_path: Path, opts: TransferOptions) -> None:
        self.dest = dest
        self.partial = dest.with_name(dest.name + ".freight-partial")
        self.state_path = state_path
        self.opts = opts
        self.fd = -1
        self.folder: Tree | None = None
        self.size = 0
        self.mtime = 0.0
        self.hasher = blake3.blake3()
        self.resumed_from = 0

    def _open_folder(self) -> Tree:
        root = self.opts.root
        if root is None:
            return Tree.open(self.dest.parent, create=True)
        return Tree.beneath(root, self.dest.parent.relative_to(root).parts, create=True)

    async def open(self, req: StreamRequested) -> Acceptance:
        saved = read_json(self.state_path, None)
        self.size, self.mtime = req.size, req.mtime
        try:
            folder = self.folder = self._open_folder()
            name, part = (self.dest.name,), (self.partial.name,)
            existing = folder.lstat(name)
            if (
                self.opts.keep_existing
                and existing is not None
                and not same_file(existing, req.size, req.mtime)
            ):
                raise FileExists(f"{self.dest} already exists")
            held = folder.lstat(part)
            checkpoint = 0
            if (
                saved
                and saved.get("size") == req.size
                and not req.fresh
                and held is not None
                and held.st_size >= int(saved.get("checkpoint", 0))
            ):
                checkpoint = int(saved.get("checkpoint", 0))
                self.fd = folder.open_write(part)
                os.ftruncate(self.fd, checkpoint)
                self.hasher = await asyncio.to_thread(hash_prefix, self.fd, checkpoint)
            else:
                self.fd = folder.open_write(part, truncate=True)
                self._save(0)
        except OSError as exc:
            raise StorageError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        self.resumed_from = checkpoint
        return Acceptance(
            checkpoint=checkpoint,
            prefix_digest=self.hasher.hexdigest() if checkpoint else "",
            level=self.opts.compress,
            rate=self.opts.limit,
        )

    def _save(self, checkpoint: int) -> None:
        write_json_atomic(self.state_path, {"size": self.size, "checkpoint": checkpoint})

    def write(self, offset: int, data: bytes) -> None:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                raise StorageError(f"local disk full writing {self.partial}") from None
            raise StorageError(f"cannot write {self.partial}: {exc.strerror}") from None
        self.hasher.update(data)

    async def durable(self, offset: int) -> tuple[int, str]:
        try:
            await asyncio.to_thread(os.fsync, self.fd)
            await asyncio.to_thread(self._save, offset)
        except OSError as exc:
            raise StorageError(f"cannot make {self.partial} durable: {exc.strerror}") from None
        return self.opts.limit, self.opts.compress

    async def finish(self, total: int, digest: str) -> tuple[bool, str]:
        await asyncio.to_thread(os.fsync, self.fd)
        actual = self.hasher.hexdigest()
        if actual != digest:
            self.discard()
            return False, actual
        assert self.folder is not None
        fd, self.fd = self.fd, -1
        self.folder.publish(
            fd, (self.partial.name,), self.dest.name, DEFAULT_FILE_MODE, self.mtime or None
        )
        self.state_path.unlink(missing_ok=True)
        return True, actual

    async def aborted(self, code: str, message: str) -> None:
        if code in ("source_changed", "storage", "disk_full"):
            self.discard()

    def discard(self) -> None:
        if self.folder is not None:
            self.folder.unlink((self.partial.name,))
        self.close()
        self.state_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.folder is not None:
            self.folder.close()
            self.folder = None


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
    state_path = config.transfer_path("pull", str(session.url), name, str(dest))
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
        ticker: asyncio.Task[None] | None = None
        try:
            await port.send(m.Pull(sid=sid, name=name))
            first, _ = await asyncio.wait_for(port.recv(), opts.stall_timeout)
            if isinstance(first, m.Abort | m.Error):
                raise code_to_error(first.code, first.message)
            if not isinstance(first, m.StartStream):
                raise RemoteProtocolError(f"expected start, got {type(first).__name__}")
            if not announced:
                reporter.start(name, first.size)
                announced = True
            receiver = StreamReceiver(sid)
            ticker = asyncio.create_task(_report(reporter, name, lambda: receiver.received))
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
            if ticker:
                ticker.cancel()
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
    """Push files with up to ``opts.parallel`` streams at once."""
    queue: asyncio.Queue[tuple[Path, str]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results: list[TransferResult] = []

    async def worker() -> None:
        holder = LinkHolder(session, opts.data_path)
        try:
            while not queue.empty():
                path, name = queue.get_nowait()
                results.append(await push_file(session, holder, config, path, name, opts, reporter))
        finally:
            await holder.drop()

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, min(opts.parallel, len(items)))):
                tg.create_task(worker())
    except* FreightError as group:
        raise group.exceptions[0] from None
    return results


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
