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
import os
import re
import time
from pathlib import Path

from ..engine.hashing import Hasher, new_hasher
from ..engine.partial import CheckpointStore
from ..errors import StorageError
from ..store import Database
from ..store.bucket import (
    READ_BLOCK,
    Bucket,
    BucketSpec,
    content_key,
    segment_key,
    segment_range,
    segments_prefix,
)

READ_TIMEOUT = 120.0  # seconds a pull's worker waits for one range
SWEEP_GRACE = 3600.0  # seconds an unnamed object is kept (a publish under way)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def check_blobs(url: str, endpoint: str = "") -> None:
    """``--blobs`` and ``--s3-endpoint`` as given (ConfigError if wrong)."""
    BucketSpec.parse(url, endpoint or None)


class BucketCheckpoints:
    """A push's checkpoints with its bytes in the bucket: the segment since
    the last checkpoint is written there before the checkpoint is recorded
    (by ``inner``, the database)."""

    def __init__(
        self, inner: CheckpointStore, bucket: Bucket, path: Path, user_id: int, sid: str
    ) -> None:
        self.inner = inner
        self.bucket = bucket
        self.path = path
        self.user_id = user_id
        self.sid = sid
        self.last = 0  # the checkpoint the bucket holds the bytes below

    async def load(self) -> int | None:
        return await self.inner.load()

    async def save(self, offset: int) -> None:
        if offset > self.last:
            key = segment_key(self.user_id, self.sid, self.last, offset)
            await self.bucket.put_range(key, self.path, self.last, offset)
        await self.inner.save(offset)
        self.last = offset

    async def clear(self) -> None:
        await self.inner.clear()
        await self.bucket.delete_prefix(segments_prefix(self.user_id, self.sid))


async def restore_partial(
    bucket: Bucket, user_id: int, sid: str, checkpoint: int, path: Path
) -> bool:
    """Rebuild the partial file ``path`` from the push's segments up to
    ``checkpoint`` (another node received them). False when the segments
    do not reach it (the push then starts afresh)."""
    chain: list[tuple[str, int, int]] = []
    at = 0
    segs = sorted(
        (r[0], r[1], o.key)
        for o in await bucket.list(segments_prefix(user_id, sid))
        if (r := segment_range(o.key)) is not None
    )
    while at < checkpoint:
        best = max(((e, k) for s, e, k in segs if s == at and e <= checkpoint), default=None)
        if best is None:
            return False
        chain.append((best[1], at, best[0]))
        at = best[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for key, start, end in chain:
            data = await bucket.read(key, 0, end - start)
            await asyncio.to_thread(_pwrite_all, fd, data, start)
        await asyncio.to_thread(os.fsync, fd)
    finally:
        os.close(fd)
    return True


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class BucketSource:
    """A stored file's content in the bucket, read for a pull (an engine
    :class:`~freight.engine.streams.Source`): its reads come from worker
    threads and run on the hub's event loop."""

    def __init__(self, bucket: Bucket, digest: str, size: int) -> None:
        self.bucket = bucket
        self.key = content_key(digest)
        self.size = size
        self.loop = asyncio.get_running_loop()

    def read(self, offset: int, n: int) -> bytes:
        future = asyncio.run_coroutine_threadsafe(self.bucket.read(self.key, offset, n), self.loop)
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
        return None


async def sweep(bucket: Bucket, db: Database, *, grace: float = SWEEP_GRACE) -> tuple[int, int]:
    """Remove content no record names and segments of pushes no longer
    under way, each older than ``grace`` seconds. Returns (content objects,
    segments) removed."""
    cutoff = time.time() - grace
    old = {o.key.rsplit("/", 1)[-1]: o for o in await bucket.list("content/")}
    candidates = [d for d, o in old.items() if o.modified < cutoff and _DIGEST.match(d)]
    named = await db.referenced_digests(candidates)
    drop = [content_key(d) for d in candidates if d not in named]
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
