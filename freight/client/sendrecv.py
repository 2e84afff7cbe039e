"""``freight send`` / ``freight receive``: files and folders over one
end-to-end encrypted connection.

Messages on the connection (first byte names the kind):

* ``M`` sender → receiver: the manifest, JSON ``{"entries": [...]}``; each
  entry is a relative POSIX path, ``type`` (``file`` or ``dir``), ``mode``,
  ``size`` and ``mtime``.
* ``W`` receiver → sender: for every entry, the offset it already holds and
  the BLAKE3 of those bytes (from a partial file, or a finished one), so a
  run started again resumes instead of starting over.
* ``F`` sender → receiver: ``index (u32) ‖ offset (u64) ‖ bytes``.
* ``E`` sender → receiver: end of a file, with the BLAKE3 of all of it.
* ``B`` sender → receiver: many small files whole, in one message:
  ``count (u32)`` then per file ``index (u32) ‖ length (u32) ‖ held (u8) ‖
  BLAKE3 (32 bytes) ‖ bytes``; ``held`` = 1 (and no bytes) when the
  receiver already holds all of it. A tree of small files then costs a
  message, a seal and a disk-thread call per batch instead of two per file.
* ``Z`` sender → receiver: everything is sent.
* ``K`` receiver → sender: the verdict, JSON ``{"ok": …}``.

The connection below is reliable across reconnects and hub restarts; this
layer adds resumption when either program is started again. The receiver
refuses any path that would leave its destination folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

import blake3

from ..errors import FreightError, RemoteError, StorageError, UsageError
from .relay import Connection

CHUNK = 1024 * 1024 - 64  # one record of about 1 MiB with its headers
SYNC_EACH = 1024 * 1024  # files this large are fsynced one by one
READ_AHEAD = 4
SMALL_FILE = 64 * 1024  # files up to this size travel in batches (B)
BATCH_BYTES = 1024 * 1024 - 64 * 1024  # a batch stays within one record
BATCH_FILES = 512
_CHUNK_HEAD = struct.Struct(">IQ")
_COUNT = struct.Struct(">I")
_SMALL_HEAD = struct.Struct(">IIB32s")
PART_SUFFIX = ".freight-part"


class Reporter(Protocol):
    def start(self, name: str, size: int) -> None: ...

    def update(self, name: str, done: int) -> None: ...

    def finish(self, name: str, result: Any) -> None: ...

    def notice(self, text: str) -> None: ...


class TransferRefused(RemoteError):
    """The other end refused the transfer."""

    code = "transfer_refused"


class UnsafePath(UsageError):
    """A path in the manifest would leave the destination folder."""

    code = "unsafe_path"


@dataclass
class Entry:
    path: str
    type: str
    mode: int
    size: int
    mtime: float
    source: Path | None = field(default=None, repr=False)

    def wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "size": self.size,
            "mtime": self.mtime,
        }


@dataclass
class Summary:
    files: int = 0
    dirs: int = 0
    bytes: int = 0  # total size of the files
    sent: int = 0  # bytes that crossed the network this run
    resumed: int = 0  # bytes skipped because the other end had them


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


def _entry(path: Path, rel: str, kind: str) -> Entry:
    st = path.stat()
    size = st.st_size if kind == "file" else 0
    return Entry(rel, kind, stat.S_IMODE(st.st_mode), size, st.st_mtime, path)


def safe_target(dest: Path, rel: str) -> Path:
    """Where ``rel`` goes under ``dest``, or UnsafePath if it would escape
    (absolute paths, ``..``, empty parts, or a symlink inside ``dest``)."""
    return safe_targets(dest, [rel])[0]


def safe_targets(dest: Path, rels: list[str]) -> list[Path]:
    """``safe_target`` for many paths, resolving each folder once."""
    root = dest.resolve()
    resolved: dict[Path, Path] = {}
    targets = []
    for rel in rels:
        pure = PurePosixPath(rel)
        if (
            not rel
            or "\0" in rel
            or "\\" in rel
            or pure.is_absolute()
            or any(part in ("", ".", "..") for part in rel.split("/"))
        ):
            raise UnsafePath(f"refusing {rel!r}: it would leave the destination folder")
        target = dest.joinpath(*pure.parts)
        parent = resolved.get(target.parent)
        if parent is None:
            parent = resolved[target.parent] = target.parent.resolve()
        if parent != root and root not in parent.parents:
            raise UnsafePath(f"refusing {rel!r}: it would leave the destination folder")
        targets.append(target)
    return targets


def sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding ``path`` (syncfs(2)): what was written
    there reaches the disk, without flushing every other disk of the
    machine as sync(2) would (the fallback where syncfs is missing)."""
    import ctypes  # here, not at start-up: called once per transfer

    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _hash_file(path: Path, upto: int | None = None) -> tuple[bytes, int]:
    """BLAKE3 of the first ``upto`` bytes (all if None) and how many there were."""
    h = blake3.blake3()
    n = 0
    with open(path, "rb") as f:
        while upto is None or n < upto:
            want = CHUNK if upto is None else min(CHUNK, upto - n)
            block = f.read(want)
            if not block:
                break
            h.update(block)
            n += len(block)
    return h.digest(), n


