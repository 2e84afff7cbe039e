"""The hub's bandwidth budget over relayed traffic (docs/protocol.md §8.3).

Each direction of a relayed connection that is moving counts as one more
active stream beside pushes and pulls, and gets the same fair share of the
budget in force; the attachment's writer lets its records leave the hub no
faster. What waits meanwhile counts in the connection's window, so the
switch pauses the sender in time and the hub's memory stays bounded.

A direction idle for :data:`IDLE` seconds stops counting, so open but quiet
pipes do not thin everyone's share. Shares are re-computed every
:data:`REFRESH` seconds: budget changes, timetable boundaries and streams
starting or ending take effect within that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.bucket import TokenBucket
from ..protocol.e2e import ACCEPT, DIAL
from .bandwidth import BandwidthManager
from .streams import minute_of_day

REFRESH = 0.5  # seconds between re-computed shares
IDLE = 2.0  # seconds without a record before a direction stops counting


@dataclass
class _Share:
    key: str
    bucket: TokenBucket
    refreshed: float
    used: float


class RelayBudget:
    """Token buckets per moving direction of relayed connections."""

    def __init__(
        self,
        bandwidth: BandwidthManager,
        *,
        clock: Callable[[], float] = time.monotonic,
        minute: Callable[[], int] = minute_of_day,
    ) -> None:
        self.bandwidth = bandwidth
        self._clock = clock
        self._minute = minute
        self._shares: dict[tuple[str, str], _Share] = {}
        self._swept = 0.0
        self._unlimited_until = -1.0  # the budget was seen unlimited: no look until then

    def __len__(self) -> int:
        return len(self._shares)

    def bucket(self, cid: str, role: str) -> TokenBucket | None:
        """The bucket records of ``cid`` towards its ``role`` end go
        through; None while the budget is unlimited."""
        now = self._clock()
        if now < self._unlimited_until:
            return None  # the hot path of an unlimited hub: one comparison
        share = self._shares.get((cid, role))
        if share is not None and now - share.refreshed < REFRESH:
            share.used = now
            return share.bucket
        self._sweep(now)
        key = share.key if share is not None else f"relay-{cid}-{role}"
        rate = self.bandwidth.rate_for(key, self._minute())
        if rate == 0:  # the budget is off (a relayed share has no account cap)
            self._unlimited_until = now + REFRESH
            self._drop_all()
            return None
        if share is None:
            self.bandwidth.register(key)
            share = _Share(key, TokenBucket(rate, now), now, now)
            self._shares[(cid, role)] = share
            # One more stream: the share of the others shrinks, and so does ours.
            share.bucket.set_rate(self.bandwidth.rate_for(key, self._minute()), now)
        else:
            share.bucket.set_rate(rate, now)
            share.refreshed = share.used = now
        return share.bucket

    def forget(self, cid: str) -> None:
        """The connection ended (or the budget is lifted): it counts no more."""
        for role in (DIAL, ACCEPT):
            share = self._shares.pop((cid, role), None)
            if share is not None:
                self.bandwidth.unregister(share.key)

    def _drop_all(self) -> None:
        for share in self._shares.values():
            self.bandwidth.unregister(share.key)
        self._shares.clear()

    def _sweep(self, now: float) -> None:
        if now - self._swept < REFRESH:
            return
        self._swept = now
        for where, share in list(self._shares.items()):
            if now - share.used > IDLE:
                del self._shares[where]
                self.bandwidth.unregister(share.key)
