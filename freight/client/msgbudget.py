"""What a messaging host has handed the hub and not yet had answered.

The hub keeps at most :data:`~freight.protocol.msgdirectory.MAX_INFLIGHT`
messages and :data:`~freight.protocol.msgdirectory.MAX_INFLIGHT_BYTES`
payload bytes in flight from one host, and answers ``busy`` to anything
beyond. A host sending more than that only pays for it: each refused
message crossed the wire whole (up to 1 MiB) and, being retried until its
timeout, crosses it again, so a recipient that never reads made a flood
that held back every other message of the host. :class:`SendBudget` keeps
the same account on the sending side: a message is handed on only when the
hub would take it, otherwise it waits here (within its own deadline) for
an answer to free room.

An entry is freed by the hub's answer for that (message, host), whatever
it says and even after the sender stopped waiting (the hub holds the
message until then), and all at once when the host attaches again (the
hub forgot what the old attachment had in flight).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from ..protocol.msgdirectory import MAX_INFLIGHT, MAX_INFLIGHT_BYTES

__all__ = ["Congestion", "SendBudget", "Unanswered"]

MAX_JAMS: Final = 4096  # (host, app) pairs remembered as busy


class Unanswered:
    """The messages a host has accepted and not yet had answered: at most
    ``count`` of them and ``size`` bytes of bodies (a body larger than
    ``size`` goes when it is the only one). Whoever comes when there is no
    room waits, first come first served; a message not waited for
    (``wait=False``) holds its room until its answer as any other does, so
    an application posting without end is held back here, not in memory."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size
        self.n = self.bytes = 0
        self._waiters: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.n < self.count and (self.bytes + n <= self.size or self.n == 0)

    def _grant(self, n: int) -> None:
        self.n += 1
        self.bytes += n

    def try_take(self, n: int) -> bool:
        """Room for a body of ``n`` bytes if there is some now (and nobody
        waits before)."""
        if not self._waiters and self._fits(n):
            self._grant(n)
            return True
        return False

    async def take(self, n: int) -> None:
        """Room for a body of ``n`` bytes, once there is."""
        if self.try_take(n):
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, n))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted as it was cancelled: handed on
            raise

    def give(self, n: int) -> None:
        """A message of ``n`` bytes was answered (or given up)."""
        self.n -= 1
        self.bytes -= n
        while self._waiters:
            fut, m = self._waiters[0]
            if fut.cancelled():
                self._waiters.popleft()
                continue
            if not self._fits(m):
                return
            self._waiters.popleft()
            self._grant(m)
            fut.set_result(None)


