"""HTTP attachments: the hub's end of frame channels over plain HTTP
requests, for clients whose proxy or firewall blocks the WebSocket upgrade
(the client's end and the wire contract: :mod:`freight.transport.httpchan`).

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
import collections
import secrets
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import NotFound, ProtocolError, RemoteProtocolError, UsageError
from ..protocol.frames import FrameDecoder, encode_frame
from ..protocol.messages import Message, Ping
from ..transport.channel import ChannelClosed, Frame, FrameChannel
from ..transport.httpchan import Signal
from .requests import current_user

Serve = Callable[[web.Request, FrameChannel], Awaitable[None]]

KEEPALIVE: Final = 25.0
GRACE: Final = 60.0
# send() waits while this many bytes were sent but not acknowledged: bounds
# what we keep for replay, and paces us to what the client takes.
DOWN_WINDOW_BYTES: Final = 8 * 1024 * 1024
# Frames received but not yet taken by recv(): an up POST waits while this
# many payload bytes (or INBOX_FRAMES frames) wait, so a client's POSTs are
# paced by what the hub takes and never pin more than about this much.
INBOX_BYTES: Final = 8 * 1024 * 1024
INBOX_FRAMES: Final = 8
PING: Final = encode_frame(Ping())

log = structlog.get_logger("freight.hub")


class ServerHTTPChannel:
    """The hub's end of one attachment (a FrameChannel)."""

    def __init__(self, aid: str, user_id: int, *, keepalive: float, grace: float) -> None:
        self.aid = aid
        self.user_id = user_id
        self.keepalive = keepalive
        self.grace = grace
        self.failure: ChannelClosed | None = None  # set once: the attachment is over
        self.changed = Signal()
        # Down: frames numbered from ``_base`` on, sent or not, kept until
        # acknowledged. ``_down`` is the request whose response may write.
        self._out: collections.deque[bytes] = collections.deque()
        self._out_bytes = 0
        self._base = 0
        self._down: web.Request | None = None
        self._writers = 0
        self._idle_since = time.monotonic()
        # Up: frames received (the next one is numbered ``_up_next``).
        self._inbox: collections.deque[Frame] = collections.deque()
        self.inbox_bytes = 0  # payload bytes in _inbox
        self._up_next = 0
        self._up: web.Request | None = None
        self._up_lock = asyncio.Lock()  # one up POST at a time, in order

    @property
    def closed(self) -> bool:
        return self.failure is not None

    # --- FrameChannel -----------------------------------------------------------

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        if isinstance(msg, Ping):  # the down writer makes its own
            self._check_open()
            return
        while self._out_bytes > DOWN_WINDOW_BYTES and self.failure is None:
            await self.changed.wait()
        self._check_open()
        frame = encode_frame(msg, payload)
        self._out.append(frame)
        self._out_bytes += len(frame)
        self.changed.notify()

    async def recv(self) -> Frame:
        """The next frame from the client; frames that arrived before the
        attachment ended are still handed out, then ChannelClosed."""
        while not self._inbox:
            self._check_open()
            await self.changed.wait()
        frame = self._inbox.popleft()
        self.inbox_bytes -= len(frame[1])
        self.changed.notify()
        return frame

    async def aclose(self) -> None:
        """End the attachment; frames already sent still go to a down
        response that is open now."""
        self.close(ChannelClosed("the hub closed the channel"))

    def close(self, exc: ChannelClosed) -> None:
        if self.failure is None:
            self.failure = exc
            self.changed.notify()

    def _check_open(self) -> None:
        if self.failure is not None:
            raise self.failure

    # --- down ---------------------------------------------------------------------

    def acknowledge(self, ack: int) -> None:
        """The client has the first ``ack`` frames: forget them."""
        if ack > self._base + len(self._out):
            raise UsageError(f"ack={ack} counts frames the hub never sent")
        while self._base < ack:
            self._out_bytes -= len(self._out.popleft())
            self._base += 1
        self.changed.notify()

    def end_down(self) -> None:
        """End the current down response at a frame boundary; the client
        asks again and is replayed what it has not acknowledged."""
        self._down = None
        self.changed.notify()

    async def write_down(
        self, request: web.Request, resp: web.StreamResponse, *, replay: bool = True
    ) -> None:
        """Write frames from the first unacknowledged one on (and a Ping
        after each idle ``keepalive``) until a newer down request takes over,
        the attachment ends (what was sent is flushed first) or the client
        goes. A response that is taken over is aborted: its client gave up on
        it, and a writer stuck on a dead connection must not linger. Without
        ``replay`` (a client that does not acknowledge) a frame counts as
        acknowledged once written."""
        previous, self._down = self._down, request
        _abort(previous)
        self._writers += 1
        self.changed.notify()
        try:
            await self._write_frames(request, resp, replay)
        except ConnectionError:
            pass  # the client went away; it asks again or the grace period ends it
        finally:
            if self._down is request:
                self._down = None
            self._writers -= 1
            if not self._writers:
                self._idle_since = time.monotonic()
            self.changed.notify()

    async def _write_frames(
        self, request: web.Request, resp: web.StreamResponse, replay: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        await resp.write(PING)  # gets the headers through buffering proxies at once
        last = loop.time()
        cursor = self._base
        while self._down is request and request.transport is not None:
            cursor = max(cursor, self._base)
            if cursor < self._base + len(self._out):
                await resp.write(self._out[cursor - self._base])
                cursor += 1
                last = loop.time()
                if not replay:
                    self.acknowledge(cursor)
            elif self.failure is not None:
                return
            elif (idle := loop.time() - last) >= self.keepalive:
                await resp.write(PING)
                last = loop.time()
            else:
                await self.changed.wait(self.keepalive - idle)

    async def watch_grace(self) -> None:
        """End the attachment once no down request was open for ``grace``
        seconds: the client vanished without a DELETE."""
        while self.failure is None:
            left = self._idle_since + self.grace - time.monotonic()
            if self._writers:
                await self.changed.wait()
            elif left > 0:
                await self.changed.wait(left)
            else:
                self.close(ChannelClosed(f"no down request for {self.grace:g} s: client gone"))

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
                first = self._up_next if seq is None else seq
                await self._take_frames(request.content.iter_any(), first)
        finally:
            if self._up is request:
                self._up = None

    async def _take_frames(self, body: AsyncIterable[bytes], seq: int) -> None:
        """Hand the frames of an up body (the first numbered ``seq``) to
        recv(), skipping the ones a broken earlier try already delivered.
        Raises ProtocolError for a malformed body or a gap in the numbers."""
        if seq > self._up_next:
            raise RemoteProtocolError(f"frames {self._up_next}..{seq - 1} never arrived")
        index = seq
        frames = BodyFrames()
        async for chunk in body:
            for frame in frames.feed(chunk):
                if index == self._up_next:
                    await self._deliver(frame)
                index += 1
        frames.finish()

    async def _deliver(self, frame: Frame) -> None:
        """Wait for room in the inbox (back-pressure on the POST)."""
        while (
            len(self._inbox) >= INBOX_FRAMES or self.inbox_bytes >= INBOX_BYTES
        ) and self.failure is None:
            await self.changed.wait()
        self._check_open()
        self._up_next += 1
        if not isinstance(frame[0], Ping):
            self._inbox.append(frame)
            self.inbox_bytes += len(frame[1])
            self.changed.notify()


def _abort(request: web.Request | None) -> None:
    """Drop the connection of a request its client abandoned."""
    if request is not None and request.transport is not None:
        request.transport.abort()


class BodyFrames:
    """Splits one up body into frames and tells a body that stops inside a
    frame (whose header may already have been taken by the decoder) from one
    that ends on a frame boundary."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._inside = False  # a header was taken, its payload not yet complete

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        self._decoder.feed(chunk)
        while True:
            before = self._decoder.buffered
            frame = self._decoder.next_frame()
            if frame is None:
                self._inside = self._inside or self._decoder.buffered < before
                return
            self._inside = False
            yield frame

    def finish(self) -> None:
        if self._inside or self._decoder.buffered:
            raise RemoteProtocolError("the body ends inside a frame")


@dataclass
class Attachments:
    """Every live attachment of an app, and the tasks serving them."""

    serve: Serve
    keepalive: float
    grace: float
    channels: dict[str, ServerHTTPChannel] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, request: web.Request, chan: ServerHTTPChannel) -> None:
        self.channels[chan.aid] = chan
        task = asyncio.create_task(self._run(request, chan))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, request: web.Request, chan: ServerHTTPChannel) -> None:
        watcher = asyncio.create_task(chan.watch_grace())
        try:
            await self.serve(request, chan)
        except ChannelClosed:
            pass
        except Exception:
            log.exception("http_attachment_failed", aid=chan.aid)
        finally:
            chan.close(ChannelClosed("the hub ended the attachment"))
            watcher.cancel()
            del self.channels[chan.aid]

    async def close_all(self, _app: web.Application) -> None:
        """On shutdown: end every attachment so down responses finish and
        the server need not wait out its shutdown timeout."""
        for chan in list(self.channels.values()):
            chan.close(ChannelClosed("the hub is shutting down"))

    async def cancel_all(self, _app: web.Application) -> None:
        """On cleanup: stop whatever ``serve`` is still running."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


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
    chan = ServerHTTPChannel(
        secrets.token_hex(16), user.id, keepalive=registry.keepalive, grace=registry.grace
    )
    registry.start(request, chan)
    return web.json_response({"aid": chan.aid, "keepalive": chan.keepalive})


async def down(request: web.Request) -> web.StreamResponse:
    chan = await attachment(request)
    ack = count_param(request, "ack")
    if ack is not None:
        chan.acknowledge(ack)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each frame on at once
        }
    )
    await resp.prepare(request)
    await chan.write_down(request, resp, replay=ack is not None)
    return resp


