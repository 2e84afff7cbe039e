"""The bound on control channels a hub node takes a second (fake clock)."""

from __future__ import annotations

import pytest

from freight.errors import RateLimited
from freight.hub.caps import AttachPace


def taken(pace: AttachPace, now: float, count: int) -> int:
    """How many of ``count`` attachments at ``now`` the pace lets in."""
    ok = 0
    for _ in range(count):
        try:
            pace.take(now)
            ok += 1
        except RateLimited:
            pass
    return ok


def test_a_burst_of_rate_then_rate_a_second() -> None:
    pace = AttachPace(rate=50)
    assert taken(pace, 100.0, 80) == 50
    assert taken(pace, 100.5, 80) == 25  # half a second: half the rate
    assert taken(pace, 101.5, 80) == 50
    assert taken(pace, 120.0, 200) == 50  # a long quiet spell saves no more than one burst


def test_a_refusal_says_how_long_to_wait() -> None:
    pace = AttachPace(rate=1)
    pace.take(0.0)
    with pytest.raises(RateLimited) as refused:
        pace.take(0.1)
    assert refused.value.retry_after == pytest.approx(1.0)
    assert "try again in a moment" in refused.value.message


def test_a_clock_going_back_gives_nothing_more() -> None:
    pace = AttachPace(rate=10)
    assert taken(pace, 50.0, 10) == 10
    assert taken(pace, 40.0, 5) == 0  # time went backwards: no refill
    assert taken(pace, 50.2, 5) == 2  # counted from the latest time seen


def test_rate_zero_takes_every_one() -> None:
    assert taken(AttachPace(rate=0), 0.0, 10_000) == 10_000


def test_a_rate_below_one_still_lets_one_in() -> None:
    pace = AttachPace(rate=0.2)
    assert taken(pace, 0.0, 3) == 1
    assert taken(pace, 4.0, 3) == 0
    assert taken(pace, 5.0, 3) == 1