def _encode(kind: bytes, body: Any) -> bytes:
    return kind + json.dumps(body, separators=(",", ":")).encode()


def _decode(data: bytes, kind: bytes) -> Any:
    if data[:1] != kind:
        raise TransferRefused(f"expected message {kind.decode()!r}, got {data[:1]!r}")
    try:
        return json.loads(data[1:])
    except ValueError:
        raise TransferRefused("the other end sent an unreadable message") from None


# --- sending ---------------------------------------------------------------


async def send_entries(conn: Connection, entries: list[Entry], reporter: Reporter) -> Summary:
    """Send ``entries`` on ``conn``; returns once the receiver confirmed."""
    summary = Summary()
    await conn.send(_encode(b"M", {"entries": [e.wire() for e in entries]}))
    reply = await conn.recv()
    if not reply:
        raise TransferRefused("the receiver closed the connection")
    if reply[:1] == b"K":
        raise TransferRefused(_decode(reply, b"K").get("error", "refused"))
    want = _decode(reply, b"W")
    holds = want.get("have", [])
    if len(holds) != len(entries):
        raise TransferRefused("the receiver answered for a different list of files")
    batch: list[tuple[int, Entry, int, str]] = []
    batch_bytes = 0
    for index, entry in enumerate(entries):
        if entry.type == "dir":
            summary.dirs += 1
            continue
        summary.files += 1
        summary.bytes += entry.size
        offset, digest = int(holds[index][0]), str(holds[index][1])
        if entry.size <= SMALL_FILE:
            if batch and (batch_bytes + entry.size > BATCH_BYTES or len(batch) >= BATCH_FILES):
                await _send_batch(conn, batch, reporter, summary)
                batch, batch_bytes = [], 0
            batch.append((index, entry, offset, digest))
            batch_bytes += entry.size
            continue
        if batch:
            await _send_batch(conn, batch, reporter, summary)
            batch, batch_bytes = [], 0
        await _send_file(conn, index, entry, offset, digest, reporter, summary)
    if batch:
        await _send_batch(conn, batch, reporter, summary)
    await conn.send(b"Z")
    verdict = await conn.recv()
    if not verdict:
        raise TransferRefused("the receiver closed the connection before confirming")
    result = _decode(verdict, b"K")
    if not result.get("ok"):
        raise TransferRefused(f"the receiver reports: {result.get('error', 'failed')}")
    return summary


async def _send_file(
    conn: Connection,
    index: int,
    entry: Entry,
    offset: int,
    prefix_digest: str,
    reporter: Reporter,
    summary: Summary,
) -> None:
    assert entry.source is not None
    path = entry.source
    try:
        size = path.stat().st_size
        if size != entry.size:
            raise UsageError(f"{path} changed while being sent; send it again")
        hasher = blake3.blake3()
        if 0 < offset <= size:
            hasher = await asyncio.to_thread(_rehash_prefix, path, offset)
            if hasher.hexdigest() != prefix_digest:
                hasher, offset = blake3.blake3(), 0  # the receiver holds another file
        else:
            offset = 0
        summary.resumed += offset
        reporter.start(entry.path, size)
        reporter.update(entry.path, offset)
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        f.seek(offset)
        done = offset
        async for block in _read_ahead(f, hasher, size - offset):
            await conn.send(b"F" + _CHUNK_HEAD.pack(index, done) + block)
            done += len(block)
            summary.sent += len(block)
            reporter.update(entry.path, done)
        if done != size:
            raise UsageError(f"{path} changed while being sent; send it again")
    finally:
        f.close()
    await conn.send(_encode(b"E", {"index": index, "digest": hasher.hexdigest()}))
    reporter.finish(entry.path, None)


