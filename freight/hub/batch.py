"""The hub's side of batches of small files (:mod:`freight.protocol.batch`).

A batch is stored all or none, and acknowledged only once every file is
durable, digest-checked and published:

1. the manifest and sizes are checked, every name against the hub's rules,
   and the account's quota for the whole batch (under the quota lock,
   held until the batch is recorded, so two batches cannot both take the
   last free bytes);
2. each file is hashed (BLAKE3, against the manifest) and written into
   ``partial/<user>/<sid>.<attempt>.<n>.batch`` with its mtime (the
   attempt's own names: two nodes taking one batch never share a partial);
3. one syncfs(2) makes all of them durable; each is renamed into place;
   a second syncfs makes the renames durable;
4. one database transaction records every file; then the ack.

What a file costs is its write and hash; the fsyncs and the commit are
paid once per batch, which is what makes pushing a folder of many small
files fast. A failure before any rename leaves nothing published (the
partials are removed); a failure while renaming records exactly the files
that took their place, so the files table never names bytes it does not
hold. A hub that dies before its ack leaves the client to send the batch
again; storing it twice gives the same files.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from ..engine.durable import sync_filesystem
from ..engine.hashing import digest_bytes
from ..errors import (
    DiskFull,
    FreightError,
    NotFound,
    QuotaExceeded,
    StorageError,
    UsageError,
)
from ..names import check_name, shown
from ..protocol import messages as m
from ..protocol.batch import (
    BatchEntry,
    check_digest,
    decode_batch,
    decode_request,
    encode_batch,
)
from ..protocol.limits import MAX_BATCH_BYTES, SMALL_FILE_BYTES
from ..store import quota
from ..store.bucket import content_key
from ..transport.channel import Port
from ..units import format_bytes
from .blobfiles import bucket_away

if TYPE_CHECKING:
    from .streams import StreamService, User

_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
STALE_SUFFIX = ".batch"

# (stored name, bytes, BLAKE3, mtime) of one file of a batch.
Stored = tuple[str, int, str, float]


async def put_files(
    service: StreamService, user: User, port: Port, msg: m.PutFiles, payload: bytes
) -> None:
    """Store one batch and answer it (ack, or Abort with a typed code)."""
    started = time.monotonic()
    # A batch sent again while the hub still stores the first attempt (the
    # connection broke meanwhile) waits for it: both write the same partials.
    key = (user.id, msg.sid)
    old = service.receiving.get(key)
    if old is not None and not old.done():
        await asyncio.wait([old])  # how it ended is its own task's business
    me = asyncio.current_task()
    assert me is not None
    service.receiving[key] = me
    try:
        stored = await _store(service, user, msg, payload)
    except FreightError as exc:
        service.metrics.streams.labels("failed").inc()
        service.log.info(
            "batch_refused", sid=msg.sid, user=user.name, code=exc.code, error=exc.message
        )
        await port.send(m.Abort(sid=msg.sid, code=exc.code, message=exc.message))
        return
    finally:
        if service.receiving.get(key) is me:
            del service.receiving[key]
    size = sum(f[1] for f in stored)
    service.metrics.bytes_received.inc(size)
    service.metrics.streams.labels("end").inc(len(stored))
    budget = f"batch:{user.id}:{msg.sid}"
    service.bandwidth.register(budget)
    try:
        rate = service.bandwidth.rate_for(budget, _minute_of_day())
    finally:
        service.bandwidth.unregister(budget)
    await port.send(m.PutFilesAck(sid=msg.sid, stored=len(stored), rate=rate))
    await service.events.emit(
        "batch_end",
        user.name,
        sid=msg.sid,
        files=len(stored),
        size=size,
        first=stored[0][0],
        last=stored[-1][0],
        seconds=round(time.monotonic() - started, 3),
    )


def _minute_of_day() -> int:
    t = time.localtime()
    return t.tm_hour * 60 + t.tm_min


async def _store(
    service: StreamService, user: User, msg: m.PutFiles, payload: bytes
) -> list[Stored]:
    files = decode_batch(msg, payload)
    names = [_checked(e) for e, _ in files]
    unique = set(names)
    if len(unique) != len(names):
        raise UsageError("a batch naming the same file twice; push them apart")
    for name in names:
        cut = name.rfind("/")
        while cut > 0:
            if name[:cut] in unique:
                raise UsageError(
                    f"a batch holds {shown(name[:cut])} both as a file and as a folder"
                )
            cut = name.rfind("/", 0, cut)
    total = sum(e.size for e, _ in files)
    limit = await quota.quota_of(service.db, user.id)
    if not limit:
        return await _write_and_publish(service, user, msg.sid, files, names)
    async with service.quota_lock:
        used = await quota.usage(service.db, user.id, but_names=names)
        if used + total > limit:
            service.metrics.refused.labels("quota").inc()
            await service.events.emit(
                "quota_exceeded", user.name, name=names[0], size=total, used=used, quota=limit
            )
            raise QuotaExceeded(
                f"{user.name}'s quota on the hub is {format_bytes(limit)}: "
                f"{format_bytes(used)} in use, {len(names)} files need {format_bytes(total)}"
            )
        return await _write_and_publish(service, user, msg.sid, files, names)


def _checked(entry: BatchEntry) -> str:
    try:
        return check_name(entry.name)
    except UsageError as exc:
        raise UsageError(f"a batch holds a bad name {shown(entry.name)}: {exc.message}") from None


async def _write_and_publish(
    service: StreamService,
    user: User,
    sid: str,
    files: Sequence[tuple[BatchEntry, memoryview]],
    names: list[str],
) -> list[Stored]:
    if service.bucket is not None:
        return await _put_in_bucket(service, user, files, names)
    layout = service.layout
    folder = layout.partial_path(user.id, sid).parent
    # Partials of this attempt alone: another node (or a retry racing a
    # slow first try) taking the same batch writes files of its own.
    attempt = secrets.token_hex(4)
    parts = [folder / f"{sid}.{attempt}.{n}{STALE_SUFFIX}" for n in range(len(files))]
    targets = [layout.file_path(user.id, name) for name in names]
    top = layout.file_path(user.id, "x").parent
    stored: list[Stored] = []
    try:
        stored = await asyncio.to_thread(_write_all, folder, parts, files, names, targets, top)
    except OSError as exc:
        await asyncio.to_thread(_remove, parts)
        raise _storage_error(exc, names[0]) from None
    except FreightError:
        await asyncio.to_thread(_remove, parts)
        raise
    renamed, failure = await asyncio.to_thread(_rename_all, parts, targets, stored)
    if failure is not None:
        await asyncio.to_thread(_remove, parts)
    if renamed:
        try:
            await service.db.publish_many(user.id, renamed)
        except SQLAlchemyError as exc:
            raise StorageError(f"the hub could not record a batch: {exc}") from None
    if failure is not None:
        raise _storage_error(failure, stored[min(len(renamed), len(stored) - 1)][0])
    return renamed


async def _put_in_bucket(
    service: StreamService,
    user: User,
    files: Sequence[tuple[BatchEntry, memoryview]],
    names: list[str],
) -> list[Stored]:
    """With a bucket: every file hashed and checked, written there as its
    content, then all recorded in one transaction (all or none)."""
    bucket = service.bucket
    assert bucket is not None
    stored: list[Stored] = []
    for (entry, data), name in zip(files, names, strict=True):
        digest = digest_bytes(data)
        check_digest(entry, digest)
        stored.append((name, entry.size, digest, entry.mtime))
    gate = asyncio.Semaphore(16)

    async def put(digest: str, data: memoryview) -> None:
        async with gate:
            await bucket.put_bytes(content_key(digest), data)

    with bucket.holding(s[2] for s in stored):  # the sweep waits for the records
        async with bucket_away():  # the client sends the batch again once it answers
            await asyncio.gather(*(put(s[2], d) for s, (_, d) in zip(stored, files, strict=True)))
        try:
            await service.db.publish_many(user.id, stored)
        except SQLAlchemyError as exc:
            raise StorageError(f"the hub could not record a batch: {exc}") from None
    return stored


def _write_all(
    folder: Path,
    parts: list[Path],
    files: Sequence[tuple[BatchEntry, memoryview]],
    names: list[str],
    targets: list[Path],
    top: Path,
) -> list[Stored]:
    """Check, hash and write every file of the batch; make them durable."""
    _check_targets(names, targets, top)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Stored] = []
    for (entry, data), name, part in zip(files, names, parts, strict=True):
        digest = digest_bytes(data)
        check_digest(entry, digest)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view, pos = data, 0
            while pos < len(view):
                pos += os.write(fd, view[pos:])
            if entry.mtime:
                os.utime(fd, (entry.mtime, entry.mtime))
        finally:
            os.close(fd)
        out.append((name, entry.size, digest, entry.mtime))
    _sync(folder)
    return out


def _check_targets(names: list[str], targets: list[Path], top: Path) -> None:
    """Refuse, before anything is written, a name whose place is taken by a
    folder, or whose folder is taken by a file (the account's folder
    ``top`` and above are the hub's own). Each folder is looked at once."""
    seen: set[Path] = set()
    depth = len(top.parts)
    for name, target in zip(names, targets, strict=True):
        if os.path.isdir(target):
            raise UsageError(f"{shown(name)} is a folder on the hub; choose another name")
        parent = target.parent
        while len(parent.parts) > depth and parent not in seen:
            if os.path.isfile(parent):
                raise UsageError(f"{shown(name)} lies below a file on the hub; choose another name")
            seen.add(parent)
            parent = parent.parent


def _rename_all(
    parts: list[Path], targets: list[Path], stored: list[Stored]
) -> tuple[list[Stored], OSError | None]:
    """Rename every file into place and make the renames durable. Returns
    the files that took their place (all, unless an OSError stopped it:
    returned too, the rest are still partials)."""
    renamed: list[Stored] = []
    failure: OSError | None = None
    made: set[Path] = set()
    try:
        for part, target, item in zip(parts, targets, stored, strict=True):
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            os.replace(part, target)
            renamed.append(item)
        if renamed:
            _sync(targets[0].parent)
    except OSError as exc:
        failure = exc
    return renamed, failure


def _sync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync_filesystem(fd)
    finally:
        os.close(fd)


def _remove(parts: list[Path]) -> None:
    for p in parts:
        p.unlink(missing_ok=True)


def _storage_error(exc: OSError, name: str) -> FreightError:
    if exc.errno in _DISK_FULL:
        return DiskFull(f"the hub ran out of disk space receiving {shown(name)}")
    return StorageError(f"the hub could not store {shown(name)}: {exc.strerror}")


def purge_stale(folder: Path, older_than: float) -> int:
    """Remove batch partials a hub that died mid-batch left behind (by the
    time they were written: their mtime is the source's)."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.glob(f"*/*{STALE_SUFFIX}"):
        try:
            if path.lstat().st_ctime < older_than:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


# --- pulls ---------------------------------------------------------------------


async def get_files(
    service: StreamService, user: User, port: Port, msg: m.GetFiles, payload: bytes
) -> None:
    """Answer a request for a batch of small files with one PutFiles
    holding all of them (each with the digest recorded when it was stored,
    so the client checks the bytes end to end), or Abort."""
    key = f"batch:{user.id}:{msg.sid}"
    service.bandwidth.register(key)
    try:
        reply, blob = await _gather(service, user, msg, payload)
        rate = service.bandwidth.rate_for(key, _minute_of_day())
        if rate > 0:  # the hub's budget: this batch leaves no faster
            await asyncio.sleep(len(blob) / rate)
        await port.send(reply, blob)
    except FreightError as exc:
        service.log.info(
            "batch_refused", sid=msg.sid, user=user.name, code=exc.code, error=exc.message
        )
        await port.send(m.Abort(sid=msg.sid, code=exc.code, message=exc.message))
        return
    finally:
        service.bandwidth.unregister(key)
    service.metrics.bytes_sent.inc(len(blob))


async def _gather(
    service: StreamService, user: User, msg: m.GetFiles, payload: bytes
) -> tuple[m.PutFiles, bytes]:
    names = [_checked_name(n) for n in decode_request(payload)]
    rows = await service.db.files_named(user.id, names)
    missing = [n for n in names if n not in rows]
    if missing:
        raise NotFound(f"no file named {shown(missing[0])} on the hub")
    if sum(rows[n].size for n in names) > MAX_BATCH_BYTES or any(
        rows[n].size > SMALL_FILE_BYTES for n in names
    ):
        raise UsageError("a batch request for more than a batch holds; ask for fewer files")
    paths = [service.layout.file_path(user.id, n) for n in names]
    sizes = [rows[n].size for n in names]
    try:
        if service.bucket is not None:
            keys = [content_key(rows[n].digest) for n in names]
            async with bucket_away():
                blobs = await service.bucket.read_all(keys, sizes)
        else:
            blobs = await asyncio.to_thread(_read_all, paths, sizes)
    except OSError as exc:
        raise StorageError(f"the hub could not read {shown(names[0])}: {exc.strerror}") from None
    entries = [
        BatchEntry(name=n, size=rows[n].size, mtime=rows[n].mtime, digest=rows[n].digest)
        for n in names
    ]
    return encode_batch(msg.sid, entries, blobs)


def _checked_name(name: str) -> str:
    try:
        return check_name(name)
    except UsageError as exc:
        raise UsageError(f"a batch request for a bad name {shown(name)}: {exc.message}") from None


def _read_all(paths: list[Path], sizes: list[int]) -> list[bytes]:
    """The files' bytes, each exactly the size recorded (else StorageError:
    the file changed under the hub)."""
    out = []
    for path, size in zip(paths, sizes, strict=True):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = os.read(fd, size + 1)
            while len(data) < size + 1:
                more = os.read(fd, size + 1 - len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        if len(data) != size:
            raise StorageError(f"{path.name} on the hub is not the size it was stored with")
        out.append(data)
    return out
