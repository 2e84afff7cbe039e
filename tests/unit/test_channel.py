"""The multiplexer's ports: bounded queues, failures never lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from freight.errors import DiskFull
from freight.protocol import messages as m
from freight.transport.channel import ChannelClosed, Mux, Port

QUEUED = 16


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


async def test_failure_reaches_a_port_after_the_frames_queued_before_it() -> None:
    frames = [ka(i) for i in range(QUEUED)]
    frames.append((m.Error(code="disk_full", message="hub disk full"), b""))
    mux = Mux(ScriptedChannel(frames))  # type: ignore[arg-type]
    port = mux.port("s")
    reader = asyncio.create_task(mux.run())
    await asyncio.wait_for(mux.closed.wait(), 5)
    got = [await port.recv() for _ in range(QUEUED)]
    assert [f[0].offset for f in got] == list(range(QUEUED))  # type: ignore[attr-defined]
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


class FloodChannel:
    """A peer that sends ``make(i)`` frames as fast as they are read."""

    def __init__(self, make: Callable[[int], tuple[m.Message, bytes]]) -> None:
        self.make = make
        self.served = 0
        self.bytes = 0

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        pass

    async def recv(self) -> tuple[m.Message, bytes]:
        await asyncio.sleep(0)  # a real socket read yields to the loop
        if self.served >= 100:
            await asyncio.Event().wait()  # enough: the peer goes quiet
        frame = self.make(self.served)
        self.served += 1
        self.bytes += len(frame[1])
        return frame

    async def aclose(self) -> None:
        pass


FOUR_MIB = bytes(4 << 20)  # one shared object: the test itself stays small


def big_data(i: int) -> tuple[m.Message, bytes]:
    return m.Data(
        sid="s", seq=i, offset=i * len(FOUR_MIB), raw=len(FOUR_MIB), len=len(FOUR_MIB)
    ), FOUR_MIB


def big_relay(i: int) -> tuple[m.Message, bytes]:
    return m.Relay(cid="c", kind="d", seq=i, len=len(FOUR_MIB)), FOUR_MIB


async def settle() -> None:
    for _ in range(200):
        await asyncio.sleep(0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make", [big_data, big_relay], ids=["stream", "control"])
async def test_frames_nobody_takes_are_bounded_in_bytes(
    make: Callable[[int], tuple[m.Message, bytes]],
) -> None:
    # 16 MiB per connection (docs/protocol.md 2.4) plus the one frame the
    # reader holds while it waits; a bound in frames let 16 (or 64 control)
    # frames of up to 16 MiB each pile up.
    chan = FloodChannel(make)
    mux = Mux(chan)  # type: ignore[arg-type]
    port = mux.port("s")
    reader = asyncio.create_task(mux.run())
    await settle()
    assert chan.bytes <= 16 * 1024 * 1024 + len(FOUR_MIB)
    taken = chan.served
    # Taking frames makes room: the reader goes on once half has drained.
    for _ in range(taken // 2 + 1):
        if make is big_data:
            await port.recv()
        else:
            await mux.recv_control()
    await settle()
    assert chan.served > taken
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


@pytest.mark.timeout(30)
async def test_a_closed_port_gives_its_bytes_back() -> None:
    chan = FloodChannel(big_data)
    mux = Mux(chan)  # type: ignore[arg-type]
    port = mux.port("s")
    reader = asyncio.create_task(mux.run())
    await settle()
    taken = chan.served
    port.close()  # its stream ended with frames still queued
    await settle()
    assert chan.served > taken  # later frames (for no stream) are read and dropped
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


async def test_a_stream_reads_what_its_peer_sent_before_closing() -> None:
    """A sender that aborts and hangs up at once: the hub side must still see
    the Abort (it discards the partial), not be cancelled by the close."""
    seen: list[object] = []
    gate = asyncio.Event()

    async def on_new(port: Port, msg: m.AnyMessage, payload: bytes) -> None:
        await gate.wait()  # busy elsewhere (a disk write) while the peer closes
        try:
            seen.append(type((await port.recv())[0]))
            await port.recv()
        except ChannelClosed:
            seen.append(ChannelClosed)

    start = m.StartStream(sid="s", name="f", size=1)
    abort = m.Abort(sid="s", code="source_changed", message="changed")
    mux = Mux(ScriptedChannel([(start, b""), (abort, b"")]), on_new=on_new)  # type: ignore[arg-type]
    reader = asyncio.create_task(mux.run())
    await asyncio.wait_for(mux.closed.wait(), 5)
    gate.set()
    await asyncio.wait_for(reader, 5)
    assert seen == [m.Abort, ChannelClosed]


async def test_a_stream_that_ignores_the_close_is_cancelled_after_a_grace() -> None:
    cancelled = asyncio.Event()

    async def on_new(port: Port, msg: m.AnyMessage, payload: bytes) -> None:
        try:
            await asyncio.Event().wait()  # never reads its port
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = m.StartStream(sid="s", name="f", size=1)
    mux = Mux(ScriptedChannel([(start, b"")]), on_new=on_new, grace=0.05)  # type: ignore[arg-type]
    await asyncio.wait_for(mux.run(), 5)
    assert cancelled.is_set()


async def test_a_served_stream_gets_only_the_peers_last_word_after_it_hung_up() -> None:
    """What a sender queued before hanging up was never acknowledged: the
    hub side must not act on it (in a cluster another node may already be
    resuming the stream). Its Abort is still honoured."""
    seen: list[object] = []
    gate = asyncio.Event()

    async def on_new(port: Port, msg: m.AnyMessage, payload: bytes) -> None:
        await gate.wait()
        try:
            while True:
                seen.append(type((await port.recv())[0]))
        except ChannelClosed:
            seen.append(ChannelClosed)

    frames = [
        (m.StartStream(sid="s", name="f", size=1), b""),
        (m.KeepAlive(sid="s", offset=0), b""),
        (m.Abort(sid="s", code="source_changed", message="changed"), b""),
        (m.KeepAlive(sid="s", offset=1), b""),
    ]
    mux = Mux(ScriptedChannel(frames), on_new=on_new)  # type: ignore[arg-type]
    reader = asyncio.create_task(mux.run())
    await asyncio.wait_for(mux.closed.wait(), 5)
    gate.set()
    await asyncio.wait_for(reader, 5)
    assert seen == [m.Abort, ChannelClosed]
    assert mux.budget.held == 0  # what was dropped gave its bytes back