async def _send_batch(
    conn: Connection,
    batch: list[tuple[int, Entry, int, str]],
    reporter: Reporter,
    summary: Summary,
) -> None:
    """Small files whole, read and hashed in one worker-thread call, sent
    as one ``B`` message."""
    message, held = await asyncio.to_thread(_read_batch, batch)
    for (_, entry, _, _), was_held in zip(batch, held, strict=True):
        reporter.start(entry.path, entry.size)
        if was_held:
            summary.resumed += entry.size
        else:
            summary.sent += entry.size
    await conn.send(message)
    for _, entry, _, _ in batch:
        reporter.update(entry.path, entry.size)
        reporter.finish(entry.path, None)


def _read_batch(batch: list[tuple[int, Entry, int, str]]) -> tuple[bytes, list[bool]]:
    parts = [b"B", _COUNT.pack(len(batch))]
    held: list[bool] = []
    for index, entry, offset, digest in batch:
        assert entry.source is not None
        try:
            with open(entry.source, "rb") as f:
                data = f.read(entry.size + 1)
        except OSError as exc:
            raise StorageError(f"cannot read {entry.source}: {exc.strerror or exc}") from None
        if len(data) != entry.size:
            raise UsageError(f"{entry.source} changed while being sent; send it again")
        full = blake3.blake3(data).digest()
        has_it = offset == entry.size and digest == full.hex()
        body = b"" if has_it else data
        parts.append(_SMALL_HEAD.pack(index, len(body), has_it, full))
        parts.append(body)
        held.append(has_it)
    return b"".join(parts), held


def _rehash_prefix(path: Path, upto: int) -> Any:
    h = blake3.blake3()
    with open(path, "rb") as f:
        left = upto
        while left:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


