"""Retry policy: every 30 s for 10 min, then doubling, give up after 2 h.

Pure: the caller passes elapsed time and a random number, so tests drive it
with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    interval: float = 30.0  # steady phase: one attempt per interval
    steady_for: float = 600.0  # how long the steady phase lasts
    max_delay: float = 3600.0  # cap of a single back-off step
    give_up_after: float = 7200.0  # total time without success
    jitter: float = 0.1  # +/- fraction applied to each delay

    def delay(self, attempt: int, elapsed: float, rand: float = 0.5) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), given
        ``elapsed`` seconds since the first failure and ``rand`` in [0, 1).
        None means give up."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        if elapsed >= self.give_up_after:
            return None
        if elapsed < self.steady_for:
            base = self.interval
        else:
            steady_attempts = max(1, int(self.steady_for // self.interval)) if self.interval else 0
            doublings = max(1, attempt - steady_attempts)
            base = min(self.max_delay, self.interval * 2.0**doublings)
        delay = base * (1.0 + self.jitter * (2.0 * rand - 1.0))
        remaining = self.give_up_after - elapsed
        return max(0.0, min(delay, remaining))


class RetryState:
    """Tracks one run of failures against a policy."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.first_failure: float | None = None

    def failed(self, now: float, rand: float = 0.5) -> float | None:
        """Record a failure at ``now``; return the delay or None to give up."""
        if self.first_failure is None:
            self.first_failure = now
        self.attempt += 1
        return self.policy.delay(self.attempt, now - self.first_failure, rand)

    def succeeded(self) -> None:
        """Progress was made: the next failure starts a fresh run."""
        self.attempt = 0
        self.first_failure = None
