"""HTTP attachments: the hub's end of frame channels over plain HTTP
requests, for clients whose proxy or firewall blocks the WebSocket upgrade
(the client's end: :mod:`freight.transport.httpchan`; the numbering both
ends share: :mod:`freight.protocol.attach`, docs/protocol.md §14).

    POST   /v1/attach/http                    → {"aid", "keepalive"}
    GET    /v1/attach/http/{aid}/down?ack=N   → our frames, streamed
    POST   /v1/attach/http/{aid}/up?seq=K&ack=N  (frames) → 204
    POST   /v1/attach/http/{aid}/up?ack=N     (no body: an ack alone) → 204
    DELETE /v1/attach/http/{aid}              → 204

Every request must come from the user who made the attachment, else 404.
Frames we send are kept until the client acknowledges them, so a down
response cut by a proxy is replayed by the next one; a retried up POST skips
the frames we already have. A client that sends neither ``ack`` nor ``seq``
gets plain long-polling: frames count as delivered once written, and each
POST's frames follow the last ones. An attachment ends when its ``serve`` returns,
on DELETE, on a malformed up body, or after ``grace`` seconds without a down
request (the client is gone).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import NotFound, ProtocolError, UsageError
from ..protocol.attach import (
    DOWN_WINDOW_BYTES,
    INBOX_BYTES,
    INBOX_FRAMES,
    PING_FRAME,
    BodyFrames,
    HubAttachment,
)
from ..protocol.frames import encode_frame
from ..protocol.messages import Message, Ping
from ..tasks import Supervisor
from ..transport.channel import ChannelClosed, Frame, FrameChannel
from ..transport.signal import Signal
from .requests import current_user

Serve = Callable[[web.Request, FrameChannel], Awaitable[None]]

KEEPALIVE: Final = 25.0
GRACE: Final = 60.0
__all__ = ["DOWN_WINDOW_BYTES", "INBOX_BYTES", "INBOX_FRAMES", "ServerHTTPChannel", "add_routes"]

log = structlog.get_logger("freight.hub")


def _now() -> float:
    return asyncio.get_running_loop().time()


class ServerHTTPChannel:
    """The hub's end of one attachment (a FrameChannel): an adapter that
    moves bytes between requests and a :class:`HubAttachment`, and arms its
    one timer (:meth:`run_timer`)."""

    def __init__(
        self, aid: str, user_id: int, *, keepalive: float, grace: float, now: float
    ) -> None:
        self.aid = aid
        self.user_id = user_id
        self.keepalive = keepalive
        self.grace = grace
        self.failure: ChannelClosed | None = None  # set once: the attachment is over
        self.changed = Signal()
        self._rearm = Signal()  # the timer's deadline may have come nearer
        self.machine = HubAttachment(now, keepalive=keepalive, grace=grace)
        # The requests whose responses/bodies are current (an older one is aborted).
        self._down: web.Request | None = None
        self._up: web.Request | None = None
        self._up_lock = asyncio.Lock()  # one up POST at a time, in order

    @property
    def closed(self) -> bool:
        return self.failure is not None

    @property
    def inbox_bytes(self) -> int:
        """Payload bytes received but not yet taken by recv()."""
        return self.machine.inbox_bytes

    # --- FrameChannel -----------------------------------------------------------

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        if isinstance(msg, Ping):  # the down writer makes its own
            self._check_open()
            return
        while self.machine.window_full and self.failure is None:
            await self.changed.wait()
        self._check_open()
        self.machine.send(encode_frame(msg, payload))
        self.changed.notify()

    async def recv(self) -> Frame:
        """The next frame from the client; frames that arrived before the
        attachment ended are still handed out, then ChannelClosed."""
        while True:
            frame = self.machine.recv()
            if frame is not None:
                self.changed.notify()
                return frame
            self._check_open()
            await self.changed.wait()

    async def aclose(self) -> None:
        """End the attachment; frames already sent still go to a down
        response that is open now."""
        self.close(ChannelClosed("the hub closed the channel"))

    def close(self, exc: ChannelClosed) -> None:
        if self.failure is None:
            self.failure = exc
            self.machine.close(exc.message)
            self._rearm.notify()
            self.changed.notify()

    def _check_open(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _protocol_failed(self, exc: ProtocolError) -> None:
        self.close(ChannelClosed(f"the client broke the attachment: {exc.message}"))

    # --- down ---------------------------------------------------------------------

    def acknowledge(self, ack: int) -> None:
        """The client has the first ``ack`` frames: forget them."""
        try:
            self.machine.acknowledge(ack)
        except ProtocolError as exc:
            self._protocol_failed(exc)
            raise
        self.changed.notify()

    def end_down(self) -> None:
        """End the current down response at a frame boundary; the client
        asks again and is replayed what it has not acknowledged."""
        self.machine.down_end()
        self.changed.notify()

    async def write_down(
        self, request: web.Request, resp: web.StreamResponse, *, ack: int | None
    ) -> None:
        """Write frames from the first unacknowledged one on (after ``ack``;
        None for a client that does not acknowledge, whose frames count as
        delivered once written) until a newer down request takes over, the
        attachment ends (what was sent is flushed first) or the client goes.
        A response that is taken over is aborted: its client gave up on it,
        and a writer stuck on a dead connection must not linger."""
        if self.machine.error is not None:
            return  # the client broke the attachment: nothing more to write
        response = self.machine.down_open(ack, _now())
        previous, self._down = self._down, request
        _abort(previous)
        self._rearm.notify()
        self.changed.notify()
        try:
            while request.transport is not None:
                frame = self.machine.down_next(response, _now())
                if frame is None:
                    await self.changed.wait()
                elif frame:
                    if frame is PING_FRAME:  # the next one is due a keepalive from now
                        self._rearm.notify()
                    await resp.write(frame)
                    if ack is None:  # written counts as delivered: room for senders
                        self.changed.notify()
                else:
                    return
        except ConnectionError:
            pass  # the client went away; it asks again or the grace period ends it
        finally:
            if self._down is request:
                self._down = None
            self.machine.down_close(response, _now())
            self._rearm.notify()
            self.changed.notify()

    async def run_timer(self) -> None:
        """The attachment's one timer: Pings on an idle down response, and
        the end once no down request was open for ``grace`` seconds (the
        client vanished without a DELETE)."""
        while self.failure is None:
            deadline = self.machine.next_deadline()
            await self._rearm.wait(None if deadline is None else max(0.0, deadline - _now()))
            if self.machine.handle_timer(_now()):
                if self.machine.closed:
                    self.close(ChannelClosed(self.machine.reason))
                self.changed.notify()

    # --- up -----------------------------------------------------------------------

    async def take_up(self, request: web.Request, seq: int | None) -> None:
        """Take the frames of one up POST (the first numbered ``seq``, or
        following the last ones), after any earlier POST. A new POST
        means the client gave up on the one before (it has one in flight at
        most): that one is aborted rather than waited for, as it may be stuck
        reading a body that will never come."""
        previous, self._up = self._up, request
        _abort(previous)
        try:
            async with self._up_lock:
                self._check_open()
                await self._take_frames(request.content.iter_any(), seq)
        finally:
            if self._up is request:
                self._up = None

    async def _take_frames(self, body: AsyncIterable[bytes], seq: int | None) -> None:
        """Hand the frames of an up body (the first numbered ``seq``) to
        recv(), skipping the ones a broken earlier try already delivered.
        Raises ProtocolError for a malformed body or a gap in the numbers."""
        machine = self.machine
        try:
            ident = machine.up_begin(seq)
        except ProtocolError as exc:
            self._protocol_failed(exc)
            raise
        frames = BodyFrames()
        async for chunk in body:
            for frame in frames.feed(chunk):
                if not machine.up_fresh(ident):
                    self._check_open()
                    machine.up_skip(ident)
                    continue
                # Wait for room in the inbox (back-pressure on the POST).
                while machine.inbox_full and self.failure is None:
                    await self.changed.wait()
                self._check_open()
                machine.up_deliver(ident, frame)
                self.changed.notify()
        frames.finish()


def _abort(request: web.Request | None) -> None:
    """Drop the connection of a request its client abandoned."""
    if request is not None and request.transport is not None:
        request.transport.abort()


@dataclass
class Attachments:
    """Every live attachment of an app; each one's ``serve`` and timer are
    tasks of ``tasks`` (independent of each other: one failing is logged)."""

    serve: Serve
    keepalive: float
    grace: float
    admit: Callable[[], None] = lambda: None  # raises when the node takes no more now
    channels: dict[str, ServerHTTPChannel] = field(default_factory=dict)
    tasks: Supervisor = field(default_factory=lambda: Supervisor("http-attachments"))

    def start(self, request: web.Request, chan: ServerHTTPChannel) -> None:
        self.channels[chan.aid] = chan
        self.tasks.spawn(self._run(request, chan), name=chan.aid, detached=True)

    async def _run(self, request: web.Request, chan: ServerHTTPChannel) -> None:
        async with Supervisor(f"http-attachment/{chan.aid}") as own:
            own.spawn(chan.run_timer(), name="timer")
            try:
                await self.serve(request, chan)
            except ChannelClosed:
                pass
            except Exception:
                log.exception("http_attachment_failed", aid=chan.aid)
            finally:
                chan.close(ChannelClosed("the hub ended the attachment"))
                del self.channels[chan.aid]

    async def close_all(self, _app: web.Application) -> None:
        """On shutdown: end every attachment so down responses finish and
        the server need not wait out its shutdown timeout."""
        for chan in list(self.channels.values()):
            chan.close(ChannelClosed("the hub is shutting down"))

    async def cancel_all(self, _app: web.Application) -> None:
        """On cleanup: stop whatever ``serve`` is still running."""
        await self.tasks.aclose()


ATTACHMENTS: Final = web.AppKey("http_attachments", Attachments)


def count_param(request: web.Request, name: str) -> int | None:
    """A count from the query string, None when absent."""
    if name not in request.query:
        return None
    try:
        value = int(request.query[name])
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{name} must be a count (0 or more)")
    return value


async def attachment(request: web.Request) -> ServerHTTPChannel:
    """The request's attachment, if it is live and the caller's own."""
    user = await current_user(request)
    chan = request.app[ATTACHMENTS].channels.get(request.match_info["aid"])
    if chan is None or chan.user_id != user.id or chan.closed:
        raise NotFound("no such HTTP attachment (it ended, or never existed)")
    return chan


async def create(request: web.Request) -> web.Response:
    user = await current_user(request)
    registry = request.app[ATTACHMENTS]
    registry.admit()
    chan = ServerHTTPChannel(
        secrets.token_hex(16),
        user.id,
        keepalive=registry.keepalive,
        grace=registry.grace,
        now=_now(),
    )
    registry.start(request, chan)
    return web.json_response({"aid": chan.aid, "keepalive": chan.keepalive})


def _refused(exc: ProtocolError) -> web.Response:
    """The answer to a request that broke the attachment's rules (which ended it)."""
    return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=400)


