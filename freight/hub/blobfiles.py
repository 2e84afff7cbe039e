"""The hub's stored files when their bytes live in a bucket
(:mod:`freight.store.bucket`, ``--blobs s3://…``).

* A push is received into a partial file on this node's disk as always;
  each checkpoint first writes the bytes since the last one to the bucket
  (:class:`BucketCheckpoints`), so a push resumes on any node: one that
  does not hold the partial rebuilds it from those segments
  (:func:`restore_partial`), and the client checks the prefix's digest.
* A finished push is verified, written as ``content/<digest>``, recorded,
  and its partial and segments removed.
* A pull reads the content in ranges (:class:`BucketSource`).
* Removing a file removes its record; :func:`sweep` removes content no
  record names and segments no push needs, once older than a grace period
  (a push that has just written its content but not yet recorded it is
  never swept from under it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ..engine.hashing import Hasher, new_hasher
from ..engine.partial import CheckpointStore
from ..errors import NodeUnavailable, StorageError
from ..store import Database
from ..store.bucket import (
    MAX_PARTS,
    MIN_PART,
    READ_BLOCK,
    Bucket,
    BucketSpec,
    Listed,
    content_key,
    segment_key,
    segment_range,
    segments_prefix,
)

READ_TIMEOUT = 120.0  # seconds a pull's worker waits for one range
SWEEP_GRACE = 3600.0  # seconds an unnamed object is kept (a publish under way)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@contextlib.asynccontextmanager
async def bucket_away() -> AsyncIterator[None]:
    """A transfer whose bucket does not answer is let go, not failed: a
    push's partial stays, and the client tries again (with its back-off)
    until the store is back (NodeUnavailable, a network error to it)."""
    try:
        yield
    except StorageError as exc:
        raise NodeUnavailable(
            f"{exc.message}; the transfer goes on once it answers",
            hint="the hub's storage is away; the transfer goes on by itself when it is back",
        ) from None


def check_blobs(url: str, endpoint: str = "") -> None:
    """``--blobs`` and ``--s3-endpoint`` as given (ConfigError if wrong)."""
    BucketSpec.parse(url, endpoint or None)


class BucketCheckpoints:
    """A push's checkpoints with its bytes in the bucket: the segment since
    the last recorded checkpoint is written there before a checkpoint is
    recorded (by ``inner``, the database), and only once it holds MIN_PART
    bytes (5 MiB): then the finished content is made of the segments inside
    the store (:func:`store_content`)."""

    def __init__(
        self, inner: CheckpointStore, bucket: Bucket, path: Path, user_id: int, sid: str
    ) -> None:
        self.inner = inner
        self.bucket = bucket
        self.path = path
        self.user_id = user_id
        self.sid = sid
        self.last = 0  # the checkpoint the bucket holds the bytes below
        # This receiver's own name on its segments: no other node's write
        # (a node that lost the push, writing late) ever replaces one.
        self.token = secrets.token_hex(4)
        # Segments known to hold exactly the partial's bytes, from 0 on: those
        # it was rebuilt from and those written here (store_content's parts).
        self.known: list[Listed] = []

    async def load(self) -> int | None:
        return await self.inner.load()

    def resumed(self, checkpoint: int, rebuilt: list[Listed] | None) -> None:
        """The partial holds ``checkpoint`` bytes: rebuilt from ``rebuilt``,
        or (None) found on this node's disk, whose segments are not known
        to hold the same bytes (its content is then sent whole)."""
        self.last = checkpoint
        self.known = list(rebuilt) if rebuilt is not None else []

    async def fresh(self) -> None:
        """A push starting from 0: an earlier attempt's segments go."""
        self.last, self.known = 0, []
        await self.bucket.delete_prefix(segments_prefix(self.user_id, self.sid))

    async def save(self, offset: int) -> None:
        if offset - self.last < MIN_PART:
            # Durable on this node's disk, recorded once a segment the store
            # can copy as a part is in the bucket (a resume goes back to it).
            return
        key = segment_key(self.user_id, self.sid, self.last, offset, self.token)
        async with bucket_away():
            await self.bucket.put_range(key, self.path, self.last, offset)
        self.known.append(Listed(key, offset - self.last, time.time()))
        await self.inner.save(offset)
        self.last = offset

    async def clear(self) -> None:
        await self.inner.clear()
        await drop_segments(self.bucket, self.user_id, self.sid)


async def drop_segments(bucket: Bucket, user_id: int, sid: str) -> None:
    """A push's segments, no longer needed, removed if the bucket answers
    (else the sweep removes them later: the push's record is gone)."""
    with contextlib.suppress(StorageError):
        await bucket.delete_prefix(segments_prefix(user_id, sid))


async def _chain(bucket: Bucket, user_id: int, sid: str, upto: int) -> list[Listed] | None:
    """The push's segments that follow each other from 0 to ``upto`` (the
    longest at each step), or None when they do not reach it. A segment a
    node that lost the push wrote late holds the same bytes of the same
    source; if the source changed, the client's check of the prefix's
    digest refuses the resume and the push starts afresh."""
    segs: dict[int, list[tuple[int, Listed]]] = {}
    for o in await bucket.list(segments_prefix(user_id, sid)):
        r = segment_range(o.key)
        if r is not None and r[1] <= upto and r[1] - r[0] == o.size:
            segs.setdefault(r[0], []).append((r[1], o))
    chain: list[Listed] = []
    at = 0
    while at < upto:
        if at not in segs:
            return None
        at, best = max(segs[at], key=lambda e: e[0])
        chain.append(best)
    return chain


