"""Retry policy: every 30 s for 10 min, then doubling, give up after 2 h.

A stream that has never reached the hub gets only the first phase: every
30 s for 10 min, then it gives up (the address, the network or the proxy is
likely wrong, and someone should look). Once the hub has answered it, the
stream keeps the whole policy.

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

    def limit(self, *, started: bool = True) -> float:
        """Seconds after the first failure at which a run gives up: the
        whole policy for a stream that has reached the hub, the steady phase
        for one that never has."""
        return self.give_up_after if started else min(self.steady_for, self.give_up_after)

    def delay(
        self,
        attempt: int,
        elapsed: float,
        rand: float = 0.5,
        *,
        backoff_step: int | None = None,
        started: bool = True,
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), given
        ``elapsed`` seconds since the first failure and ``rand`` in [0, 1).
        ``backoff_step`` (1-based) counts failures since the steady phase
        ended; without it, it is estimated from ``attempt``. ``started`` is
        False for a stream that has never reached the hub. None means give up.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        give_up_at = self.limit(started=started)
        if elapsed >= give_up_at:
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
        remaining = give_up_at - elapsed
        return max(0.0, min(delay, remaining))


class RetryState:
    """Tracks one run of failures of one stream against a policy. A new
    state is for a stream that has not reached the hub yet."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.backoff_step = 0
        self.first_failure: float | None = None
        self.started = False

    def mark_started(self) -> None:
        """The hub has answered this stream: from now on (this run of
        failures included) the whole policy applies."""
        self.started = True

    def failed(self, now: float, rand: float = 0.5) -> float | None:
        """Record a failure at ``now``; return the delay or None to give up."""
        if self.first_failure is None:
            self.first_failure = now
        self.attempt += 1
        elapsed = now - self.first_failure
        if elapsed >= self.policy.steady_for:
            self.backoff_step += 1
        return self.policy.delay(
            self.attempt,
            elapsed,
            rand,
            backoff_step=max(1, self.backoff_step),
            started=self.started,
        )

    def elapsed(self, now: float) -> float:
        """Seconds since the first failure of the current run."""
        return 0.0 if self.first_failure is None else now - self.first_failure

    def succeeded(self) -> None:
        """Progress was made: the next failure starts a fresh run."""
        self.started = True
        self.attempt = 0
        self.backoff_step = 0
        self.first_failure = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Re-attach style: ``first`` seconds, multiplied by ``factor`` after
    each failure up to ``max_delay``; each delay is drawn from
    ``[low * d, d]`` (full jitter, ``low`` = 0.1: clients coming back
    after a hub restart spread over the whole interval; ``low`` = 1: no
    jitter). After ``give_up_after`` seconds of failures (None: never) the
    caller gives up. The defaults: 0.1 s doubling to 30 s, never giving up.
    """

    first: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    low: float = 0.1
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        if self.first <= 0 or self.factor < 1 or self.max_delay < self.first:
            raise ValueError("need 0 < first <= max_delay and factor >= 1")
        if not 0 <= self.low <= 1:
            raise ValueError("low is a fraction in [0, 1]")

    def delay(self, step: int, elapsed: float = 0.0, rand: float = 1.0) -> float | None:
        """Seconds to wait after failure number ``step`` (1-based) of a run
        that began ``elapsed`` seconds ago, ``rand`` in [0, 1); None: give up."""
        if step < 1:
            raise ValueError("step is 1-based")
        remaining = None
        if self.give_up_after is not None:
            remaining = self.give_up_after - elapsed
            if remaining <= 0:
                return None
        base = min(self.max_delay, self.first * self.factor ** min(step - 1, _MAX_DOUBLINGS))
        delay = base * (self.low + (1.0 - self.low) * rand)
        return delay if remaining is None else min(delay, remaining)


class BackoffState:
    """One run of failures against a :class:`Backoff`; the clock and the
    random numbers are the caller's."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.step = 0
        self.first_failure: float | None = None

    def failed(self, now: float, rand: float = 1.0) -> float | None:
        """Record a failure at ``now``; the delay before the next attempt,
        or None to give up."""
        if self.first_failure is None:
            self.first_failure = now
        self.step += 1
        return self.policy.delay(self.step, now - self.first_failure, rand)

    def succeeded(self) -> None:
        """Attached again: the next failure starts from ``first``."""
        self.step = 0
        self.first_failure = None