async def down(request: web.Request) -> web.StreamResponse:
    chan = await attachment(request)
    ack = count_param(request, "ack")
    if ack is not None:
        try:
            chan.acknowledge(ack)
        except ProtocolError as exc:
            return _refused(exc)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each frame on at once
        }
    )
    await resp.prepare(request)
    await chan.write_down(request, resp, ack=ack)
    return resp


async def up(request: web.Request) -> web.Response:
    chan = await attachment(request)
    if (ack := count_param(request, "ack")) is not None:
        try:
            chan.acknowledge(ack)
        except ProtocolError as exc:
            return _refused(exc)
    if not request.body_exists:
        return web.Response(status=204)  # an ack alone: never waits on a POST with frames
    seq = count_param(request, "seq")
    try:
        await chan.take_up(request, seq)
    except ProtocolError as exc:
        chan.close(ChannelClosed(f"malformed up body: {exc.message}"))
        return _refused(exc)
    except ChannelClosed:
        raise NotFound("the HTTP attachment ended") from None
    except (ConnectionError, HttpProcessingError):
        # The body broke off: the client retries what we did not take.
        raise UsageError("the request body broke off; send it again") from None
    return web.Response(status=204)


async def delete(request: web.Request) -> web.Response:
    chan = await attachment(request)
    chan.close(ChannelClosed("the client ended the attachment"))
    return web.Response(status=204)


def add_routes(
    app: web.Application,
    serve: Serve,
    *,
    keepalive: float = KEEPALIVE,
    grace: float = GRACE,
    admit: Callable[[], None] = lambda: None,
) -> None:
    """Serve HTTP attachments on ``app``: ``serve(request, channel)`` runs
    for each one (``request`` is the one that made it) and the attachment
    ends when it returns; ``admit()`` runs first and may refuse it (raise)."""
    registry = app[ATTACHMENTS] = Attachments(serve, keepalive, grace, admit)
    app.on_shutdown.append(registry.close_all)
    app.on_cleanup.append(registry.cancel_all)
    app.router.add_post("/v1/attach/http", create)
    app.router.add_get("/v1/attach/http/{aid}/down", down)
    app.router.add_post("/v1/attach/http/{aid}/up", up)
    app.router.add_delete("/v1/attach/http/{aid}", delete)
