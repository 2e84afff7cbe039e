"""The multiplexer's ports: bounded queues, failures never lost."""

from __future__ import annotations

import asyncio

import pytest

from freight.errors import DiskFull
from freight.protocol import messages as m
from freight.transport.channel import PORT_QUEUE_FRAMES, ChannelClosed, Mux, Port


class ScriptedChannel:
    """A channel that yields given frames, then reports the connection closed."""

    def __init__(self, frames: list[tuple[m.Message, bytes]], *, hold: bool = False) -> None:
        self.frames = list(frames)
        self.hold = hold  # after the frames, stay open instead of closing
        self.sent: list[m.Message] = []

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        self.sent.append(msg)

    async def recv(self) -> tuple[m.Message, bytes]:
        if self.frames:
            return self.frames.pop(0)
        if self.hold:
            await asyncio.Event().wait()
        raise ChannelClosed("closed")

    async def aclose(self) -> None:
        pass


def ka(i: int) -> tuple[m.Message, bytes]:
    return m.KeepAlive(sid="s", offset=i), b""


async def test_failure_reaches_a_port_whose_queue_was_full() -> None:
    frames = [ka(i) for i in range(PORT_QUEUE_FRAMES)]
    frames.append((m.Error(code="disk_full", message="hub disk full"), b""))
    mux = Mux(ScriptedChannel(frames))  # type: ignore[arg-type]
    port = mux.port("s")
    reader = asyncio.create_task(mux.run())
    await asyncio.wait_for(mux.closed.wait(), 5)
    got = [await port.recv() for _ in range(PORT_QUEUE_FRAMES)]
    assert [f[0].offset for f in got] == list(range(PORT_QUEUE_FRAMES))  # type: ignore[attr-defined]
    with pytest.raises(DiskFull, match="hub disk full"):
        await port.recv()
    with pytest.raises(DiskFull):  # and it stays failed
        await port.recv()
    await reader


async def test_closed_connection_fails_waiting_ports() -> None:
    mux = Mux(ScriptedChannel([]))  # type: ignore[arg-type]
    port = mux.port("s")
    waiter = asyncio.create_task(port.recv())
    await mux.run()
    with pytest.raises(ChannelClosed):
        await waiter


async def test_frames_for_unknown_streams_open_new_ones_on_the_hub_side() -> None:
    seen: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def on_new(port: Port, msg: m.AnyMessage, payload: bytes) -> None:
        await seen.put((port.sid, type(msg)))
        await seen.put((port.sid, type((await port.recv())[0])))  # later frames follow

    start = m.StartStream(sid="new", name="f", size=1)
    chan = ScriptedChannel([(start, b""), (m.KeepAlive(sid="new", offset=0), b"")], hold=True)
    mux = Mux(chan, on_new=on_new)  # type: ignore[arg-type]
    reader = asyncio.create_task(mux.run())
    assert await asyncio.wait_for(seen.get(), 5) == ("new", m.StartStream)
    assert await asyncio.wait_for(seen.get(), 5) == ("new", m.KeepAlive)
    reader.cancel()
