"""Flow control by bytes, with high and low water marks (the shape of
uvicorn's ``flow_control.py``).

A peer decides how large its frames are, up to 16 MiB each, so a bound in
frames is no bound at all: every queue a peer fills is bounded in bytes
here. A producer waits (or stops reading its socket) once ``high`` bytes
are held, and goes on only when the consumers have brought it down to
``low``, so it is not woken for every frame taken.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Final, Generic, TypeVar

# What a queued frame costs besides its payload (the decoded header object
# and its bookkeeping), so that a flood of empty frames is bounded too.
FRAME_OVERHEAD: Final = 512

T = TypeVar("T")


class Budget:
    """Bytes held by one connection's queues, shared by all of them."""

    def __init__(self, high: int, low: int | None = None) -> None:
        self.high = high
        self.low = high // 2 if low is None else low
        self.held = 0
        self._room: asyncio.Event | None = None

    def add(self, n: int) -> None:
        self.held += n

    def release(self, n: int) -> None:
        self.held = max(0, self.held - n)
        if self._room is not None and self.held <= self.low:
            self._room.set()

    @property
    def full(self) -> bool:
        return self.held >= self.high

    async def wait_room(self) -> None:
        """Return at once below ``high``; once there, wait for ``low``."""
        if not self.full:
            return
        self._room = asyncio.Event()
        try:
            await self._room.wait()
        finally:
            self._room = None


class ByteQueue(Generic[T]):
    """A FIFO whose bytes count against a :class:`Budget`. Items are pushed
    without waiting (the producer waits on the budget first); taking one
    gives its bytes back. Exceptions queued to fail a reader cost nothing."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._items: collections.deque[tuple[T | BaseException, int]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T | BaseException, size: int = 0) -> None:
        self._items.append((item, size))
        self.budget.add(size)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> T | BaseException:
        if not self._items:
            raise asyncio.QueueEmpty
        item, size = self._items.popleft()
        self.budget.release(size)
        return item

    async def get(self) -> T | BaseException:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()

    def clear(self) -> None:
        """Drop everything queued (its reader is gone) and give the bytes back."""
        while self._items:
            self.get_nowait()

    def keep(self, wanted: Callable[[T | BaseException], bool]) -> None:
        """Drop what is queued but the items ``wanted`` says to keep (in order)."""
        kept = [(item, size) for item, size in self._items if wanted(item)]
        self.budget.release(sum(size for _, size in self._items) - sum(s for _, s in kept))
        self._items = collections.deque(kept)


class ReadFlow:
    """Pauses a transport's reading while ``high`` bytes or more were
    received but not yet consumed; resumes once they are down to ``low``."""

    def __init__(self, high: int, low: int | None = None) -> None:
        self.high = high
        self.low = high // 4 if low is None else low
        self.held = 0
        self.paused = False

    def received(self, n: int, transport: asyncio.Transport) -> None:
        self.held += n
        if self.held >= self.high and not self.paused:
            self.paused = True
            transport.pause_reading()

    def consumed(self, n: int, transport: asyncio.Transport | None) -> None:
        self.held = max(0, self.held - n)
        if self.paused and self.held <= self.low:
            self.paused = False
            if transport is not None and not transport.is_closing():
                transport.resume_reading()
