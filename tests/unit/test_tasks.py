"""The task supervisor: every task has an owner that hears how it ended."""

from __future__ import annotations

import asyncio
import logging

import pytest

from freight.tasks import Supervisor


async def test_a_helper_failure_fails_its_owner_and_calls_back() -> None:
    seen: list[BaseException] = []
    sup = Supervisor("conn", on_failure=seen.append)

    async def broken() -> None:
        raise ValueError("writer broke")

    sup.spawn(broken(), name="writer")
    failure = await asyncio.wait_for(sup.wait_failed(), 5)
    assert isinstance(failure, ValueError) and seen == [failure]
    assert "failed" in repr(sup)
    await sup.aclose()


async def test_a_detached_failure_is_logged_and_spares_its_siblings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor("hub")
    sibling_done = asyncio.Event()

    async def broken() -> None:
        raise ValueError("one client's trouble")

    async def sibling() -> None:
        await asyncio.sleep(0)
        sibling_done.set()

    with caplog.at_level(logging.WARNING, logger="freight.tasks"):
        sup.spawn(broken(), name="client-1", detached=True)
        sup.spawn(sibling(), name="client-2", detached=True)
        await asyncio.wait_for(sibling_done.wait(), 5)
        async with asyncio.timeout(5):
            while len(sup):
                await asyncio.sleep(0)
    assert sup.failure is None and sup.detached_failures == 1
    assert any("hub/client-1" in str(getattr(r, "task", "")) for r in caplog.records)
    await sup.aclose()


async def test_aclose_cancels_and_waits_for_every_task() -> None:
    sup = Supervisor("attachment")
    cleaned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(name)

    for name in ("reader", "writer", "timer"):
        sup.spawn(forever(name), name=name)
    await asyncio.sleep(0)
    await asyncio.wait_for(sup.aclose(), 5)
    assert sorted(cleaned) == ["reader", "timer", "writer"] and len(sup) == 0
    # A cancelled task is not a failure.
    assert sup.failure is None


async def test_a_closed_supervisor_refuses_new_tasks() -> None:
    async with Supervisor("done") as sup:
        pass

    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(RuntimeError, match="closed"):
        sup.spawn(never())


async def test_the_callers_cancellation_is_not_swallowed() -> None:
    sup = Supervisor("slow")

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(10)  # ignores cancellation for a while
            raise

    sup.spawn(stubborn())
    await asyncio.sleep(0)
    closer = asyncio.ensure_future(sup.aclose(timeout=30))
    await asyncio.sleep(0.01)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
