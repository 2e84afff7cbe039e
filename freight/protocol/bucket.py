"""Token bucket for the sender's rate limit. Time is passed in, never read."""

from __future__ import annotations


class TokenBucket:
    """Rate limiter that lets callers *reserve* bytes and tells them how long
    to wait. ``rate`` is bytes per second; 0 means unlimited. ``burst`` bounds
    how much idle time can be saved up, so a pause is not followed by a spike.
    """

    def __init__(
        self, rate: int, now: float, *, burst: int | None = None, full: bool = False
    ) -> None:
        self._tokens = 0.0
        self._stamp = now
        self.burst = 0
        self.rate = 0
        self.set_rate(rate, now, burst=burst)
        if full:  # a whole burst at once from the start
            self._tokens = float(self.burst)

    def set_rate(self, rate: int, now: float, *, burst: int | None = None) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self._refill(now)
        self.rate = rate
        # Default burst: a tenth of a second of traffic, at least 16 KiB.
        self.burst = burst if burst is not None else max(16 * 1024, rate // 10)
        self._tokens = min(self._tokens, float(self.burst))

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            if self.rate:
                self._tokens = min(
                    float(self.burst), self._tokens + (now - self._stamp) * self.rate
                )
            self._stamp = now

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes`` (possibly into debt); return seconds to wait first."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate

    def take(self, amount: int, now: float) -> bool:
        """Take ``amount`` if the bucket holds that much (never into debt);
        False, taking nothing, if it does not."""
        if self.rate == 0:
            return True
        self._refill(now)
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True
