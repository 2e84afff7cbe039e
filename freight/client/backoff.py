"""How a client comes back after losing its attachment: jittered
exponential back-off that never gives up."""

from __future__ import annotations

import math
import os

from ..protocol.retry import RetryPolicy

__all__ = ["backoff_delays", "reconnect_policy"]


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
