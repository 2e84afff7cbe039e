"""Token bucket driven by a fake clock."""

from __future__ import annotations

import random

import pytest

from freight.protocol import TokenBucket

MB = 1_000_000
KiB = 1024
MiB = 1024 * KiB


def simulate(
    bucket: TokenBucket, chunk: int, *, start: float, until: float, rng: random.Random
) -> list[tuple[float, int]]:
    """A sender that reserves ``chunk`` bytes, sleeps if told to (waking up to
    1 ms late, like a real timer), sends, and repeats. Sending itself takes no
    time, so only the bucket holds it back. Returns [(send time, bytes)]."""
    now = start
    sends = []
    limit = 2 * bucket.rate * (until - start) / chunk + 100  # a broken bucket must not hang us
    while now < until and len(sends) < limit:
        wait = bucket.reserve(chunk, now)
        if wait > 0:
            now += wait + rng.uniform(0.0, 0.001)
        sends.append((now, chunk))
    return sends


def window_rates(sends: list[tuple[float, int]], window: float) -> list[float]:
    """Achieved rate over every span of at least ``window`` seconds that starts
    and ends at a send: the bytes sent from the first send up to (not including)
    the last, divided by the time between them."""
    rates = []
    j = 0
    total = 0
    for i, (t_i, _) in enumerate(sends):
        if j < i:
            j, total = i, 0
        while j < len(sends) and sends[j][0] - t_i < window:
            total += sends[j][1]
            j += 1
        if j == len(sends):
            break
        rates.append(total / (sends[j][0] - t_i))
        total -= sends[i][1]
    return rates


@pytest.mark.parametrize("rate", [1 * MB, 10 * MB, 100 * MB], ids=lambda r: f"{r // MB}MBps")
@pytest.mark.parametrize("chunk", [16 * KiB, 256 * KiB, 1 * MiB], ids=lambda c: f"{c // KiB}KiB")
def test_rate_holds_over_every_10s_window(rate: int, chunk: int) -> None:
    rng = random.Random(rate ^ chunk)
    bucket = TokenBucket(rate, now=0.0)
    duration = 60.0
    sends = simulate(bucket, chunk, start=0.0, until=duration, rng=rng)
    rates = window_rates(sends, 10.0)
    assert len(rates) > 10
    assert min(rates) >= 0.95 * rate
    assert max(rates) <= 1.05 * rate


def test_rate_zero_means_no_wait() -> None:
    bucket = TokenBucket(0, now=0.0)
    assert all(bucket.reserve(10 * MiB, now=0.0) == 0.0 for _ in range(100))


def test_first_reservation_waits_for_its_bytes() -> None:
    bucket = TokenBucket(1 * MB, now=0.0)
    assert bucket.reserve(500_000, now=0.0) == pytest.approx(0.5)


def test_burst_caps_saved_up_idle_time() -> None:
    bucket = TokenBucket(1 * MB, now=0.0, burst=64 * KiB)
    # After an hour of idling only the burst is available for free...
    assert bucket.reserve(64 * KiB, now=3600.0) == 0.0
    # ...and everything beyond it is paced at the rate again.
    assert bucket.reserve(1 * MB, now=3600.0) == pytest.approx(1.0)


def test_default_burst_is_a_tenth_of_a_second() -> None:
    bucket = TokenBucket(10 * MB, now=0.0)
    assert bucket.reserve(1 * MB, now=100.0) == 0.0
    assert bucket.reserve(1 * MB, now=100.0) == pytest.approx(0.1)


def test_default_burst_is_at_least_16_kib() -> None:
    bucket = TokenBucket(1000, now=0.0)
    assert bucket.reserve(16 * KiB, now=1000.0) == 0.0
    assert bucket.reserve(1000, now=1000.0) == pytest.approx(1.0)


def test_set_rate_mid_run_takes_effect() -> None:
    rng = random.Random(3)
    bucket = TokenBucket(1 * MB, now=0.0)
    before = simulate(bucket, 64 * KiB, start=0.0, until=30.0, rng=rng)
    switch = before[-1][0]
    bucket.set_rate(4 * MB, now=switch)
    after = simulate(bucket, 64 * KiB, start=switch, until=switch + 30.0, rng=rng)
    rates_before, rates_after = window_rates(before, 10.0), window_rates(after, 10.0)
    assert len(rates_before) > 100 and len(rates_after) > 100
    assert all(r == pytest.approx(1 * MB, rel=0.05) for r in rates_before)
    assert all(r == pytest.approx(4 * MB, rel=0.05) for r in rates_after)


def test_set_rate_to_zero_and_back() -> None:
    bucket = TokenBucket(1 * MB, now=0.0)
    bucket.set_rate(0, now=1.0)
    assert bucket.reserve(100 * MB, now=1.0) == 0.0
    # Time spent unlimited is not saved up as credit.
    bucket.set_rate(1 * MB, now=1000.0, burst=0)
    assert bucket.reserve(1 * MB, now=1000.0) == pytest.approx(1.0)


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1, now=0.0)
    bucket = TokenBucket(1, now=0.0)
    with pytest.raises(ValueError):
        bucket.set_rate(-5, now=0.0)


def test_clock_going_backwards_gives_no_credit() -> None:
    bucket = TokenBucket(1 * MB, now=100.0, burst=0)
    assert bucket.reserve(1 * MB, now=50.0) == pytest.approx(1.0)


def test_take_never_goes_into_debt() -> None:
    bucket = TokenBucket(100, 0.0, burst=300, full=True)
    assert bucket.take(300, 0.0)  # a full burst from the start
    assert not bucket.take(1, 0.0)  # refused, and nothing taken
    assert not bucket.take(60, 0.5)  # 50 by now
    assert bucket.take(50, 0.5)
    assert TokenBucket(0, 0.0).take(10**9, 0.0)  # rate 0: unlimited
    assert not TokenBucket(100, 0.0).take(1, 0.0)  # not full: starts empty
