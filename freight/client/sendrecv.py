"""``freight send`` / ``freight receive``: files and folders over one
end-to-end encrypted connection. This module has the list of entries and
the sending side; :mod:`.receiving` the receiving side; the messages are
typed in :mod:`freight.protocol.sendrecv` (docs/protocol.md §12.5).

The connection below is reliable across reconnects and hub restarts; this
layer adds resumption when either program is started again: the receiver
answers the list with what it already holds of each file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import blake3

from ..engine.hashing import hash_fd
from ..engine.pipeline import read_blocks
from ..errors import RemoteError, StorageError, UsageError
from ..protocol import sendrecv as wire
from ..protocol.codec import Compressor
from ..protocol.messages import LEVEL_NONE, LEVELS
from ..units import Limit, parse_limit
from .pacing import Pacer, resolve_limit
from .relay import Connection

CHUNK = 1024 * 1024 - 64  # one record of about 1 MiB with its headers
SYNC_EACH = 1024 * 1024  # files this large are fsynced one by one
READ_AHEAD = 4
SMALL_FILE = 64 * 1024  # files up to this size travel in batches (B)
BATCH_BYTES = 1024 * 1024 - 64 * 1024  # a batch stays within one record
BATCH_FILES = 512
PART_SUFFIX = ".freight-part"
Kind = Literal["file", "dir"]


class Reporter(Protocol):
    def start(self, name: str, size: int) -> None: ...

    def update(self, name: str, done: int) -> None: ...

    def finish(self, name: str, result: Any) -> None: ...

    def notice(self, text: str) -> None: ...


class TransferRefused(RemoteError):
    """The other end refused the transfer."""

    code = "transfer_refused"


@dataclass
class Entry:
    path: str
    type: Kind
    mode: int
    size: int
    mtime: float
    source: Path | None = field(default=None, repr=False)

    def to_wire(self) -> wire.WireEntry:
        return wire.WireEntry(
            path=self.path, type=self.type, mode=self.mode, size=self.size, mtime=self.mtime
        )


@dataclass
class Summary:
    files: int = 0
    dirs: int = 0
    bytes: int = 0  # total size of the files
    sent: int = 0  # bytes that crossed the network this run
    resumed: int = 0  # bytes skipped because the other end had them
    wire: int = 0  # what the file messages took on the wire (after compression)
    level: str = LEVEL_NONE  # the compression the receiver chose
    rate: int = 0  # bytes/s this end kept to (sender: the smaller of both ends' limits)


@dataclass(frozen=True)
class Shaping:
    """One end's ``--limit`` (bytes/s of file data, 0: none) and
    ``--compress`` ("": no say, the sender's wish stands). The receiver
    chooses the level (its own, else the sender's wish) and tells the
    sender its rate; the sender keeps to the smaller of both rates."""

    rate: int = 0
    compress: str = ""

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise UsageError("a rate limit cannot be negative")
        if self.compress and self.compress not in LEVELS:
            raise UsageError(f"--compress must be one of {', '.join(LEVELS)}")


async def shaping_for(
    limit: Limit | str | int,
    compress: str,
    session: Any,
    direction: Literal["up", "down"] = "up",
) -> Shaping:
    """This end's :class:`Shaping` from a ``--limit`` (``"20M"``, ``"50%"``,
    a :class:`~freight.units.Limit` or bytes/s) and ``--compress`` ("": no
    say); a percentage is measured on the path of ``session`` in
    ``direction`` (``up`` for the sending end, ``down`` for the receiving)."""
    if isinstance(limit, str):
        limit = parse_limit(limit)
    elif isinstance(limit, int):
        limit = Limit(rate=limit) if limit > 0 else Limit()
    shaping = Shaping(compress=compress)  # checks the level before anything is measured
    return Shaping(rate=await resolve_limit(limit, session, direction), compress=shaping.compress)


class _Out:
    """Where the sender's file messages go: paced to the effective rate and
    compressed at the receiver's level in a worker thread, one message
    ahead: the next one is compressed while this one is sealed and sent
    (zstd releases the GIL; bench/relaycompress.py on a busy 2-core
    machine: cp -r of text with --compress fast took 1.41x the time of the
    same cp without compression, 1.13x with this). Each of the two messages
    in flight has a compressor of its own: one zstd context is not for two
    threads."""

    def __init__(self, conn: Connection, pacer: Pacer, level: str, summary: Summary) -> None:
        self.conn = conn
        self.pacer = pacer
        self.compressors = (Compressor(level), Compressor(level)) if level != LEVEL_NONE else None
        self.summary = summary
        self._turn = 0
        self._ahead: asyncio.Future[bytes] | None = None

    async def send(self, message: bytes, raw: int) -> None:
        """Send a file message (``F`` or ``B``; ``raw`` file bytes in it)."""
        await self.pacer.pace(raw)
        if self.compressors is None:
            await self._emit(message)
            return
        compressor = self.compressors[self._turn]
        self._turn ^= 1
        packing = asyncio.get_running_loop().run_in_executor(None, wire.pack, message, compressor)
        try:
            await self.flush()
        finally:
            self._ahead = packing

    async def send_plain(self, message: bytes) -> None:
        """A message that is never compressed, after those before it."""
        await self.flush()
        await self.conn.send(message)

    async def flush(self) -> None:
        """Send the message being compressed, if any."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await self._emit(await ahead)

    def abandon(self) -> None:
        """The transfer failed: what was being compressed is not sent."""
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    async def _emit(self, message: bytes) -> None:
        self.summary.wire += len(message)
        await self.conn.send(message)


def build_manifest(paths: list[Path]) -> list[Entry]:
    """Entries for files and folders (recursively; symbolic links are
    followed for the paths given, skipped inside folders)."""
    entries: list[Entry] = []
    seen: set[str] = set()
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        base = p.resolve().name
        if base in seen:
            raise UsageError(f"two sources are both named {base!r}")
        seen.add(base)
        if p.is_dir():
            entries.append(_entry(p, base, "dir"))
            for root, dirs, files in os.walk(p):
                dirs.sort()
                rel_root = Path(root).relative_to(p)
                for d in list(dirs):
                    full = Path(root) / d
                    if full.is_symlink():
                        dirs.remove(d)
                        continue
                    entries.append(_entry(full, f"{base}/{(rel_root / d).as_posix()}", "dir"))
                for f in sorted(files):
                    full = Path(root) / f
                    if full.is_symlink() or not full.is_file():
                        continue
                    entries.append(_entry(full, f"{base}/{(rel_root / f).as_posix()}", "file"))
        else:
            entries.append(_entry(p, base, "file"))
    return entries


def _entry(path: Path, rel: str, kind: Kind) -> Entry:
    st = path.stat()
    size = st.st_size if kind == "file" else 0
    return Entry(rel, kind, stat.S_IMODE(st.st_mode), size, st.st_mtime, path)


def _refused(data: bytes, kind: type[wire.T]) -> wire.T:
    """A message from the receiver, or TransferRefused if it is malformed."""
    try:
        return wire.decode(data, kind)
    except wire.MalformedTransfer as exc:
        raise TransferRefused(f"the receiver sent a malformed message: {exc.message}") from None


# --- sending ---------------------------------------------------------------


# Opens a source file for reading: a descriptor of a regular file, or
# OSError. The agent's opener reaches it from its root without links.
Opener = Callable[[Path], int]


def open_source(path: Path) -> int:
    """A file named by the person sending (links in the name followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


async def send_entries(
    conn: Connection,
    entries: list[Entry],
    reporter: Reporter,
    *,
    opener: Opener = open_source,
    shaping: Shaping | None = None,
) -> Summary:
    """Send ``entries`` on ``conn``; returns once the receiver confirmed."""
    shaping = shaping or Shaping()
    summary = Summary()
    manifest = wire.Manifest(entries=[e.to_wire() for e in entries], want=shaping.compress)
    await conn.send(wire.encode(manifest))
    reply = await conn.recv()
    if not reply:
        raise TransferRefused("the receiver closed the connection")
    if reply[:1] == b"K":
        raise TransferRefused(_refused(reply, wire.Verdict).error or "refused")
    holdings = _refused(reply, wire.Holdings)
    holds = holdings.have
    if len(holds) != len(entries):
        raise TransferRefused("the receiver answered for a different list of files")
    # An older receiver says no level: it cannot unpack X, so nothing is packed.
    summary.level = holdings.level or LEVEL_NONE
    pacer = Pacer(shaping.rate)
    pacer.assign(holdings.rate)
    summary.rate = pacer.rate
    out = _Out(conn, pacer, summary.level, summary)
    try:
        batch: list[tuple[int, Entry, int, str]] = []
        batch_bytes = 0
        for index, entry in enumerate(entries):
            if entry.type == "dir":
                summary.dirs += 1
                continue
            summary.files += 1
            summary.bytes += entry.size
            offset, digest = holds[index]
            if entry.size <= SMALL_FILE:
                if batch and (batch_bytes + entry.size > BATCH_BYTES or len(batch) >= BATCH_FILES):
                    await _send_batch(out, batch, reporter, summary, opener)
                    batch, batch_bytes = [], 0
                batch.append((index, entry, offset, digest))
                batch_bytes += entry.size
                continue
            if batch:
                await _send_batch(out, batch, reporter, summary, opener)
                batch, batch_bytes = [], 0
            await _send_file(out, index, entry, offset, digest, reporter, summary, opener)
        if batch:
            await _send_batch(out, batch, reporter, summary, opener)
        await out.send_plain(b"Z")
    finally:
        out.abandon()  # a failure: what was being compressed is dropped
    verdict = await conn.recv()
    if not verdict:
        raise TransferRefused("the receiver closed the connection before confirming")
    result = _refused(verdict, wire.Verdict)
    if not result.ok:
        raise TransferRefused(f"the receiver reports: {result.error or 'failed'}")
    return summary


async def _send_file(
    out: _Out,
    index: int,
    entry: Entry,
    offset: int,
    prefix_digest: str,
    reporter: Reporter,
    summary: Summary,
    opener: Opener,
) -> None:
    assert entry.source is not None
    path = entry.source
    try:
        f = os.fdopen(opener(path), "rb")
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    ready = False
    try:
        size = os.fstat(f.fileno()).st_size
        if size != entry.size:
            raise UsageError(f"{path} changed while being sent; send it again")
        hasher = blake3.blake3()
        if 0 < offset <= size:
            hasher, _ = await asyncio.to_thread(hash_fd, f.fileno(), offset)
            if hasher.hexdigest() != prefix_digest:
                hasher, offset = blake3.blake3(), 0  # the receiver holds another file
        else:
            offset = 0
        ready = True
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        if not ready:  # failed or cancelled: the file is not ours to keep open
            f.close()
    summary.resumed += offset
    reporter.start(entry.path, size)
    reporter.update(entry.path, offset)
    try:
        done = offset
        blocks = read_blocks(
            _reader(f.fileno()), hasher, offset, size, block=CHUNK, max_bytes=READ_AHEAD * CHUNK
        )
        async with contextlib.aclosing(blocks):
            async for block in blocks:
                await out.send(wire.encode_chunk_head(index, done) + block, len(block))
                done += len(block)
                summary.sent += len(block)
                reporter.update(entry.path, done)
        if done != size:
            raise UsageError(f"{path} changed while being sent; send it again")
    finally:
        f.close()
    await out.send_plain(wire.encode(wire.FileEnd(index=index, digest=hasher.hexdigest())))
    reporter.finish(entry.path, None)


async def _send_batch(
    out: _Out,
    batch: list[tuple[int, Entry, int, str]],
    reporter: Reporter,
    summary: Summary,
    opener: Opener,
) -> None:
    """Small files whole, read and hashed in one worker-thread call, sent
    as one ``B`` message."""
    message, held = await asyncio.to_thread(_read_batch, batch, opener)
    raw = 0
    for (_, entry, _, _), was_held in zip(batch, held, strict=True):
        reporter.start(entry.path, entry.size)
        if was_held:
            summary.resumed += entry.size
        else:
            summary.sent += entry.size
            raw += entry.size
    await out.send(message, raw)
    for _, entry, _, _ in batch:
        reporter.update(entry.path, entry.size)
        reporter.finish(entry.path, None)


def _read_batch(
    batch: list[tuple[int, Entry, int, str]], opener: Opener = open_source
) -> tuple[bytes, list[bool]]:
    parts = [wire.encode_batch_head(len(batch))]
    held: list[bool] = []
    for index, entry, offset, digest in batch:
        assert entry.source is not None
        try:
            with os.fdopen(opener(entry.source), "rb") as f:
                data = f.read(entry.size + 1)
        except OSError as exc:
            raise StorageError(f"cannot read {entry.source}: {exc.strerror or exc}") from None
        if len(data) != entry.size:
            raise UsageError(f"{entry.source} changed while being sent; send it again")
        full = blake3.blake3(data).digest()
        has_it = offset == entry.size and digest == full.hex()
        body = b"" if has_it else data
        parts.append(wire.encode_small_head(index, len(body), has_it, full))
        parts.append(body)
        held.append(has_it)
    return b"".join(parts), held


def _reader(fd: int) -> Callable[[int, int], bytes]:
    def read(offset: int, n: int) -> bytes:
        try:
            return os.pread(fd, n, offset)
        except OSError as exc:
            raise StorageError(f"cannot read: {exc.strerror or exc}") from None

    return read