class SendBudget:
    """Messages in flight from this host, keyed by (message id, host id)."""

    def __init__(self, max_count: int = MAX_INFLIGHT, max_bytes: int = MAX_INFLIGHT_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.held: dict[tuple[str, str], int] = {}
        self.bytes = 0
        self._freed = asyncio.Event()

    def fits(self, key: tuple[str, str], size: int) -> bool:
        """Whether the hub would take ``size`` more bytes as ``key`` (a
        message sent again while in flight is counted there once)."""
        if key in self.held:
            return True
        return len(self.held) < self.max_count and self.bytes + size <= self.max_bytes

    def try_take(self, key: tuple[str, str], size: int) -> bool:
        """Room for ``key`` if it fits now."""
        if not self.fits(key, size):
            return False
        if key not in self.held:
            self.held[key] = size
            self.bytes += size
        return True

    async def take(self, key: tuple[str, str], size: int) -> None:
        """Room for ``key``: waits until it fits (the caller bounds the wait)."""
        while not self.try_take(key, size):
            self._freed.clear()
            await self._freed.wait()

    def release(self, key: tuple[str, str]) -> None:
        """The hub answered ``key`` (or never took it): its room is free."""
        size = self.held.pop(key, None)
        if size is not None:
            self.bytes -= size
            self._freed.set()

    def clear(self) -> None:
        """A new attachment: the hub holds nothing of ours any more."""
        self.held.clear()
        self.bytes = 0
        self._freed.set()


@dataclass(slots=True)
class _Jam:
    """A (host, app) that answered busy: one message at a time, paced."""

    delay: float
    next_at: float
    probe: tuple[str, str] | None = None  # (message id, host id) out now
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Congestion:
    """Per (host id, app): once a message to it was answered ``busy`` (its
    registration's queue is full, or the hub's bound for it is reached),
    the messages to it go one at a time (a probe), the next no sooner than
    a back-off (doubling from ``first`` up to ``cap`` while the answers stay
    busy) after the last, until one is taken; the others wait here within
    their own deadline instead of crossing the wire to be refused. A
    recipient that never reads then costs one message per back-off, not a
    flood that holds back every other message of this host."""

    def __init__(self, clock: Callable[[], float], first: float, cap: float) -> None:
        self._clock, self.first, self.cap = clock, first, cap
        self._jams: dict[tuple[str, str], _Jam] = {}
        self._probes: dict[tuple[str, str], tuple[str, str]] = {}  # (mid, hid) -> (hid, app)

    def jammed(self, hid: str, app: str) -> bool:
        return (hid, app) in self._jams

    async def admit(self, mid: str, hid: str, app: str) -> None:
        """Until message ``mid`` may go to ``hid`` (the caller bounds the wait)."""
        key = (hid, app)
        while (jam := self._jams.get(key)) is not None:
            now = self._clock()
            if jam.probe is None and now >= jam.next_at:
                jam.probe = (mid, hid)
                self._probes[jam.probe] = key
                return
            jam.changed.clear()
            if jam.probe is not None:
                await jam.changed.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(jam.next_at - now):
                    await jam.changed.wait()

    def answered(self, mid: str, hid: str, app: str | None, busy: bool) -> None:
        """The answer for ``mid`` from ``hid`` (``app`` if still known)."""
        key = self._probes.pop((mid, hid), None) or ((hid, app) if app is not None else None)
        if key is None:
            return
        jam = self._jams.get(key)
        if not busy:
            if jam is not None:
                del self._jams[key]
                jam.changed.set()
            return
        now = self._clock()
        if jam is None:
            if len(self._jams) >= MAX_JAMS:
                self._prune()
            self._jams[key] = _Jam(self.first, now + self.first)
        elif jam.probe == (mid, hid):
            jam.probe = None
            jam.delay = min(2 * jam.delay, self.cap)
            jam.next_at = now + jam.delay
            jam.changed.set()

    def done(self, mid: str, hids: Iterable[str]) -> None:
        """Message ``mid`` is no longer waited for: a probe of it unanswered
        (a recipient holding it without reading) lets the next one go."""
        for hid in hids:
            key = self._probes.pop((mid, hid), None)
            jam = self._jams.get(key) if key is not None else None
            if jam is not None and jam.probe == (mid, hid):
                jam.probe = None
                jam.next_at = self._clock() + jam.delay
                jam.changed.set()

    def clear(self) -> None:
        """A new attachment: what was busy is to be asked again."""
        jams, self._jams = self._jams, {}
        self._probes.clear()
        for jam in jams.values():
            jam.changed.set()

    def _prune(self) -> None:
        for key, jam in list(self._jams.items()):
            if jam.probe is None:
                del self._jams[key]
                jam.changed.set()


class Outbox:
    """The budget and the congestion together, as a host sends: a message
    goes to a host once both let it (:meth:`ready` at once, or after
    :meth:`admit`, whose wait the caller bounds by the message's deadline)."""

    def __init__(self, clock: Callable[[], float], first: float, cap: float) -> None:
        self.budget = SendBudget()
        self.jams = Congestion(clock, first, cap)

    def ready(self, mid: str, hid: str, app: str, size: int) -> bool:
        return not self.jams.jammed(hid, app) and self.budget.try_take((mid, hid), size)

    async def admit(self, mid: str, hid: str, app: str, size: int) -> None:
        await self.jams.admit(mid, hid, app)
        await self.budget.take((mid, hid), size)

    def unsent(self, mid: str, hid: str) -> None:
        """Admitted but it did not leave: no answer will come for it."""
        self.budget.release((mid, hid))
        self.jams.done(mid, (hid,))

    def answered(self, mid: str, hid: str, app: str | None, reason: str) -> None:
        self.budget.release((mid, hid))
        self.jams.answered(mid, hid, app, reason == "busy")

    def done(self, mid: str, hids: Iterable[str]) -> None:
        self.jams.done(mid, hids)

    def clear(self) -> None:
        self.budget.clear()
        self.jams.clear()