async def restore_partial(
    bucket: Bucket, user_id: int, sid: str, checkpoint: int, path: Path
) -> list[Listed] | None:
    """Rebuild the partial file ``path`` from the push's segments up to
    ``checkpoint`` (another node received them): the segments used, or
    None when they do not reach it (the push then starts afresh)."""
    chain = await _chain(bucket, user_id, sid, checkpoint)
    if chain is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        at = 0
        for seg in chain:
            data = await bucket.read(seg.key, 0, seg.size)
            await asyncio.to_thread(_pwrite_all, fd, data, at)
            at += seg.size
        await asyncio.to_thread(os.fsync, fd)
    finally:
        os.close(fd)
    return chain


async def store_content(
    bucket: Bucket, path: Path, digest: str, known: list[Listed], upto: int
) -> None:
    """A verified push's bytes (the partial ``path``) as its content: the
    segments ``known`` to hold its first ``upto`` bytes copied inside the
    store and the rest sent, when the store allows those parts (each but
    the last at least 5 MiB); else the whole file sent. Only segments known
    to hold the verified bytes are used: the content is never other bytes
    than those that hashed to ``digest``."""
    size = (await asyncio.to_thread(os.stat, path)).st_size
    whole = (
        upto < MIN_PART
        or sum(s.size for s in known) != upto
        or any(s.size < MIN_PART for s in known)
        or len(known) >= MAX_PARTS
    )
    if whole:
        await bucket.put_file(content_key(digest), path)
        return
    await bucket.compose(content_key(digest), [s.key for s in known], path, upto, size)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class BucketSource:
    """A stored file's content in the bucket, read for a pull (an engine
    :class:`~freight.engine.streams.Source`). Its reads come from worker
    threads; they are served from windows of WINDOW bytes, each one ranged
    request run on the hub's event loop, the next window asked for while
    the current one is read (a request costs a round trip to the store:
    one per 1 MiB chunk was 7 MB/s against moto, 20-50 ms each on S3)."""

    WINDOW = 8 * 1024 * 1024

    def __init__(self, bucket: Bucket, digest: str, size: int) -> None:
        self.bucket = bucket
        self.key = content_key(digest)
        self.size = size
        self.loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._windows: dict[int, concurrent.futures.Future[bytes]] = {}

    def read(self, offset: int, n: int) -> bytes:
        pieces = []
        at, end = offset, offset + n
        while at < end:
            w = at // self.WINDOW
            data = self._window(w)
            lo = at - w * self.WINDOW
            piece = data[lo : lo + min(end - at, self.WINDOW - lo)]
            if not piece:
                raise StorageError(f"{self.key} in the hub's bucket is shorter than recorded")
            pieces.append(piece)
            at += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _window(self, w: int) -> bytes:
        with self._lock:
            for old in [k for k in self._windows if k < w - 1]:  # read past: dropped
                self._windows.pop(old).cancel()
            for k in (w, w + 1):
                if k not in self._windows and k * self.WINDOW < self.size:
                    start = k * self.WINDOW
                    read = self.bucket.read(self.key, start, min(self.WINDOW, self.size - start))
                    self._windows[k] = asyncio.run_coroutine_threadsafe(read, self.loop)
            future = self._windows[w]
        try:
            return future.result(READ_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise StorageError(f"the hub's bucket did not answer in {READ_TIMEOUT:.0f} s") from None

    def prefix_hasher(self, length: int) -> Hasher:
        h = new_hasher()
        for at in range(0, length, READ_BLOCK):
            h.update(self.read(at, min(READ_BLOCK, length - at)))
        return h

    def close(self) -> None:
        with self._lock:
            for future in self._windows.values():
                future.cancel()
            self._windows.clear()


async def sweep(bucket: Bucket, db: Database, *, grace: float = SWEEP_GRACE) -> tuple[int, int]:
    """Remove content no record names and segments of pushes no longer
    under way, each older than ``grace`` seconds. Returns (content objects,
    segments) removed."""
    bucket.touched()  # from here on, content this node holds or lets go is noted
    cutoff = time.time() - grace
    old = {o.key.rsplit("/", 1)[-1]: o for o in await bucket.list("content/")}
    candidates = [d for d, o in old.items() if o.modified < cutoff and _DIGEST.match(d)]
    named = await db.referenced_digests(candidates)
    # Content written here and recorded only after the query above (or
    # still being written) is not removed: this node's own uploads are
    # safe whatever the grace; another node's are safe by the grace.
    busy = bucket.touched()
    drop = [content_key(d) for d in candidates if d not in named and d not in busy]
    if drop:
        await bucket.delete(drop)
    pushes: dict[tuple[int, str], list[tuple[str, float]]] = {}
    for o in await bucket.list("partial/"):
        parts = o.key.split("/")
        if len(parts) == 4 and parts[1].isdigit():
            pushes.setdefault((int(parts[1]), parts[2]), []).append((o.key, o.modified))
    segs: list[str] = []
    for (user_id, sid), objs in pushes.items():
        if max(m for _, m in objs) < cutoff and await db.get_stream(user_id, sid) is None:
            segs += [k for k, _ in objs]
    if segs:
        await bucket.delete(segs)
    return len(drop), len(segs)
