"""The background controller and the path bookkeeping, fed round trips and
acknowledgements with made-up times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.client.pathrate import REPROBE_SECONDS, PathPacer, PathRate
from freight.protocol.ledbat import TARGET, Ledbat


def feed(c: Ledbat, rtt: float, seconds: float, now: float, every: float = 0.1) -> float:
    end = now + seconds
    while now < end:
        now += every
        c.on_rtt(rtt, now)
    return now


def test_grows_quickly_on_an_empty_path() -> None:
    c = Ledbat(0.0, floor=50_000, start=50_000, ceiling=12_500_000)
    feed(c, 0.02, 8.0, 0.0)
    assert c.rate == 12_500_000  # from 0.4 % to the ceiling within 8 seconds


def test_backs_off_to_the_floor_when_another_flow_fills_the_queue() -> None:
    c = Ledbat(0.0, floor=50_000, start=10_000_000, ceiling=12_500_000)
    now = feed(c, 0.02, 1.0, 0.0)  # the base: 20 ms
    now = feed(c, 0.02 + 4 * TARGET, 1.0, now)  # a loss-based flow's queue
    assert c.rate == 50_000
    assert c.queueing == pytest.approx(4 * TARGET)
    feed(c, 0.021, 8.0, now)  # it stopped: the queue drained (10 s is the target)
    assert c.rate > 0.9 * 12_500_000


def test_a_queue_far_above_the_target_cuts_deeper_than_half() -> None:
    """A Cubic flow's slow start fills the queue within a few samples: one
    sample of four times the target leaves a quarter, not a half."""
    c = Ledbat(0.0, floor=1000, start=4_000_000)
    now = feed(c, 0.02, 0.2, 0.0)
    before = c.on_rtt(0.02 + 4 * TARGET, now + 0.1)  # one slow ping is not congestion
    c.on_rtt(0.02 + 4 * TARGET, now + 0.2)  # two are
    assert c.rate == pytest.approx(before / 4, rel=0.05)
    # Just above the target it eases off in proportion.
    gentle = Ledbat(0.0, floor=1000, start=4_000_000)
    now = feed(gentle, 0.02, 0.2, 0.0)
    before = gentle.on_rtt(0.02 + 1.1 * TARGET, now + 0.1)
    gentle.on_rtt(0.02 + 1.1 * TARGET, now + 0.2)
    assert gentle.rate == pytest.approx(0.8 * before, rel=0.01)


def test_holds_near_the_target() -> None:
    c = Ledbat(0.0, floor=1000, start=1_000_000)
    now = feed(c, 0.02, 0.5, 0.0)
    now = feed(c, 0.02 + TARGET, 0.35, now)  # the filter forgets the short round trips
    before = c.rate
    feed(c, 0.02 + TARGET, 1.0, now)  # exactly on target: no change
    assert c.rate == pytest.approx(before)


def test_one_slow_ping_is_not_congestion() -> None:
    c = Ledbat(0.0, floor=1000, start=1_000_000)
    now = feed(c, 0.02, 0.5, 0.0)
    before = c.rate
    c.on_rtt(0.5, now + 0.1)
    assert c.rate >= before


def test_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Ledbat(0.0, floor=0)
    with pytest.raises(ValueError):
        Ledbat(0.0).on_rtt(-1.0, 1.0)


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 5)), max_size=60))
def test_rate_stays_within_floor_and_ceiling(steps: list[tuple[float, float]]) -> None:
    c = Ledbat(0.0, floor=10_000, ceiling=1_000_000)
    now = 0.0
    for rtt, dt in steps:
        now += dt
        rate = c.on_rtt(rtt, now)
        assert 10_000 <= rate <= 1_000_000


def test_delivery_rate_from_checkpoints() -> None:
    p = PathRate(1e6, 0.02, 0.0)
    assert p.delivery_rate() == 0.0
    p.delivered(0, 0.0)
    p.delivered(8 << 20, 2.0)
    assert p.delivery_rate() == pytest.approx(4 << 20)
    p.delivered(1, 3.0)  # a new stream starts the samples over
    assert p.delivery_rate() == 0.0


def test_reprobe_after_minutes_or_when_the_round_trip_grows() -> None:
    p = PathRate(1e6, 0.02, 0.0)
    assert not p.reprobe_due(10.0)
    assert p.reprobe_due(REPROBE_SECONDS)
    for i in range(40):
        p.rtt(0.1, 10.0 + i * 0.2)  # five times the probed round trip, for 8 s
    assert p.reprobe_due(18.0)
    p.reprobed(400_000, 500_000, 18.0)
    assert p.available == 900_000 and not p.reprobe_due(19.0)


def test_pacer_limits() -> None:
    t = [0.0]
    p = PathRate(10e6, 0.02, 0.0)
    assert PathPacer(p, percent=50, clock=lambda: t[0]).limit() == 5_000_000
    bg = PathPacer(p, background=True, capacity=10e6, clock=lambda: t[0])
    assert bg.limit() == 200_000  # starts at its floor: 2 % of the capacity
    for _ in range(60):
        t[0] += 0.1
        bg.on_rtt(0.02)
    assert bg.limit() > 5_000_000


def test_a_short_lull_after_a_loss_is_not_an_idle_link() -> None:
    c = Ledbat(0.0, floor=50_000, start=50_000, ceiling=12_500_000)
    now = feed(c, 0.02, 0.5, 0.0)
    now = feed(c, 0.02 + 4 * TARGET, 1.0, now)  # a loss-based flow's queue
    feed(c, 0.02, 0.5, now)  # it lost a packet: the queue empties for a moment
    assert c.rate < 100_000


def test_background_without_pings_keeps_a_fixed_share() -> None:
    p = PathRate(10e6, 0.02, 0.0)
    blind = PathPacer(p, background=True, capacity=10e6)
    blind.without_pings()
    assert blind.limit() == 5_000_000
    share = PathPacer(p, background=True, percent=20, capacity=10e6)
    share.without_pings()
    assert share.limit() == 2_000_000