async def up(request: web.Request) -> web.Response:
    chan = await attachment(request)
    if (ack := count_param(request, "ack")) is not None:
        chan.acknowledge(ack)
    if not request.body_exists:
        return web.Response(status=204)  # an ack alone: never waits on a POST with frames
    seq = count_param(request, "seq")
    try:
        await chan.take_up(request, seq)
    except ProtocolError as exc:
        chan.close(ChannelClosed(f"malformed up body: {exc.message}"))
        return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=400)
    except ChannelClosed:
        raise NotFound("the HTTP attachment ended") from None
    except (ConnectionError, HttpProcessingError):
        # The body broke off: the client retries what we did not take.
        return web.Response(status=400, text="the request body broke off")
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
) -> None:
    """Serve HTTP attachments on ``app``: ``serve(request, channel)`` runs
    for each one (``request`` is the one that made it) and the attachment
    ends when it returns."""
    registry = app[ATTACHMENTS] = Attachments(serve, keepalive, grace)
    app.on_shutdown.append(registry.close_all)
    app.on_cleanup.append(registry.cancel_all)
    app.router.add_post("/v1/attach/http", create)
    app.router.add_get("/v1/attach/http/{aid}/down", down)
    app.router.add_post("/v1/attach/http/{aid}/up", up)
    app.router.add_delete("/v1/attach/http/{aid}", delete)
