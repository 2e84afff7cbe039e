"""Retry policy: every 30 s for 10 min, then doubling, give up after 2 h.

Pure: the caller passes elapsed time and a random number, so tests drive it
with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2**60 intervals exceed any sane max_delay; capping the exponent keeps the
# arithmetic finite however long a run lasts.
_MAX_DOUBLINGS = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    interval: float = 30.0  # steady phase: one attempt per interval
    steady_for: float = 600.0  # how long the steady phase lasts
    max_delay: float = 3600.0  # cap of a single back-off step
    give_up_after: float = 7200.0  # total time without success
    jitter: float = 0.1  # +/- fraction applied to each delay

    def delay(
        self, attempt: int, elapsed: float, rand: float = 0.5, *, backoff_step: int | None = None
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), given
        ``elapsed`` seconds since the first failure and ``rand`` in [0, 1).
        ``backoff_step`` (1-based) counts failures since the steady phase
        ended; without it, it is estimated from ``attempt``. None means give up.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        if elapsed >= self.give_up_after:
            return None
        if elapsed < self.steady_for:
            base = self.interval
        else:
            if backoff_step is None:
                steady_attempts = int(self.steady_for // self.interval) if self.interval else 0
                backoff_step = attempt - steady_attempts
            doublings = min(_MAX_DOUBLINGS, max(1, backoff_step))
            base = min(self.max_delay, self.interval * 2.0**doublings)
        delay = base * (1.0 + self.jitter * (2.0 * rand - 1.0))
        remaining = self.give_up_after - elapsed
        return max(0.0, min(delay, remaining))


class RetryState:
    """Tracks one run of failures against a policy."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.backoff_step = 0
        self.first_failure: float | None = None

    def failed(self, now: float, rand: float = 0.5) -> float | None:
        """Record a failure at ``now``; return the delay or None to give up."""
        if self.first_failure is None:
            self.first_failure = now
        self.attempt += 1
        elapsed = now - self.first_failure
        if elapsed >= self.policy.steady_for:
            self.backoff_step += 1
        return self.policy.delay(
            self.attempt, elapsed, rand, backoff_step=max(1, self.backoff_step)
        )

    def succeeded(self) -> None:
        """Progress was made: the next failure starts a fresh run."""
        self.attempt = 0
        self.backoff_step = 0
        self.first_failure = None
