"""Retry policy: steady phase, doubling back-off, give-up, driven by a fake clock."""

from __future__ import annotations

import random

import pytest

from freight.protocol import RetryPolicy, RetryState

MINUTE = 60.0
HOUR = 3600.0


def run(
    policy: RetryPolicy, rand: random.Random | float = 0.5, *, attempt_takes: float = 0.0
) -> list[tuple[float, float]]:
    """Fail over and over until the policy gives up; each attempt takes
    ``attempt_takes`` seconds before it fails. Returns [(time of failure since
    the first one, delay before the next attempt)]; the run ends at the
    failure that got None (logged with delay -1)."""
    state = RetryState(policy)
    start = now = 1000.0  # the clock does not start at zero
    log = []
    while True:
        r = rand.random() if isinstance(rand, random.Random) else rand
        delay = state.failed(now, r)
        if delay is None:
            log.append((now - start, -1.0))
            return log
        log.append((now - start, delay))
        now += delay + attempt_takes


def test_steady_phase_retries_every_30s_with_jitter() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, 0.0) == 30.0
    assert policy.delay(5, 599.0) == 30.0
    assert policy.delay(3, 100.0, rand=0.0) == pytest.approx(27.0)
    assert policy.delay(3, 100.0, rand=0.999999) == pytest.approx(33.0)
    rng = random.Random(5)
    for _ in range(1000):
        assert 27.0 <= policy.delay(2, rng.uniform(0, 599), rng.random()) <= 33.0


def test_after_the_steady_phase_delays_double() -> None:
    log = run(RetryPolicy())
    steady = [d for t, d in log if t < 10 * MINUTE]
    backoff = [d for t, d in log if t >= 10 * MINUTE]
    assert steady == [30.0] * 20
    assert backoff[:6] == [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0]


def test_single_delay_is_capped_by_max_delay() -> None:
    policy = RetryPolicy(max_delay=300.0, give_up_after=100 * HOUR)
    assert policy.delay(60, 20 * HOUR) == 300.0
    assert policy.delay(60, 20 * HOUR, rand=0.999999) == pytest.approx(330.0)


def test_long_run_with_a_small_cap_keeps_retrying_at_the_cap() -> None:
    log = run(RetryPolicy(max_delay=60.0, give_up_after=30 * 24 * HOUR))
    assert {d for _, d in log[30:-2]} == {60.0}
    assert log[-1][0] == 30 * 24 * HOUR


def test_default_max_delay_is_an_hour() -> None:
    policy = RetryPolicy(give_up_after=100 * HOUR)
    assert policy.delay(40, 50 * HOUR) == HOUR


def test_gives_up_after_two_hours() -> None:
    policy = RetryPolicy()
    assert policy.delay(30, 2 * HOUR) is None
    assert policy.delay(30, 3 * HOUR) is None
    assert policy.delay(30, 2 * HOUR - 1) is not None


def test_last_delay_does_not_overshoot_the_deadline() -> None:
    assert RetryPolicy().delay(27, 2 * HOUR - 10.0) == 10.0


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay(0, 0.0)


def test_configured_values_are_honoured() -> None:
    policy = RetryPolicy(
        interval=5.0, steady_for=20.0, max_delay=40.0, give_up_after=200.0, jitter=0.0
    )
    log = run(policy, rand=0.0)
    assert [d for _, d in log] == [5.0, 5.0, 5.0, 5.0, 10.0, 20.0, 40.0, 40.0, 40.0, 30.0, -1.0]
    assert log[-1][0] == 200.0


def test_zero_jitter_ignores_rand() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert {policy.delay(1, 0.0, r) for r in (0.0, 0.3, 0.99)} == {30.0}


def test_success_starts_a_fresh_run() -> None:
    state = RetryState(RetryPolicy())
    now = 0.0
    for _ in range(25):
        now += state.failed(now) or 0.0
    assert state.failed(now) > 30.0  # deep in back-off
    state.succeeded()
    now += 10 * HOUR
    assert state.failed(now) == 30.0
    assert state.attempt == 1
    assert state.first_failure == now


def test_whole_run_takes_two_hours() -> None:
    log = run(RetryPolicy())
    # 20 steady retries (0..570 s), then 600, 660, 780, 1020, 1500, 2460, 4380,
    # and the last one, clipped to the deadline, at 7200 where it gives up.
    assert [t for t, _ in log[20:]] == [600, 660, 780, 1020, 1500, 2460, 4380, 7200]
    assert log[-1] == (2 * HOUR, -1.0)
    assert len(log) == 28  # 27 retries after the first failure


@pytest.mark.parametrize("seed", range(20))
def test_whole_run_with_random_jitter_takes_two_hours(seed: int) -> None:
    log = run(RetryPolicy(), random.Random(seed))
    assert log[-1][0] == pytest.approx(2 * HOUR)
    assert all(d >= 0 for _, d in log[:-1])
    assert 25 <= len(log) <= 32


@pytest.mark.parametrize("rand", [0.0, 0.999999], ids=["short-jitter", "long-jitter"])
def test_backoff_starts_at_60s_whatever_the_jitter(rand: float) -> None:
    log = run(RetryPolicy(), rand)
    backoff = [d for t, d in log if t >= 10 * MINUTE]
    factor = 1.0 + 0.1 * (2 * rand - 1)
    assert backoff[:4] == pytest.approx([b * factor for b in (60.0, 120.0, 240.0, 480.0)])


def test_backoff_starts_at_60s_when_attempts_take_time() -> None:
    # A connection attempt that times out after 20 s: fewer attempts fit in
    # the steady phase, and the back-off must still start at 60 s.
    log = run(RetryPolicy(), attempt_takes=20.0)
    backoff = [d for t, d in log if t >= 10 * MINUTE]
    assert backoff[:4] == [60.0, 120.0, 240.0, 480.0]
    assert log[-1][0] >= 2 * HOUR
