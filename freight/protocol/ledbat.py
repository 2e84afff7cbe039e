"""A delay-based rate controller for background transfers, after LEDBAT
(RFC 6817), without I/O (docs/protocol.md "20.4 Background priority").

The sender times round trips of small pings that travel the same
connection as its data. The smallest round trip seen lately is the *base*
(the path with empty queues); anything above it is queueing delay. While
the queueing delay stays below :data:`TARGET` the rate grows
multiplicatively (quickly back to a free link); above it, the rate shrinks
in proportion to how far above, at most halving per sample. Another flow
that fills the bottleneck's queue (any loss-based TCP does) therefore
pushes this one down to its floor, and when that flow stops the queue
empties and the rate climbs back within a second or two.

It never starves: the rate stays at least ``floor`` bytes/s, so a
background transfer always moves and its pings keep flowing.

Rates are bytes/s, times seconds, and time is passed in.
"""

from __future__ import annotations

from collections import deque
from typing import Final

# Queueing delay the controller allows itself (RFC 6817 says at most 100 ms;
# less keeps its own queue short on slow links).
TARGET: Final = 0.025
# Growth when the queue is empty: the rate is multiplied by about
# e**GAIN_UP per second, but only once the queue has stayed below the
# target for RAMP_SECONDS; before that the gain grows from zero. A
# loss-based flow beside it empties the queue for a moment after each loss:
# that moment must not be taken for an idle link.
GAIN_UP: Final = 1.0
RAMP_SECONDS: Final = 3.0
# Decrease per sample: x(1 - GAIN_DOWN * (q - T) / T), at least halving at
# 1.25 T (a new flow beside it must not wait, and a Cubic flow at 20 ms
# held its queue near T, where a gentler slope left this one 8 % of the
# link), and x T/q beyond 2 T, down to MIN_CUT: a Cubic flow's slow start
# at 80 ms fills the queue within a few samples, and halving three times
# still left it a quarter of its own link.
GAIN_DOWN: Final = 2.0
MIN_CUT: Final = 0.25
# Round trips kept for the current delay (the least of them: one ping that
# waited behind a burst is not congestion).
CURRENT_SAMPLES: Final = 2
# The base is the least round trip of the last BASE_MINUTES minutes, one
# minimum per minute (a route that changed is forgotten in time).
BASE_MINUTES: Final = 10
DEFAULT_FLOOR: Final = 32 * 1024
DEFAULT_START: Final = 256 * 1024


class Ledbat:
    """The background sender's rate."""

    def __init__(
        self,
        now: float,
        *,
        floor: float = DEFAULT_FLOOR,
        ceiling: float = 0.0,
        start: float = DEFAULT_START,
        target: float = TARGET,
    ) -> None:
        if floor <= 0 or target <= 0:
            raise ValueError("floor and target must be positive")
        self.floor = floor
        self.ceiling = ceiling  # 0: none
        self.target = target
        self.rate = self._clamp(start)
        self._last = now
        self._congested = now - RAMP_SECONDS  # when the queue was last above target
        self._current: deque[float] = deque(maxlen=CURRENT_SAMPLES)
        self._base: deque[tuple[int, float]] = deque(maxlen=BASE_MINUTES)

    def __repr__(self) -> str:
        return f"<Ledbat rate={self.rate:.0f} B/s delay={self.queueing:.3f} s>"

    def _clamp(self, rate: float) -> float:
        if self.ceiling:
            rate = min(rate, self.ceiling)
        return max(self.floor, rate)

    def set_limits(self, *, floor: float | None = None, ceiling: float | None = None) -> None:
        if floor is not None and floor > 0:
            self.floor = floor
        if ceiling is not None:
            self.ceiling = max(0.0, ceiling)
        self.rate = self._clamp(self.rate)

    @property
    def base(self) -> float:
        return min(b for _, b in self._base) if self._base else 0.0

    @property
    def queueing(self) -> float:
        """Queueing delay now: the current round trip less the base."""
        if not self._current:
            return 0.0
        return max(0.0, min(self._current) - self.base)

    def on_rtt(self, rtt: float, now: float) -> float:
        """A ping came back after ``rtt`` seconds; returns the new rate."""
        if rtt < 0:
            raise ValueError("a round trip cannot be negative")
        minute = int(now // 60)
        if self._base and self._base[-1][0] == minute:
            self._base[-1] = (minute, min(self._base[-1][1], rtt))
        else:
            self._base.append((minute, rtt))
        self._current.append(rtt)
        dt = min(1.0, max(0.0, now - self._last))
        self._last = now
        off = (self.target - self.queueing) / self.target  # 1: empty queue
        if off >= 0:
            calm = min(1.0, (now - self._congested) / RAMP_SECONDS)
            self.rate *= 1.0 + GAIN_UP * calm * off * dt
        else:
            self._congested = now
            cut = max(0.5, 1.0 + GAIN_DOWN * off)
            self.rate *= min(cut, max(MIN_CUT, self.target / self.queueing))
        self.rate = self._clamp(self.rate)
        return self.rate
