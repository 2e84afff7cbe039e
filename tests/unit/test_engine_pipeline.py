"""The engine's read-ahead and write-behind: bounded in bytes, in order,
errors reach the caller, and closing (or cancelling the caller) waits for
the block in progress and leaves no thread running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import blake3
import pytest

from freight.engine.pipeline import ReadAhead, WriteBehind, read_blocks

DATA = os.urandom(1_000_003)


def reader(data: bytes, log: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    def read(offset: int, n: int) -> bytes:
        if log is not None:
            log.append((offset, n))
        return data[offset : offset + n]

    return read


async def collect(offset: int = 0, **kw: int) -> tuple[bytes, str]:
    h = blake3.blake3(DATA[:offset])
    out = []
    async with contextlib.aclosing(read_blocks(reader(DATA), h, offset, len(DATA), **kw)) as it:
        async for block in it:
            out.append(block)
    return b"".join(out), h.hexdigest()


@pytest.mark.parametrize("offset", [0, 1, 65_536, len(DATA)])
async def test_blocks_arrive_in_order_and_are_hashed(offset: int) -> None:
    got, digest = await collect(offset, block=4096, max_bytes=3 * 4096)
    assert got == DATA[offset:]
    assert digest == blake3.blake3(DATA).hexdigest()


async def test_read_ahead_is_bounded_in_bytes() -> None:
    log: list[tuple[int, int]] = []
    r: ReadAhead[bytes] = ReadAhead(
        reader(DATA, log), None, 0, prepare=bytes, max_bytes=10_000, workers=2
    )
    try:
        r.fill(len(DATA), 4096)
        assert len(r) == 2 and r.queued == 8192  # a third block would pass 10 000
        await r.take()
        r.fill(len(DATA), 4096)
        assert r.queued == 8192
        r.fill(len(DATA), 20_000)  # one block bigger than the bound still goes
        assert r.queued == 8192
        big = ReadAhead(reader(DATA), None, 0, prepare=bytes, max_bytes=10)
        big.fill(len(DATA), 4096)
        assert len(big) == 1
        await big.aclose()
    finally:
        await r.aclose()


async def test_a_read_error_reaches_the_consumer() -> None:
    def read(offset: int, n: int) -> bytes:
        if offset >= 8192:
            raise OSError(5, "Input/output error")
        return DATA[offset : offset + n]

    got = []
    with pytest.raises(OSError, match="Input/output"):
        async with contextlib.aclosing(read_blocks(read, None, 0, 100_000, block=4096)) as it:
            async for block in it:
                got.append(block)
    assert b"".join(got) == DATA[:8192]


async def test_a_short_read_ends_the_blocks() -> None:
    got, _ = await collect(0, block=4096)
    short = DATA[:10_000]
    out = []
    async with contextlib.aclosing(read_blocks(reader(short), None, 0, 50_000, block=4096)) as it:
        async for block in it:
            out.append(block)
    assert b"".join(out) == short and got == DATA


async def test_cancelling_the_consumer_waits_for_the_read_in_progress() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[int] = []

    def read(offset: int, n: int) -> bytes:
        if offset:
            started.set()
            release.wait(5)
            finished.append(offset)
        return b"x" * n

    async def consume() -> None:
        async with contextlib.aclosing(read_blocks(read, None, 0, 10 * 4096, block=4096)) as it:
            async for _ in it:
                await asyncio.sleep(3600)

    task = asyncio.create_task(consume())
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the block being read
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished  # the read ended before the consumer did
    assert not [t for t in threading.enumerate() if t.name.startswith("freight-read")]


async def test_writes_run_in_order_bounded_in_bytes() -> None:
    done: list[int] = []
    gate = threading.Event()

    def write(i: int) -> None:
        gate.wait(5)
        done.append(i)

    w = WriteBehind(max_bytes=3000)
    try:
        for i in range(3):
            await w.submit(write, i, size=1000)
        assert w.pending == 3000
        fourth = asyncio.create_task(w.submit(write, 3, size=1000))
        await asyncio.sleep(0.05)
        assert not fourth.done()  # over the bound: waits for the disk
        gate.set()
        await fourth
        assert await w.call(lambda: list(done)) == [0, 1, 2, 3]
    finally:
        await w.aclose()


async def test_a_write_failure_stops_later_writes_and_is_raised() -> None:
    done: list[int] = []

    def write(i: int) -> None:
        if i == 1:
            raise OSError(28, "No space left on device")
        done.append(i)

    w = WriteBehind()
    try:
        for i in range(4):
            with contextlib.suppress(OSError):
                await w.submit(write, i, size=10)
        with pytest.raises(OSError, match="No space"):
            await w.call(lambda: None)
        with pytest.raises(OSError, match="No space"):
            await w.submit(write, 9)
        assert done == [0]
    finally:
        await w.aclose()


async def test_closing_the_writer_drops_what_has_not_started() -> None:
    ran: list[int] = []

    def slow(i: int) -> None:
        time.sleep(0.05)
        ran.append(i)

    w = WriteBehind()
    for i in range(20):
        await w.submit(slow, i, size=1)
    await w.aclose()
    assert len(ran) < 20 and ran == list(range(len(ran)))
    assert not [t for t in threading.enumerate() if t.name.startswith("freight-write")]
