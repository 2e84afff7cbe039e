"""Pacing relayed writes to a ``--limit`` (docs/protocol.md §8).

A :class:`Pacer` wraps the sender's token bucket
(:class:`freight.protocol.bucket.TokenBucket`) for a coroutine that writes:
``await pacer.pace(n)`` before ``n`` bytes go out. Its rate is the
effective rate of §8.1, the smaller of this end's own limit and the rate
the other end assigned, either of which may be 0 (no limit).

A percentage limit (``50%``) is a share of the path's measured available
bandwidth; :func:`resolve_limit` turns a :class:`~freight.units.Limit`
into bytes per second for one path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ..errors import UsageError
from ..protocol.bucket import TokenBucket
from ..units import Limit
from .probe import available_bandwidth

__all__ = ["Pacer", "effective_rate", "resolve_limit"]

# The smallest rate a percentage resolves to: a path measured as nearly
# idle still moves (1 KiB/s, the hub's smallest fair share).
MIN_RATE = 1024


def effective_rate(own: int, assigned: int) -> int:
    """§8.1: the smaller of two rates, where 0 means no limit."""
    if own and assigned:
        return min(own, assigned)
    return own or assigned


async def resolve_limit(limit: Limit, session: Any, direction: Literal["up", "down"] = "up") -> int:
    """Bytes per second for ``limit`` (0: none). A percentage is a share of
    the available bandwidth of this end's path to the hub, measured now
    (:func:`freight.client.probe.available_bandwidth`) ``up`` for a sender,
    ``down`` for a receiver: on a relayed transfer each end keeps to its
    own share of its own hop, and the smaller one holds the transfer."""
    if limit.percent is None:
        return limit.rate or 0
    if session is None:
        raise UsageError(f"--limit {limit.percent:g}% needs a hub to measure the path to")
    available = await available_bandwidth(session, direction)
    return max(MIN_RATE, int(available * limit.percent / 100))


class Pacer:
    """Lets bytes out no faster than ``rate`` bytes/s (0: as fast as they
    come). ``own`` is this end's limit, ``assigned`` the other end's; the
    effective rate is re-computed whenever either changes."""

    def __init__(
        self,
        own: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if own < 0:
            raise UsageError("a rate limit cannot be negative")
        self.own = own
        self.assigned = 0
        self._clock = clock
        self._sleep = sleep
        self._bucket = TokenBucket(own, clock())
        self.waited = 0.0  # seconds spent waiting, for reports and tests

    @property
    def rate(self) -> int:
        return self._bucket.rate

    def assign(self, assigned: int) -> None:
        """The other end's limit (0: none)."""
        self.assigned = max(0, assigned)
        self._bucket.set_rate(effective_rate(self.own, self.assigned), self._clock())

    async def pace(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may go (returns at once when not limited)."""
        if not self._bucket.rate:
            return
        delay = self._bucket.reserve(nbytes, self._clock())
        if delay > 0:
            self.waited += delay
            await self._sleep(delay)
