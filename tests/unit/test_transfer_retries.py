"""Push and pull's reconnect loop runs on the tested RetryPolicy, with the
clock, the random numbers and the sleep injected: a fake clock drives it
through hours of failures in no time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from freight.client.transfer import with_retries
from freight.errors import NetworkError, UsageError
from freight.protocol.retry import RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Holder:
    def __init__(self, reached: bool) -> None:
        self.reached = reached
        self.drops = 0
        self.session = SimpleNamespace(url=SimpleNamespace(host="hub.example", port=8443))

    async def drop(self) -> None:
        self.drops += 1


class Notes:
    def __init__(self) -> None:
        self.notices: list[str] = []

    def notice(self, text: str) -> None:
        self.notices.append(text)


async def run(policy: RetryPolicy, attempt: Any, reached: bool, progressed: Any = None) -> Any:
    clock, holder, notes = FakeClock(), Holder(reached), Notes()
    try:
        result = await with_retries(
            attempt,
            policy,
            notes,  # type: ignore[arg-type]
            holder,  # type: ignore[arg-type]
            progressed or (lambda: False),
            clock=clock,
            rand=lambda: 0.5,
            sleep=clock.sleep,
        )
    except NetworkError as exc:
        return exc, clock, holder, notes
    return result, clock, holder, notes


async def test_a_hub_never_reached_is_given_up_after_the_steady_phase() -> None:
    async def attempt() -> None:
        raise ConnectionRefusedError("refused")

    policy = RetryPolicy(interval=30.0, steady_for=600.0, give_up_after=7200.0, jitter=0.0)
    exc, clock, holder, notes = await run(policy, attempt, reached=False)
    assert isinstance(exc, NetworkError) and "gave up after 21 attempts in 10 min" in exc.message
    assert clock.slept == [30.0] * 20 and holder.drops == 21
    assert "giving up in" in notes.notices[0]


async def test_a_stream_that_reached_the_hub_keeps_the_whole_policy() -> None:
    async def attempt() -> None:
        raise TimeoutError("stalled")

    policy = RetryPolicy(interval=30.0, steady_for=600.0, give_up_after=7200.0, jitter=0.0)
    exc, clock, _, _ = await run(policy, attempt, reached=True)
    assert isinstance(exc, NetworkError) and exc.message.startswith("giving up after")
    assert clock.now - 5000.0 == pytest.approx(7200.0)
    assert max(clock.slept) > 30.0  # the doubling phase ran


async def test_progress_retries_at_once_and_success_returns() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionResetError("reset")
        return "done"

    result, clock, _, _ = await run(RetryPolicy(), attempt, reached=True, progressed=lambda: True)
    assert result == "done" and calls == 4 and clock.slept == [0.0, 0.0, 0.0]


async def test_a_request_error_is_not_retried() -> None:
    async def attempt() -> None:
        raise UsageError("bad name")

    with pytest.raises(UsageError):
        await run(RetryPolicy(), attempt, reached=True)