async def _read_ahead(f: BinaryIO, hasher: Any, length: int) -> Any:
    """Blocks of the file, read and hashed in a worker thread while the
    previous ones are sealed and sent."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(READ_AHEAD)

    def read_one(n: int) -> bytes:
        block = f.read(n)
        hasher.update(block)
        return block

    async def producer() -> None:
        left = length
        try:
            while left > 0:
                block = await asyncio.to_thread(read_one, min(CHUNK, left))
                if not block:
                    break
                left -= len(block)
                await queue.put(block)
            await queue.put(None)
        except OSError as exc:
            await queue.put(StorageError(f"cannot read: {exc.strerror or exc}"))

    task = asyncio.create_task(producer())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- receiving -------------------------------------------------------------


class _Incoming:
    """One file being written: ``name.freight-part`` next to its final place."""

    def __init__(self, entry: Entry, target: Path) -> None:
        self.entry = entry
        self.target = target
        self.part = target.with_name(target.name + PART_SUFFIX)
        self.hasher: Any = blake3.blake3()
        self.file: BinaryIO | None = None
        self.done = 0
        self.complete = False  # the final file already holds this content

    def plan(self) -> tuple[int, str]:
        """(offset held, BLAKE3 of it), from a finished file or a partial."""
        e = self.entry
        if self.target.is_file() and not self.part.exists():
            st = self.target.stat()
            if st.st_size == e.size and abs(st.st_mtime - e.mtime) < 1e-3:
                digest, n = _hash_file(self.target)
                self.complete = True
                self.done = n
                return n, digest.hex()
        if self.part.is_file():
            size = self.part.stat().st_size
            if size <= e.size:
                digest, n = _hash_file(self.part, size)
                self.done = n
                return n, digest.hex()
        return 0, ""

    def write(self, offset: int, block: bytes) -> None:
        if self.file is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.part, "r+b" if self.part.exists() else "wb")  # noqa: SIM115
            if offset:
                self.hasher = _rehash_prefix(self.part, offset)
            self.complete = False
            self.file.truncate(offset)
            self.file.seek(offset)
            self.done = offset
        elif offset != self.done:
            raise TransferRefused(f"{self.entry.path}: data out of order")
        if self.done + len(block) > self.entry.size:
            raise TransferRefused(f"{self.entry.path}: more data than announced")
        self.file.write(block)
        self.hasher.update(block)
        self.done += len(block)

    def finish(self, digest: str) -> None:
        e = self.entry
        if self.complete and self.file is None:
            if _hash_file(self.target)[0].hex() != digest:
                raise TransferRefused(f"{e.path}: existing file differs; remove it and retry")
            return
        if self.file is None:  # nothing was needed: an empty file, or all held
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if self.done == 0:
                self.part.write_bytes(b"")
            else:
                self.hasher = _rehash_prefix(self.part, self.done)
        else:
            self.file.flush()
            if e.size >= SYNC_EACH:
                os.fsync(self.file.fileno())
            # Smaller files are made durable together by one sync before the
            # receiver confirms (a file per fsync would cost ~1 ms each); a
            # crash before that leaves files a resume re-checks by digest.
            self.file.close()
            self.file = None
        if self.done != e.size or self.hasher.hexdigest() != digest:
            self.part.unlink(missing_ok=True)
            raise TransferRefused(f"{e.path}: content does not match what was sent; run again")
        os.chmod(self.part, e.mode & 0o7777)
        os.utime(self.part, (e.mtime, e.mtime))
        os.replace(self.part, self.target)

    def write_whole(self, body: bytes, digest: str) -> None:
        """A small file in one go, checked before it is written: one create,
        write, fchmod, futimens, close and rename (the fewest system calls;
        a tree of small files is bound by them)."""
        e = self.entry
        if len(body) != e.size or blake3.blake3(body).hexdigest() != digest:
            raise TransferRefused(f"{e.path}: content does not match what was sent; run again")
        self.close()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(self.part, flags, 0o600)
        except FileNotFoundError:  # a folder the list did not name
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.part, flags, 0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, e.mode & 0o7777)
            os.utime(fd, (e.mtime, e.mtime))
        finally:
            os.close(fd)
        os.replace(self.part, self.target)
        self.done = e.size

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _rename_top(entries: list[Entry], name: str) -> None:
    """Give the top entry (and what is under it) another name: ``cp
    AGENT:/data/a.bin ./b.bin``."""
    top = entries[0].path.split("/", 1)[0]
    for e in entries:
        first, _, rest = e.path.partition("/")
        if first == top:
            e.path = f"{name}/{rest}" if rest else name


async def receive_entries(
    conn: Connection, dest: Path, reporter: Reporter, *, rename_top: str | None = None
) -> Summary:
    """Receive a manifest and its files into ``dest``."""
    summary = Summary()
    first = await conn.recv()
    if not first:
        raise TransferRefused("the sender closed the connection")
    manifest = _decode(first, b"M")
    try:
        entries = [
            Entry(**{k: e[k] for k in ("path", "type", "mode", "size", "mtime")})
            for e in manifest["entries"]
        ]
        for e in entries:
            if e.type not in ("file", "dir") or int(e.size) < 0:
                raise ValueError(e.type)
    except (KeyError, TypeError, ValueError):
        await conn.send(_encode(b"K", {"ok": False, "error": "malformed manifest"}))
        raise TransferRefused("the sender's list of files is malformed") from None
    if rename_top and entries:
        _rename_top(entries, rename_top)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        targets = safe_targets(dest, [e.path for e in entries])
    except UnsafePath as exc:
        await conn.send(_encode(b"K", {"ok": False, "error": exc.message}))
        raise
    incoming: dict[int, _Incoming] = {}
    for index, (e, target) in enumerate(zip(entries, targets, strict=True)):
        if e.type == "dir":
            target.mkdir(parents=True, exist_ok=True)
            summary.dirs += 1
            continue
        incoming[index] = _Incoming(e, target)
        summary.files += 1
        summary.bytes += e.size
    planned = await asyncio.to_thread(lambda: {i: inc.plan() for i, inc in incoming.items()})
    have = [planned.get(index, (0, "")) for index in range(len(entries))]
    set_totals = getattr(reporter, "set_totals", None)
    if set_totals is not None:
        set_totals(summary.bytes, summary.files)
    await conn.send(_encode(b"W", {"have": have}))
    try:
        await _receive_files(conn, incoming, reporter, summary, dest)
    except FreightError as exc:
        await conn.send(_encode(b"K", {"ok": False, "error": exc.message}))
        raise
    except OSError as exc:
        error = StorageError(f"cannot write into {dest}: {exc.strerror or exc}")
        await conn.send(_encode(b"K", {"ok": False, "error": error.message}))
        raise error from None
    finally:
        for inc in incoming.values():
            inc.close()
    for e, target in zip(reversed(entries), reversed(targets), strict=True):
        if e.type == "dir":
            os.chmod(target, e.mode & 0o7777)
            os.utime(target, (e.mtime, e.mtime))
    await conn.send(_encode(b"K", {"ok": True, "files": summary.files, "bytes": summary.bytes}))
    return summary


class _DiskWriter:
    """Runs file writes in one worker thread, in order, while the next
    records arrive: the network and the disk work at the same time, and
    at most ``depth`` blocks wait in memory."""

    def __init__(self, depth: int = READ_AHEAD * 2) -> None:
        self.queue: asyncio.Queue[tuple[Any, tuple[Any, ...], asyncio.Future[Any] | None]] = (
            asyncio.Queue(depth)
        )
        self.failure: Exception | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            fn, args, done = await self.queue.get()
            try:
                result = None if self.failure else await asyncio.to_thread(fn, *args)
            except Exception as exc:  # kept for the receiving loop to raise
                # Not BaseException: a cancellation (aclose, the transfer
                # failing elsewhere) must end this task, not be stored.
                self.failure = exc
            if done is not None and not done.done():
                if self.failure is not None:
                    done.set_exception(self.failure)
                else:
                    done.set_result(result)

    async def submit(self, fn: Any, *args: Any) -> None:
        if self.failure is not None:
            raise self.failure
        await self.queue.put((fn, args, None))

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run after everything submitted so far; wait for the result."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((fn, args, done))
        return await done

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


_BatchItem = tuple[int, "_Incoming", bytes, str, bool]


def _parse_batch(data: bytes, incoming: dict[int, _Incoming]) -> list[_BatchItem]:
    """The files of a ``B`` message, each checked against the list."""
    try:
        (count,) = _COUNT.unpack_from(data, 1)
        pos = 1 + _COUNT.size
        items: list[_BatchItem] = []
        for _ in range(count):
            index, length, held, digest = _SMALL_HEAD.unpack_from(data, pos)
            pos += _SMALL_HEAD.size
            body = data[pos : pos + length]
            pos += length
            inc = incoming.get(index)
            if inc is None:
                raise TransferRefused("data for a file that is not in the list")
            if len(body) != length or (not held and length != inc.entry.size):
                raise TransferRefused(f"{inc.entry.path}: size differs from the list")
            items.append((index, inc, body, digest.hex(), bool(held)))
    except struct.error:
        raise TransferRefused("the sender sent a malformed batch of files") from None
    if pos != len(data):
        raise TransferRefused("the sender sent a malformed batch of files")
    return items


def _finish_batch(items: list[_BatchItem]) -> None:
    """Write and finish each small file (in the disk thread)."""
    for _, inc, body, digest, held in items:
        if held:
            inc.finish(digest)
        else:
            inc.write_whole(body, digest)


async def _receive_files(
    conn: Connection,
    incoming: dict[int, _Incoming],
    reporter: Reporter,
    summary: Summary,
    dest: Path,
) -> None:
    writer = _DiskWriter()
    try:
        await _receive_loop(conn, incoming, reporter, summary, writer, dest)
    finally:
        await writer.aclose()


async def _receive_loop(
    conn: Connection,
    incoming: dict[int, _Incoming],
    reporter: Reporter,
    summary: Summary,
    writer: _DiskWriter,
    dest: Path,
) -> None:
    started: set[int] = set()
    while True:
        data = await conn.recv()
        if not data:
            raise TransferRefused("the sender closed the connection before the end")
        kind = data[:1]
        if kind == b"F":
            index, offset = _CHUNK_HEAD.unpack_from(data, 1)
            inc = incoming.get(index)
            if inc is None:
                raise TransferRefused("data for a file that is not in the list")
            if index not in started:
                started.add(index)
                reporter.start(inc.entry.path, inc.entry.size)
                summary.resumed += offset
            block = data[1 + _CHUNK_HEAD.size :]
            await writer.submit(inc.write, offset, block)
            summary.sent += len(block)
            reporter.update(inc.entry.path, offset + len(block))
        elif kind == b"E":
            end = _decode(data, b"E")
            inc = incoming.get(int(end["index"]))
            if inc is None:
                raise TransferRefused("end of a file that is not in the list")
            if int(end["index"]) not in started:
                summary.resumed += inc.done
            # Not awaited: the next files arrive while this one is finished;
            # a failure surfaces at the next submit or at the end.
            await writer.submit(inc.finish, str(end["digest"]))
            reporter.update(inc.entry.path, inc.entry.size)
            reporter.finish(inc.entry.path, None)
        elif kind == b"B":
            items = _parse_batch(data, incoming)
            for index, inc, body, _, held in items:
                started.add(index)
                reporter.start(inc.entry.path, inc.entry.size)
                if held:
                    summary.resumed += inc.entry.size
                summary.sent += len(body)
            await writer.submit(_finish_batch, items)
            for _, inc, _, _, _ in items:
                reporter.update(inc.entry.path, inc.entry.size)
                reporter.finish(inc.entry.path, None)
        elif kind == b"Z":
            # After every finish (raises a failure): small files reach the
            # disk together before the receiver confirms.
            await writer.call(sync_filesystem, dest)
            return
        else:
            raise TransferRefused(f"unexpected message {kind!r} from the sender")
