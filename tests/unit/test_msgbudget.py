"""The sending side of a messaging host (freight.client.msgbudget): the
budget mirrors what the hub takes in flight, a (host, app) that answered
busy gets one message at a time, paced, until one is taken, and what the
host holds unanswered is bounded in messages and bytes."""

from __future__ import annotations

import asyncio

import pytest

from freight.client.msgbudget import Congestion, Outbox, SendBudget, Unanswered
from tests.support import Clock

MiB = 1024 * 1024
WAIT = 5.0


async def test_the_budget_waits_at_the_hubs_bound_and_frees_on_answers() -> None:
    budget = SendBudget(max_count=3, max_bytes=2 * MiB)
    assert budget.try_take(("m1", "h"), MiB)
    assert budget.try_take(("m2", "h"), MiB)
    assert not budget.try_take(("m3", "h"), 1)  # bytes
    assert budget.try_take(("m1", "h"), MiB)  # sent again while in flight: counted once
    waiting = asyncio.create_task(budget.take(("m3", "h"), MiB))
    await asyncio.sleep(0)
    assert not waiting.done()
    budget.release(("m1", "h"))
    await asyncio.wait_for(waiting, WAIT)
    budget.release(("unknown", "h"))  # an answer for nothing held: harmless
    assert budget.bytes == 2 * MiB
    small = SendBudget(max_count=1, max_bytes=MiB)
    assert small.try_take(("a", "h"), 1)
    assert not small.try_take(("b", "h"), 1)  # count
    small.clear()
    assert small.try_take(("b", "h"), 1)


async def test_after_busy_one_message_at_a_time_goes_paced() -> None:
    clock = Clock(100.0)
    jams = Congestion(clock, first=0.05, cap=1.0)
    assert not jams.jammed("h", "slow")
    jams.answered("m0", "h", "slow", busy=True)
    assert jams.jammed("h", "slow")
    assert not jams.jammed("h", "other")  # another app of that host is not held
    first = asyncio.create_task(jams.admit("m1", "h", "slow"))
    await asyncio.sleep(0)
    assert not first.done()  # within the back-off
    clock.now += 0.05
    await asyncio.wait_for(first, WAIT)  # the probe
    second = asyncio.create_task(jams.admit("m2", "h", "slow"))
    clock.now += 10
    await asyncio.sleep(0.1)
    assert not second.done()  # the probe is not answered yet
    jams.answered("m1", "h", "slow", busy=True)  # still busy: the next after 0.1 s
    await asyncio.sleep(0.02)
    assert not second.done()
    clock.now += 0.1
    await asyncio.wait_for(second, WAIT)
    third = asyncio.create_task(jams.admit("m3", "h", "slow"))
    jams.answered("m2", "h", None, busy=False)  # taken: the way is open
    await asyncio.wait_for(third, WAIT)
    assert not jams.jammed("h", "slow")


async def test_a_probe_held_without_answer_lets_the_next_go_when_its_sender_gives_up() -> None:
    clock = Clock(100.0)
    jams = Congestion(clock, first=0.05, cap=1.0)
    jams.answered("m0", "h", "stall", busy=True)
    clock.now += 1
    await asyncio.wait_for(jams.admit("m1", "h", "stall"), WAIT)
    nxt = asyncio.create_task(jams.admit("m2", "h", "stall"))
    await asyncio.sleep(0.02)
    assert not nxt.done()
    jams.done("m1", ["h"])  # m1's deadline passed; the recipient still holds it
    clock.now += 1
    await asyncio.wait_for(nxt, WAIT)


async def test_a_new_attachment_forgets_what_was_busy_and_held() -> None:
    clock = Clock(100.0)
    box = Outbox(clock, 0.05, 1.0)
    box.answered("m0", "h", "slow", "busy")
    assert not box.ready("m1", "h", "slow", 10)
    waiting = asyncio.create_task(box.admit("m1", "h", "slow", 10))
    await asyncio.sleep(0)
    box.clear()
    await asyncio.wait_for(waiting, WAIT)
    assert box.ready("m2", "h", "slow", 10)
    box.unsent("m2", "h")
    assert ("m2", "h") not in box.budget.held


@pytest.mark.parametrize("reason", ["", "no_app", "retry", "bad_seal"])
async def test_only_busy_holds_a_host_back(reason: str) -> None:
    box = Outbox(Clock(100.0), 0.05, 1.0)
    assert box.ready("m1", "h", "app", 10)
    box.answered("m1", "h", "app", reason)
    assert box.ready("m2", "h", "app", 10)
    assert box.budget.held == {("m2", "h"): 10}


async def test_unanswered_messages_are_bounded_in_count_and_bytes_first_come_first_served() -> None:
    held = Unanswered(count=3, size=2 * MiB)
    await held.take(MiB)
    await held.take(MiB)
    big = asyncio.create_task(held.take(MiB))  # over the bytes
    await asyncio.sleep(0)
    small = asyncio.create_task(held.take(1))  # over the bytes too, and after it
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    held.give(MiB)
    await asyncio.wait_for(big, WAIT)
    assert not small.done()
    assert (held.n, held.bytes) == (2, 2 * MiB)
    held.give(MiB)
    await asyncio.wait_for(small, WAIT)
    await held.take(0)
    assert (held.n, held.bytes) == (3, MiB + 1)
    counted = asyncio.create_task(held.take(0))  # over the count
    await asyncio.sleep(0)
    assert not counted.done()
    held.give(1)
    await asyncio.wait_for(counted, WAIT)
    assert (held.n, held.bytes) == (3, MiB)


async def test_a_body_larger_than_the_bound_goes_alone() -> None:
    held = Unanswered(count=10, size=MiB)
    await held.take(4 * MiB)  # nothing else held: it goes
    second = asyncio.create_task(held.take(1))
    await asyncio.sleep(0)
    assert not second.done()
    held.give(4 * MiB)
    await asyncio.wait_for(second, WAIT)
    assert (held.n, held.bytes) == (1, 1)


async def test_a_waiter_that_gives_up_holds_no_room() -> None:
    held = Unanswered(count=1, size=MiB)
    await held.take(10)
    gone = asyncio.create_task(held.take(10))
    after = asyncio.create_task(held.take(20))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    held.give(10)
    await asyncio.wait_for(after, WAIT)
    assert (held.n, held.bytes) == (1, 20)
    # Granted in the same turn as it is cancelled: the room is handed back.
    late = asyncio.create_task(held.take(5))
    await asyncio.sleep(0)
    held.give(20)  # grants `late`...
    late.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await late
    assert (held.n, held.bytes) == (0, 0)
