"""Retry policy: steady phase, doubling back-off, give-up, driven by a fake clock."""

from __future__ import annotations

import random

import pytest

from freight.client.backoff import HELD_FOR, QUICK_WINDOW, Reattach, first_delay, reconnect_policy
from freight.protocol import RetryPolicy, RetryState
from freight.protocol.retry import Backoff, BackoffState

MINUTE = 60.0
HOUR = 3600.0


def run(
    policy: RetryPolicy,
    rand: random.Random | float = 0.5,
    *,
    attempt_takes: float = 0.0,
    started: bool = True,
) -> list[tuple[float, float]]:
    """Fail over and over until the policy gives up; each attempt takes
    ``attempt_takes`` seconds before it fails. Returns [(time of failure since
    the first one, delay before the next attempt)]; the run ends at the
    failure that got None (logged with delay -1). ``started``: the stream had
    reached the hub before this run of failures (the full policy applies)."""
    state = RetryState(policy)
    if started:
        state.mark_started()
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
    state.mark_started()
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


# --- a stream that never started ---------------------------------------------------


def test_a_stream_that_never_reached_the_hub_gives_up_after_the_steady_phase() -> None:
    log = run(RetryPolicy(), started=False)
    # Every 30 s for 10 min, then no back-off: it gives up at 10 min.
    assert [d for _, d in log[:-1]] == [30.0] * 20
    assert log[-1] == (10 * MINUTE, -1.0)


def test_a_stream_that_never_started_gives_up_at_10_min_whatever_the_jitter() -> None:
    for seed in range(20):
        log = run(RetryPolicy(), random.Random(seed), started=False)
        assert log[-1][0] == pytest.approx(10 * MINUTE)
        assert all(27.0 <= d <= 33.0 for _, d in log[:-2])
        assert max(d for _, d in log[:-1]) <= 33.0


def test_a_fresh_state_has_not_started() -> None:
    state = RetryState(RetryPolicy())
    assert not state.started
    now = 0.0
    while (delay := state.failed(now)) is not None:
        now += delay
    assert now == 10 * MINUTE


def test_reaching_the_hub_mid_run_extends_it_to_the_full_policy() -> None:
    # Unreachable for 5 min, then the hub answers once and fails again: the
    # stream has started, so the same run goes on into back-off (2 h in all).
    state = RetryState(RetryPolicy())
    now = 0.0
    for _ in range(10):
        now += state.failed(now) or 0.0
    state.mark_started()
    assert state.attempt == 10  # the run goes on: no fresh start
    delays = []
    while (delay := state.failed(now)) is not None:
        delays.append(delay)
        now += delay
    assert now == 2 * HOUR
    assert delays[10:14] == [60.0, 120.0, 240.0, 480.0]


def test_progress_marks_a_stream_started() -> None:
    state = RetryState(RetryPolicy())
    state.succeeded()
    assert state.started
    assert run(RetryPolicy())[-1][0] == 2 * HOUR


def test_never_started_delay_does_not_pass_the_steady_phase() -> None:
    policy = RetryPolicy()
    assert policy.delay(20, 590.0, started=False) == 10.0
    assert policy.delay(21, 600.0, started=False) is None
    assert policy.delay(21, 600.0) == 60.0  # started: back-off


def test_configured_steady_phase_bounds_a_stream_that_never_started() -> None:
    policy = RetryPolicy(interval=0.2, steady_for=3.0, give_up_after=600.0, jitter=0.0)
    log = run(policy, started=False)
    assert log[-1][0] == pytest.approx(3.0)
    assert len(log) == 16  # 15 retries 0.2 s apart, then it gives up
    assert run(policy)[-1][0] == pytest.approx(600.0)


# --- re-attach style back-off -------------------------------------------------------


def test_backoff_doubles_from_a_tenth_of_a_second_to_thirty() -> None:
    state = BackoffState(Backoff(low=1.0))
    delays = [state.failed(1000.0 + i) for i in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == 30.0 and max(d for d in delays if d is not None) == 30.0
    state.succeeded()
    assert state.failed(5000.0) == 0.1  # a new run starts from the first delay


def test_backoff_jitter_stays_in_its_range() -> None:
    policy = Backoff(first=1.0, max_delay=30.0, low=0.1)
    rng = random.Random(7)
    for step in range(1, 40):
        d = policy.delay(step, 0.0, rng.random())
        assert d is not None
        base = min(30.0, 2.0 ** (step - 1))
        assert 0.1 * base <= d <= base
    assert policy.delay(10**6) == 30.0  # a long run stays finite


def test_backoff_gives_up_after_its_limit_and_never_waits_past_it() -> None:
    policy = Backoff(first=0.05, max_delay=2.0, low=1.0, give_up_after=10.0)
    state = BackoffState(policy)
    now, total = 0.0, 0.0
    while (d := state.failed(now)) is not None:
        assert now + d <= 10.0
        now += d
        total += d
    assert 9.9 <= now <= 10.0
    assert Backoff().delay(1, 1e9) is not None  # without a limit: never gives up


@pytest.mark.parametrize(
    "kw", [{"first": 0.0}, {"factor": 0.5}, {"max_delay": 0.01}, {"low": 1.5}, {"low": -0.1}]
)
def test_backoff_refuses_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kw)
    with pytest.raises(ValueError):
        Backoff().delay(0)


def test_an_attachment_that_had_held_tries_again_at_once() -> None:
    """The first wait after losing an attachment up HELD_FOR seconds or more
    is drawn from [0, QUICK_WINDOW); for one that had not held it is the
    policy's own (the relay client asks only before its first try)."""
    for rand in (0.0, 0.5, 0.999):
        assert first_delay(HELD_FOR, 0.7, rand) == pytest.approx(QUICK_WINDOW * rand)
        assert first_delay(HELD_FOR + 3600, 0.7, rand) < QUICK_WINDOW
        assert first_delay(HELD_FOR - 0.01, 0.7, rand) == 0.7
    assert first_delay(HELD_FOR, 0.01, 0.9) == 0.01  # never longer than the policy's own


def test_only_the_first_try_after_a_held_attachment_goes_at_once() -> None:
    policy = reconnect_policy(1.0, 30.0)
    held = Reattach(policy, held=HELD_FOR)
    assert held.next_delay(0.0, 0.5, 0.5) < QUICK_WINDOW
    assert held.next_delay(0.1, 0.0, 0.0) >= 0.2 - 1e-9  # then the back-off: [0.2, 2] s
    fresh = Reattach(policy, held=HELD_FOR - 1)
    assert fresh.next_delay(0.0, 0.0, 0.0) >= 0.1 - 1e-9  # [0.1, 1] s from the first
