"""Read-ahead and write-behind: the disk works in worker threads while the
event loop seals, sends and receives, with at most a given number of bytes
in flight either way.

:class:`ReadAhead` reads (and prepares: compresses, checksums) the next
blocks of a source while earlier ones are sent; the BLAKE3 of the source is
fed in order. :class:`WriteBehind` runs writes in one worker thread, in
order, while the next records arrive; a failure stops the writes after it
and is raised to the caller at its next call. Neither starts an asyncio
task: the work is futures of their own thread pool, so closing one cancels
what has not started and waits for what has (the caller may close the
file right after).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from .hashing import Hasher

T = TypeVar("T")
Read = Callable[[int, int], bytes]  # (offset, length) -> at most length bytes

READ_AHEAD_BYTES = 4 * 1024 * 1024
WRITE_BEHIND_BYTES = 8 * 1024 * 1024


def _raw(data: bytes) -> bytes:
    return data


class ReadAhead(Generic[T]):
    """Blocks of a source, read and prepared in ``workers`` threads ahead of
    :meth:`take`, at most ``max_bytes`` of them queued (and always at least
    one). With one worker the hasher is fed in the worker, in order; with
    more it is fed by :meth:`take`, as blocks are taken."""

    def __init__(
        self,
        read: Read,
        hasher: Hasher | None,
        offset: int,
        *,
        prepare: Callable[[bytes], T],
        max_bytes: int = READ_AHEAD_BYTES,
        workers: int = 1,
        name: str = "freight-read",
    ) -> None:
        self.read = read
        self.hasher = hasher  # already holds the bytes before ``offset``
        self.offset = offset  # next byte to hand to a worker
        self.prepare = prepare
        self.max_bytes = max_bytes
        self.queued = 0  # bytes asked of the workers and not taken yet
        self._hash_in_worker = workers == 1 and hasher is not None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._queue: collections.deque[tuple[int, concurrent.futures.Future[tuple[bytes, T]]]] = (
            collections.deque()
        )

    def _work(self, offset: int, n: int, prepare: Callable[[bytes], T]) -> tuple[bytes, T]:
        raw = self.read(offset, n)
        if self._hash_in_worker:
            assert self.hasher is not None
            self.hasher.update(raw)
        return raw, prepare(raw)

    def fill(self, end: int, block: int, prepare: Callable[[bytes], T] | None = None) -> None:
        """Queue reads of ``block`` bytes up to offset ``end`` until
        ``max_bytes`` are on their way."""
        job = prepare or self.prepare
        while self.offset < end and (not self._queue or self.queued + block <= self.max_bytes):
            n = min(block, end - self.offset)
            self._queue.append((n, self._pool.submit(self._work, self.offset, n, job)))
            self.offset += n
            self.queued += n

    def __len__(self) -> int:
        return len(self._queue)

    def next_len(self) -> int:
        """Length asked for the next block (it may come back shorter)."""
        return self._queue[0][0]

    async def take_raw(self) -> tuple[bytes, T]:
        """The next block as read, and as prepared."""
        n, fut = self._queue.popleft()
        self.queued -= n
        raw, item = await asyncio.wrap_future(fut)
        if self.hasher is not None and not self._hash_in_worker:
            self.hasher.update(raw)
        return raw, item

    async def take(self) -> T:
        return (await self.take_raw())[1]

    async def aclose(self) -> None:
        for _, fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self.queued = 0
        # Wait for a block being read right now: the caller may close the file.
        await asyncio.to_thread(self._pool.shutdown, True)


async def read_blocks(
    read: Read,
    hasher: Hasher | None,
    offset: int,
    end: int,
    *,
    block: int,
    max_bytes: int = READ_AHEAD_BYTES,
) -> AsyncGenerator[bytes, None]:
    """The bytes of ``[offset, end)`` in blocks read ahead in a worker
    thread (hashed there, in order); stops after a short block (the source
    shrank: the caller compares what it got with what it expected)."""
    reader: ReadAhead[bytes] = ReadAhead(read, hasher, offset, prepare=_raw, max_bytes=max_bytes)
    try:
        while True:
            reader.fill(end, block)
            if not reader:
                return
            want = reader.next_len()
            data = await reader.take()
            if data:
                yield data
            if len(data) < want:
                return
    finally:
        await reader.aclose()


class WriteBehind:
    """Runs calls in one worker thread, in order, with at most ``max_bytes``
    (as the callers count them) submitted and not yet done. After a call
    fails, later ones do not run and the failure is raised by the next
    :meth:`submit` or :meth:`call`."""

    def __init__(self, max_bytes: int = WRITE_BEHIND_BYTES, *, name: str = "freight-write") -> None:
        self.max_bytes = max_bytes
        self.pending = 0  # bytes submitted and not known to be done
        self.failure: Exception | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._queue: collections.deque[tuple[int, concurrent.futures.Future[Any]]] = (
            collections.deque()
        )

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self.failure is not None:
            raise self.failure
        try:
            return fn(*args)
        except Exception as exc:  # kept for the caller to raise, and stops the rest
            self.failure = exc
            raise

    def _reap(self) -> None:
        while self._queue and self._queue[0][1].done():
            n, _ = self._queue.popleft()
            self.pending -= n

    async def submit(self, fn: Callable[..., Any], *args: Any, size: int = 0) -> None:
        """Queue ``fn(*args)``; wait while more than ``max_bytes`` are queued."""
        self._reap()
        while self._queue and self.pending + size > self.max_bytes:
            oldest = asyncio.wrap_future(self._queue[0][1])
            await asyncio.wait([oldest])
            if not oldest.cancelled():
                oldest.exception()  # seen: a failure is raised below, as self.failure
            self._reap()
        if self.failure is not None:
            raise self.failure
        self._queue.append((size, self._pool.submit(self._run, fn, args)))
        self.pending += size

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` after everything submitted so far; its result."""
        self._reap()
        if self.failure is not None:
            raise self.failure
        fut = self._pool.submit(self._run, fn, args)
        self._queue.append((0, fut))
        return await asyncio.wrap_future(fut)

    async def aclose(self) -> None:
        """Drop what has not started; wait for a call running now."""
        for _, fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self.pending = 0
        await asyncio.to_thread(self._pool.shutdown, True)
