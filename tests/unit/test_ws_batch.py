"""Frames over a real loopback WebSocket: with batching on, the frames sent
in one loop turn leave in one message and arrive whole and in order; a
sender cancelled before the write sends nothing; without batching every
message holds one frame, as an older peer expects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from freight.protocol import messages as m
from freight.protocol.frames import decode_frames
from freight.transport.ws import WS_MAX_MESSAGE, WSChannel

WAIT = 10.0


@pytest.fixture
async def raw_messages() -> AsyncIterator[tuple[WSChannel, asyncio.Queue[bytes]]]:
    """A client WSChannel whose server end records every binary message."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE)
        await ws.prepare(request)
        async for item in ws:
            got.put_nowait(item.data)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/")
        chan = WSChannel(ws)
        try:
            yield chan, got
        finally:
            await chan.aclose()
            await runner.cleanup()


def ping(i: int) -> m.TicketRequest:
    return m.TicketRequest(rid=f"r{i}")


async def frames_of(got: asyncio.Queue[bytes], n: int) -> tuple[list[m.AnyMessage], int]:
    """The first ``n`` frames received, and in how many messages."""
    frames: list[m.AnyMessage] = []
    messages = 0
    while len(frames) < n:
        data = await asyncio.wait_for(got.get(), WAIT)
        messages += 1
        frames += [msg for msg, _ in decode_frames(data)]
    return frames, messages


async def test_frames_of_one_loop_turn_share_one_message(
    raw_messages: tuple[WSChannel, asyncio.Queue[bytes]],
) -> None:
    chan, got = raw_messages
    chan.batching = True
    await asyncio.wait_for(asyncio.gather(*(chan.send(ping(i)) for i in range(100))), WAIT)
    await chan.send_many([(ping(i), b"") for i in range(100, 150)])
    frames, messages = await frames_of(got, 150)
    assert frames == [ping(i) for i in range(150)]
    assert messages <= 3


async def test_without_batching_every_message_holds_one_frame(
    raw_messages: tuple[WSChannel, asyncio.Queue[bytes]],
) -> None:
    chan, got = raw_messages
    await asyncio.wait_for(asyncio.gather(*(chan.send(ping(i)) for i in range(20))), WAIT)
    await chan.send_many([(ping(i), b"") for i in range(20, 30)])
    frames, messages = await frames_of(got, 30)
    assert frames == [ping(i) for i in range(30)]
    assert messages == 30


async def test_a_send_cancelled_before_the_write_sends_nothing(
    raw_messages: tuple[WSChannel, asyncio.Queue[bytes]],
) -> None:
    chan, got = raw_messages
    chan.batching = True
    lone = asyncio.create_task(chan.send(ping(0)))
    await asyncio.sleep(0)  # it leads, waiting for its turn to end
    lone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lone
    # A leader cancelled while an earlier write holds the channel hands its
    # batch (its own frame included: others joined) over to its followers.
    await chan._lock.acquire()  # the earlier write
    leader = asyncio.create_task(chan.send(ping(1)))
    for _ in range(3):
        await asyncio.sleep(0)
    followers = [asyncio.create_task(chan.send(ping(i))) for i in (2, 3)]
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    chan._lock.release()
    await asyncio.wait_for(asyncio.gather(*followers), WAIT)
    frames, _ = await frames_of(got, 3)
    assert frames == [ping(1), ping(2), ping(3)]
    assert got.empty()


async def test_a_big_frame_goes_alone_and_small_ones_around_it_still_batch(
    raw_messages: tuple[WSChannel, asyncio.Queue[bytes]],
) -> None:
    chan, got = raw_messages
    chan.batching = True
    big = bytes(300 * 1024)
    sends = [
        chan.send(ping(0)),
        chan.send(m.MsgSend(len=len(big), id="ab" * 16, to="cd" * 16, app="a", type=1), big),
        chan.send(ping(1)),
    ]
    await asyncio.wait_for(asyncio.gather(*sends), WAIT)
    sizes = []
    kinds: list[str] = []
    while len(kinds) < 3:
        data = await asyncio.wait_for(got.get(), WAIT)
        sizes.append(len(data))
        kinds += [type(msg).__name__ for msg, _ in decode_frames(data)]
    assert kinds == ["TicketRequest", "MsgSend", "TicketRequest"]
    assert len(sizes) == 3


async def test_frames_sent_while_a_write_holds_the_channel_keep_their_order(
    raw_messages: tuple[WSChannel, asyncio.Queue[bytes]],
) -> None:
    """A record, then a hangup, from one sender while other senders' frames
    and an earlier write are in the way: each sender's frames arrive in the
    order it sent them, none overtakes another."""
    chan, got = raw_messages
    chan.batching = True
    await chan._lock.acquire()  # an earlier write holds the channel

    async def sender(k: int) -> None:
        for i in range(20):
            await chan.send(ping(100 * k + i))

    senders = [asyncio.create_task(sender(k)) for k in range(4)]
    for _ in range(5):
        await asyncio.sleep(0)
    chan._lock.release()
    await asyncio.wait_for(asyncio.gather(*senders), WAIT)
    frames, _ = await frames_of(got, 80)
    for k in range(4):
        mine = [f for f in frames if int(f.rid[1:]) // 100 == k]  # type: ignore[union-attr]
        assert mine == [ping(100 * k + i) for i in range(20)]
    assert got.empty()
