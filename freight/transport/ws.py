"""Frames over a WebSocket: one binary message carries one or more whole
frames back to back.

Several frames go in one message only once both ends said they read such
messages (``Hello.batch`` / ``Welcome.batch``; :attr:`WSChannel.batching`):
the frames sent during one turn of the event loop then leave in one
WebSocket message, one TLS record and one write instead of one each."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from ..protocol.errors import RemoteProtocolError
from ..protocol.frames import decode_frames, encode_header
from ..protocol.limits import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES
from ..protocol.messages import Message
from .channel import ChannelClosed, Frame

WS_MAX_MESSAGE = 4 + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES
# Seconds without a frame before an end pings (aiohttp's heartbeat; the pong
# is awaited half as long). The hub's is longer than two of the clients', so
# on a quiet connection the client pings and the hub only answers: with
# 10,000 agents the hub pays for no ping task and no pong timer of its own,
# and its heartbeat timer (moved on by every frame received, but only when
# it fires) fires once per two client pings rather than once per ping. A
# client gone without a word is noticed after 55 s + 27.5 s, sooner than an
# MQTT broker notices one with a 60 s keep-alive (1.5 x 60 s).
CLIENT_HEARTBEAT = 25.0
HUB_HEARTBEAT = 2 * CLIENT_HEARTBEAT + 5.0
# Frames are joined into one message up to this size; a bigger frame goes alone.
BATCH_BYTES = 256 * 1024

_LOST = (ConnectionError, aiohttp.ClientError, RuntimeError)


class _Batch:
    """The frames of one write: who waits for it and how it went."""

    __slots__ = ("done", "followers", "outcome")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.followers = 0
        self.outcome: BaseException | bool | None = None  # True: sent; False: lead again


class WSChannel:
    """Wraps an aiohttp client or server WebSocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.batching = False
        self._lock = asyncio.Lock()
        self._frames: list[bytes] = []
        self._batch: _Batch | None = None
        self._received: deque[Frame] = deque()

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        head = encode_header(msg)
        frame = head + payload if payload else head
        if not self.batching:
            await self._write_alone(frame)
            return
        self._frames.append(frame)
        while True:
            batch = self._batch
            if batch is None:
                await self._lead()
                return
            batch.followers += 1
            await asyncio.shield(batch.done)
            outcome = batch.outcome
            if outcome is True:
                return
            if isinstance(outcome, BaseException):
                raise ChannelClosed(f"websocket lost: {outcome}")
            # The leader was cancelled before it wrote: one of us leads now.

    async def send_many(self, frames: Iterable[tuple[Message, bytes]]) -> None:
        """Send frames in order, several per message when batching."""
        if not self.batching:
            for msg, payload in frames:
                await self.send(msg, payload)
            return
        for msg, payload in frames:
            head = encode_header(msg)
            self._frames.append(head + payload if payload else head)
        await self.send_pending()

    async def send_pending(self) -> None:
        while (batch := self._batch) is not None:
            batch.followers += 1
            await asyncio.shield(batch.done)
            if isinstance(batch.outcome, BaseException):
                raise ChannelClosed(f"websocket lost: {batch.outcome}")
        if self._frames:
            await self._lead(gather=False)

    async def _lead(self, *, gather: bool = True) -> None:
        """Write the frames gathered so far (with ``gather``, after the
        frames of this loop turn joined in; send_many's caller has gathered
        them already, and a turn more cost each hop of a message a busy
        loop's turn of latency)."""
        loop = asyncio.get_running_loop()
        batch = self._batch = _Batch(loop.create_future())
        locked = False
        try:
            if gather:
                await asyncio.sleep(0)  # the other frames of this loop turn join in
            await self._lock.acquire()
            locked = True
        finally:
            if not locked:  # cancelled before writing: a follower leads instead
                if self._batch is batch:
                    self._batch = None
                    if not batch.followers:
                        self._frames.clear()  # only ours: a cancelled send sends nothing
                batch.outcome = False
                batch.done.set_result(None)
        try:
            self._batch = None
            frames, self._frames = self._frames, []
            await self._write(frames)
            batch.outcome = True
        except _LOST as exc:
            batch.outcome = exc
            raise ChannelClosed(f"websocket lost: {exc}") from None
        finally:
            if batch.outcome is None:  # cancelled while writing: the frames may be cut
                batch.outcome = ChannelClosed("a send was cancelled while writing")
            self._lock.release()
            batch.done.set_result(None)

    async def _write(self, frames: list[bytes]) -> None:
        group: list[bytes] = []
        size = 0
        for frame in frames:
            if group and size + len(frame) > BATCH_BYTES:
                await self.ws.send_bytes(b"".join(group))
                group, size = [], 0
            group.append(frame)
            size += len(frame)
        if group:
            await self.ws.send_bytes(group[0] if len(group) == 1 else b"".join(group))

    async def _write_alone(self, frame: bytes) -> None:
        try:
            async with self._lock:
                await self.ws.send_bytes(frame)
        except _LOST as exc:
            raise ChannelClosed(f"websocket lost: {exc}") from None

    async def recv(self) -> Frame:
        if self._received:
            return self._received.popleft()
        while True:
            try:
                item = await self.ws.receive()
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise ChannelClosed(f"websocket lost: {exc}") from None
            if item.type == WSMsgType.BINARY:
                first, *more = decode_frames(item.data)
                if more:
                    self._received.extend(more)
                return first
            if item.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                raise ChannelClosed("websocket closed")
            if item.type == WSMsgType.ERROR:
                raise ChannelClosed(f"websocket error: {self.ws.exception()}")
            if item.type == WSMsgType.TEXT:
                raise RemoteProtocolError("text message on a frame channel")
            # PING/PONG are handled by aiohttp; loop.

    async def aclose(self) -> None:
        with contextlib.suppress(*_LOST):
            await self.ws.close()
