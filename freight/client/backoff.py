"""How a client comes back after losing its attachment: at once when the
attachment had held, then jittered exponential back-off that never gives
up."""

from __future__ import annotations

import math
import os

from ..protocol.retry import RetryPolicy, RetryState

__all__ = [
    "HELD_FOR",
    "QUICK_WINDOW",
    "Reattach",
    "backoff_delays",
    "first_delay",
    "reconnect_policy",
]

# An attachment up this long had held: losing it is news (a NAT entry
# dropped, a proxy restarted), not a pattern, and the first try to come back
# goes at once, spread over QUICK_WINDOW seconds (NATS's clients likewise go
# straight back to a server they had been connected to longer than their
# reconnect wait). A try that fails, or the loss of an attachment that had
# not held, takes the jittered back-off below: a hub that restarts refuses
# the quick tries and sees its clients come back spread over seconds.
HELD_FOR = 10.0
QUICK_WINDOW = 0.1


def backoff_delays() -> tuple[float, float]:
    """First and largest reconnect delay (env overrides for tests)."""
    first = float(os.environ.get("FREIGHT_RELAY_BACKOFF", "1.0"))
    cap = float(os.environ.get("FREIGHT_RELAY_BACKOFF_MAX", "30.0"))
    return first, cap


def reconnect_policy(first: float, cap: float) -> RetryPolicy:
    """Re-attaching never gives up, with full jitter: the n-th delay is drawn
    from [0.1, 1] x ``first`` x 2^(n-1), that bound capped at ``cap``
    (``RetryPolicy`` centres each delay on its base: 0.55 x the bound, plus
    or minus 9/11 of it)."""
    return RetryPolicy(
        interval=0.275 * first,  # the first back-off step doubles it: 0.55 x first
        steady_for=0.0,
        max_delay=0.55 * cap,
        give_up_after=math.inf,
        jitter=9 / 11,
    )


def first_delay(held: float, policy_delay: float, rand: float) -> float:
    """The wait before the first try to attach again, after an attachment
    that was up ``held`` seconds: at once (jittered over ``QUICK_WINDOW``)
    when it had held, else the policy's ``policy_delay``."""
    if held >= HELD_FOR:
        return min(policy_delay, QUICK_WINDOW * rand)
    return policy_delay


class Reattach:
    """The waits before each try to attach again, after an attachment that
    was up ``held`` seconds: the first by :func:`first_delay`, the rest
    by ``policy`` (full jitter: after a hub restart, clients come back
    spread over the whole interval, not all in the same second)."""

    def __init__(self, policy: RetryPolicy, held: float) -> None:
        self.held = held
        self._retry = RetryState(policy)
        self._retry.mark_started()

    def next_delay(self, now: float, rand: float, rand2: float) -> float:
        delay = self._retry.failed(now, rand)
        assert delay is not None  # a reconnect policy never gives up
        if self._retry.attempt == 1:
            delay = first_delay(self.held, delay, rand2)
        return delay
