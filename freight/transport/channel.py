"""Frame channels and the per-stream multiplexer.

A :class:`FrameChannel` moves whole frames (message + payload) over one
connection. A :class:`Mux` reads a channel in one task and hands each stream's
frames to that stream's :class:`Port`; what its ports and control queue hold
together is bounded in bytes (:class:`~.flow.Budget`), so a slow stream slows
its connection (TCP back-pressure) instead of growing memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..errors import NetworkError, code_to_error
from ..protocol import messages as m
from ..protocol.messages import AnyMessage, Message
from ..tasks import Supervisor
from .flow import FRAME_OVERHEAD, Budget, ByteQueue

Frame = tuple[AnyMessage, bytes]

# Frames one connection holds for its streams and control requests before
# its reader stops (the peer's TCP window then fills): 16 x 1 MiB chunks
# keep a stream on its own data connection streaming; whatever sizes a
# peer picks, one connection pins at most this plus one frame.
MUX_QUEUE_BYTES = 16 * 1024 * 1024
# How long the streams a peer opened may take, once it hung up, to act on
# its last word (an Abort queued just before the close), before they are
# cancelled; the rest of what it queued is dropped.
CLOSE_GRACE = 2.0


class ChannelClosed(NetworkError):
    """The connection closed."""

    code = "channel_closed"


class FrameChannel(Protocol):
    async def send(self, msg: Message, payload: bytes = b"") -> None: ...

    async def recv(self) -> Frame: ...

    async def aclose(self) -> None: ...


class Port:
    """One stream's view of a shared channel."""

    def __init__(self, mux: Mux, sid: str) -> None:
        self.sid = sid
        self.mux = mux
        self.queue: ByteQueue[Frame] = ByteQueue(mux.budget)
        self.failure: BaseException | None = None
        self.opened_by_peer = False  # served by ``on_new``

    def fail(self, exc: BaseException) -> None:
        """The connection failed: recv() raises ``exc`` once queued frames
        are consumed (never dropped)."""
        if self.failure is None:
            self.failure = exc
            self.queue.put_nowait(exc)

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        await self.mux.channel.send(msg, payload)

    async def recv(self) -> Frame:
        if self.queue.empty() and self.failure is not None:
            raise self.failure
        item = await self.queue.get()
        if isinstance(item, BaseException):
            # Keep the failure visible to any later recv() too.
            self.queue.put_nowait(item)
            raise item
        return item

    def close(self) -> None:
        if self.mux.ports.get(self.sid) is self:
            del self.mux.ports[self.sid]
        self.queue.clear()  # nobody will take them: give their bytes back


NewStreamHandler = Callable[[Port, AnyMessage, bytes], Awaitable[None]]


class Mux:
    """Dispatches incoming frames by ``sid``.

    Frames of unknown streams that open a stream (StartStream, Pull,
    PutFiles, GetFiles) go to
    ``on_new`` (the hub side); frames without a stream (Welcome, TicketGrant,
    Error with no sid) go to the control queue.
    """

    def __init__(
        self,
        channel: FrameChannel,
        on_new: NewStreamHandler | None = None,
        *,
        grace: float = CLOSE_GRACE,
    ) -> None:
        self.channel = channel
        self.on_new = on_new
        self.grace = grace
        self.ports: dict[str, Port] = {}
        self.budget = Budget(MUX_QUEUE_BYTES)
        self.control: ByteQueue[Frame] = ByteQueue(self.budget)
        # One task per stream the peer opens (``on_new``); one failing is
        # logged and does not end the others.
        self._tasks = Supervisor("mux-streams")
        self.closed = asyncio.Event()

    def port(self, sid: str) -> Port:
        if sid in self.ports:
            raise ValueError(f"stream {sid} is already open on this connection")
        p = self.ports[sid] = Port(self, sid)
        return p

    async def recv_control(self) -> Frame:
        item = await self.control.get()
        if isinstance(item, BaseException):
            self.control.put_nowait(item)
            raise item
        return item

    async def run(self) -> None:
        """Read until the channel closes; then fail every waiting port."""
        failure: BaseException = ChannelClosed("connection closed")
        grace = 0.0  # none when this reader is cancelled (shutdown)
        try:
            while True:
                msg, payload = await self.channel.recv()
                await self._dispatch(msg, payload)
        except (ChannelClosed, NetworkError) as exc:
            failure, grace = exc, self.grace
        except Exception as exc:  # a protocol error: every waiter sees it
            failure = exc
        finally:
            self.closed.set()
            for p in list(self.ports.values()):
                if p.opened_by_peer:
                    # What the peer queued before it hung up was never
                    # acknowledged: only its last word (an Abort) counts.
                    p.queue.keep(_last_word)
                p.fail(failure)
            self.control.put_nowait(failure)
            # The peer may have sent its last word (an Abort) just before it
            # hung up: each stream reads it, then sees the close.
            await self._tasks.aclose(grace=grace)

    async def _dispatch(self, msg: AnyMessage, payload: bytes) -> None:
        # Wait for room before taking the next frame: the peer's frames then
        # wait in its TCP window, not in our memory.
        await self.budget.wait_room()
        size = len(payload) + FRAME_OVERHEAD
        sid = getattr(msg, "sid", "")
        if not sid:
            if isinstance(msg, m.Error):
                # The peer explains why it is closing: every stream should say so.
                failure = code_to_error(msg.code, msg.message)
                for p in list(self.ports.values()):
                    p.fail(failure)
            self.control.put_nowait((msg, payload), size)
            return
        port = self.ports.get(sid)
        if port is not None:
            port.queue.put_nowait((msg, payload), size)
            return
        if self.on_new is not None and isinstance(
            msg, m.StartStream | m.Pull | m.PutFiles | m.GetFiles
        ):
            port = self.port(sid)
            port.opened_by_peer = True
            self._tasks.spawn(self._serve(port, msg, payload), name=sid, detached=True)
            return
        if isinstance(msg, m.Error):
            return  # late error for a stream that is already gone
        # A frame for a stream that already finished (e.g. a late ack): drop.

    async def _serve(self, port: Port, msg: AnyMessage, payload: bytes) -> None:
        assert self.on_new is not None
        try:
            await self.on_new(port, msg, payload)
        finally:
            port.close()


def _last_word(item: Frame | BaseException) -> bool:
    return isinstance(item, tuple) and isinstance(item[0], m.Abort | m.Error)
