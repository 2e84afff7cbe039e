"""A stream held to a rate that falls (a background push when another flow
comes): the chunks it sends follow the new rate within two chunks. Chunks
cut for the old rate and read ahead would each go out as one burst into
the bottleneck's queue. The real sender and receiver engines, over an
in-memory channel pair; the engine's clock runs fast so its bucket is
full for every chunk of the new size (only the chunk sizes are under
test; a stale chunk bigger than the bucket still sleeps in real time)."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

from freight.engine.streams import (
    Acceptance,
    FileSource,
    chunk_size_for,
    run_receiver,
    run_sender,
)
from freight.protocol import messages as m
from freight.protocol.stream import StreamReceiver, StreamRequested, StreamSender
from freight.transport.channel import ChannelClosed, Mux, Port

MiB = 1024 * 1024
# bytes/s: chunks of 1 MiB, then of 100 KiB (a stale chunk waits ~0.5 s: real time)
HIGH, LOW = 16 * MiB, 1600 * 1024


class Pipe:
    """One end of an in-memory frame connection; counts the data it sends."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[Any, bytes] | None] = asyncio.Queue()
        self.peer: Pipe | None = None
        self.chunks: list[int] = []  # raw length of each Data frame sent

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        assert self.peer is not None
        if isinstance(msg, m.Data):
            self.chunks.append(msg.raw)
        await self.peer.inbox.put((msg, payload))

    async def recv(self) -> tuple[m.AnyMessage, bytes]:
        item = await self.inbox.get()
        if item is None:
            raise ChannelClosed("closed")
        return item

    async def aclose(self) -> None:
        assert self.peer is not None
        await self.peer.inbox.put(None)


class MemorySink:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    async def open(self, req: StreamRequested) -> Acceptance:
        return Acceptance(checkpoint=0, prefix_digest="", level=m.LEVEL_NONE, rate=0)

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    async def durable(self, offset: int) -> tuple[int, str]:
        return 0, m.LEVEL_NONE

    async def finish(self, total: int, digest: str) -> tuple[bool, str]:
        return True, digest

    async def aborted(self, code: str, message: str) -> None:
        pass


async def _send_with_falling_rate(path: Path, fall_after: int) -> tuple[list[int], bytes]:
    near, far = Pipe(), Pipe()
    near.peer, far.peer = far, near
    source = FileSource(path)
    sink = MemorySink(source.size)
    done = asyncio.Event()

    async def serve(port: Port, first: m.AnyMessage, payload: bytes) -> None:
        assert isinstance(first, m.StartStream)
        await run_receiver(port, StreamReceiver(first.sid), sink, first)
        done.set()

    near_mux, far_mux = Mux(near), Mux(far, on_new=serve)
    readers = [asyncio.create_task(near_mux.run()), asyncio.create_task(far_mux.run())]
    ticks = itertools.count()
    try:

        def limit() -> int:
            return HIGH if sum(near.chunks) < fall_after else LOW

        sender = StreamSender(sid="s1", name="f", size=source.size)
        ack = await asyncio.wait_for(
            run_sender(
                near_mux.port("s1"),
                sender,
                source,
                limit=limit,
                clock=lambda: 100.0 * next(ticks),  # the bucket is always full
                stall_timeout=1e12,  # (on that clock)
            ),
            30,
        )
        await asyncio.wait_for(done.wait(), 30)
        assert ack.verified
    finally:
        source.close()
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return near.chunks, bytes(sink.data)


def test_chunks_follow_a_falling_rate_within_two(tmp_path: Path) -> None:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(12 * MiB))
    chunks, got = asyncio.run(_send_with_falling_rate(path, fall_after=4 * MiB))
    assert got == path.read_bytes()
    big, small = chunk_size_for(HIGH), chunk_size_for(LOW)
    assert big == MiB and small == 100 * 1024
    fell_at = next(i for i, n in enumerate(itertools.accumulate(chunks)) if n >= 4 * MiB) + 1
    after = chunks[fell_at:]
    assert after, chunks
    stale = [n for n in after if n > small]
    assert len(stale) <= 2, f"{len(stale)} chunks of the old size went out after the fall"
    assert all(n <= small for n in after[len(stale) :])
