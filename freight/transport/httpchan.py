"""Frames over plain HTTP requests: the fallback when a proxy or firewall
blocks the WebSocket upgrade (the hub's side is :mod:`freight.hub.httpattach`).

An *attachment* is made with ``POST /v1/attach/http``. The hub streams its
frames in the long ``GET …/{aid}/down`` response; ours go up in ``POST
…/{aid}/up`` bodies, one POST in flight at a time so they arrive in order.

Proxies cut long responses and reset connections, so both directions count
frames to lose none and repeat none:

* ``ack`` (on the GET and every POST) is how many frames we took whole from
  the down stream (Pings not counted). The hub keeps what it sent until
  acknowledged and a new GET replays from ``ack``; a frame cut in half is
  simply re-read. A POST without a body only acknowledges; it goes beside
  the frame POSTs, which may be held up by the hub's back-pressure.
* ``seq`` (on an up POST) numbers the body's first frame. A POST that broke
  is sent again with the same ``seq``; the hub skips frames it already has.

The numbering, bounds and timers are :class:`~freight.protocol.attach.ClientAttachment`'s
(docs/protocol.md §14); this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import aiohttp
from yarl import URL

from ..errors import (
    FreightError,
    LocalProtocolError,
    NetworkError,
    NodeUnavailable,
    RateLimited,
    busy_node,
    code_to_error,
)
from ..protocol.attach import ClientAttachment
from ..protocol.errors import ProtocolError
from ..protocol.frames import encode_header
from ..protocol.messages import Message
from ..protocol.retry import RetryPolicy, RetryState
from ..tasks import Supervisor
from .channel import ChannelClosed, Frame
from .closing import closing_on_failure
from .signal import Signal

ATTACH_PATH: Final = "v1/attach/http"
# A request that keeps failing with a network error or a proxy's 5xx is
# retried this long, from 50 ms doubling to 5 s between tries; the hub's
# grace period is about as long, so after it the attachment is gone anyway.
RETRY_FOR: Final = 60.0
MAX_BACKOFF: Final = 5.0
REQUEST_RETRY: Final = RetryPolicy(
    interval=0.025, steady_for=0.0, max_delay=MAX_BACKOFF, give_up_after=RETRY_FOR, jitter=0.0
)
# aclose() gives frames already sent this long to reach the hub.
CLOSE_FLUSH: Final = 5.0
RETRY_STATUSES: Final = frozenset({408, 413, 429, 500, 502, 503, 504})

_AID: Final = re.compile(r"^[0-9a-f]{32}$")
T = TypeVar("T")


class HTTPAttachRefused(NetworkError):
    """The hub (or a proxy on the way) refused to make an HTTP attachment."""

    code = "http_attach_refused"


class _Retry(Exception):
    """A failure worth trying again (network error, proxy hiccup)."""


async def open_http_channel(http: aiohttp.ClientSession, base: URL) -> HTTPChannel:
    """Make an attachment on the hub at ``base`` (``https://host:port/``).

    ``http`` carries the bearer token. A certificate that does not match the
    pinned one raises aiohttp's ServerFingerprintMismatch unchanged, so the
    caller words it as it does for the WebSocket."""
    url = base.join(URL(ATTACH_PATH))
    try:
        async with http.post(url) as resp:
            if resp.status == 401:
                message = await _error_message(resp)
                raise code_to_error(
                    "not_logged_in", message or "the hub did not accept the saved login"
                )
            if resp.status == 429:  # the node takes no more attachments this second
                code, message = await _hub_error(resp)
                if code not in ("", RateLimited.code):
                    raise code_to_error(code, message)
                raise busy_node(message, resp.headers.get("Retry-After", ""))
            if resp.status == 503:  # a cluster's node that takes no new work?
                code, message = await _hub_error(resp)
                if code == NodeUnavailable.code:
                    raise NodeUnavailable(message)
                raise HTTPAttachRefused(f"HTTP attachment refused: 503 {message}")
            if not 200 <= resp.status < 300:
                message = await _error_message(resp)
                raise HTTPAttachRefused(f"HTTP attachment refused: {resp.status} {message}")
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                raise HTTPAttachRefused(
                    "the hub's answer to the attachment is unreadable"
                ) from None
    except aiohttp.ServerFingerprintMismatch:
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        err = NetworkError(f"cannot reach the hub at {url.host}:{url.port}: {exc}")
        err.unreached = isinstance(
            exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        )
        raise err from None
    aid, keepalive = _parse_created(body)
    return HTTPChannel(http, url / aid, keepalive)


def _parse_created(body: Any) -> tuple[str, float]:
    """The attachment id and keepalive of the hub's answer. Anything else
    (a captive portal's page, say) means this path is not usable."""
    try:
        aid, keepalive = str(body["aid"]), float(body["keepalive"])
    except (KeyError, TypeError, ValueError):
        raise HTTPAttachRefused("the hub's answer to the attachment is unreadable") from None
    if not _AID.match(aid) or not keepalive > 0:
        raise HTTPAttachRefused("the hub's answer to the attachment is unreadable")
    return aid, keepalive


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    """The message of the hub's JSON error body, else the HTTP reason."""
    return (await _hub_error(resp))[1]


async def _hub_error(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """``(code, message)`` of the hub's ``{"error": {...}}`` body; a proxy's
    page has neither, so fall back to the status line."""
    with contextlib.suppress(aiohttp.ClientError, ValueError, TimeoutError):
        body = await resp.json(content_type=None)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return str(err.get("code", "")), str(err.get("message", ""))
    return "", resp.reason or ""


async def _failure_for(resp: aiohttp.ClientResponse) -> FreightError:
    """What a non-2xx answer to a request on the attachment means."""
    code, message = await _hub_error(resp)
    if resp.status in RETRY_STATUSES:
        raise _Retry(f"{resp.status} {message}")
    if resp.status == 401:
        return code_to_error("not_logged_in", message or "the hub no longer accepts the login")
    if resp.status == 404:
        return ChannelClosed(f"the hub ended the HTTP attachment ({message})")
    return ChannelClosed(f"the hub refused the HTTP attachment: {resp.status} {code} {message}")


class HTTPChannel:
    """The client's end of an HTTP attachment (a FrameChannel): an adapter
    that moves bytes between requests and a :class:`ClientAttachment`.

    send() only queues; one uploader task posts the queue in order. recv()
    reads the down response itself, so frames are taken only as fast as the
    caller wants them and the hub's sending slows down in turn. The timer
    task posts an ack alone when one is due."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: URL,
        keepalive: float,
        *,
        clock: Callable[[], float] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self.aid = url.name
        self.keepalive = keepalive
        self._http = http
        self._clock = clock or asyncio.get_running_loop().time
        self._rand = rand
        self._changed = Signal()
        self._failure: FreightError | None = None
        self._closing = False
        self.machine = ClientAttachment(self._clock(), keepalive=keepalive)
        self._resp: aiohttp.ClientResponse | None = None
        # Acks have their own task: the uploader's POST may be held up by the
        # hub's back-pressure, which may in turn wait for our acks.
        self._tasks = Supervisor(f"http-channel/{self.aid}", on_failure=self._helper_failed)
        self._tasks.spawn(self._upload(), name="upload")
        self._tasks.spawn(self._send_acks(), name="acks")

    @property
    def pings(self) -> int:
        """Pings seen on the down stream (for diagnostics)."""
        return self.machine.pings

    # --- FrameChannel -----------------------------------------------------------

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        if msg.len != len(payload):
            raise LocalProtocolError(
                f"{type(msg).__name__}.len={msg.len} but payload is {len(payload)}"
            )
        while self.machine.queue_full and self._failure is None and not self._closing:
            await self._changed.wait()
        self._check_open()
        self.machine.send(encode_header(msg), bytes(payload))
        self._changed.notify()

    async def recv(self) -> Frame:
        machine = self.machine
        while True:
            self._check_open()
            try:
                frame = machine.next_frame(self._clock())
                if frame is None:
                    # Not feed(await …): the read may start a new response.
                    chunk = await self._read_down()
                    self._check_open()  # it may have failed while we read
                    machine.down_data(chunk, self._clock())
                    continue
            except ProtocolError as exc:
                self._fail(exc)
                raise
            self._changed.notify()  # an ack may be due
            return frame

    async def aclose(self) -> None:
        """Let queued frames reach the hub (for a while), then end the
        attachment. Later send() and recv() raise ChannelClosed."""
        if self._closing:
            return
        self._closing = True
        if not self.machine.closed:
            self.machine.close()
        self._changed.notify()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_FLUSH):
                while len(self.machine.queue) and self._failure is None:
                    await self._changed.wait()
        gone = self._failure is not None
        self._fail(ChannelClosed("the channel was closed"))
        await self._tasks.aclose()
        if not gone:
            await self._delete()

    # --- state --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ChannelClosed("the channel was closed")

    def _fail(self, exc: FreightError) -> None:
        """The attachment is over: every waiter raises ``exc``."""
        if self._failure is None:
            self._failure = exc
        self.machine.end()
        self._drop_down()
        self._changed.notify()

    def _helper_failed(self, exc: BaseException) -> None:
        """A background task failed: the channel fails with it."""
        if isinstance(exc, FreightError):
            self._fail(exc)
        else:  # a bug: fail loudly rather than hang every waiter
            self._fail(ChannelClosed(f"the HTTP channel failed: {exc!r}"))

    # --- requests -----------------------------------------------------------------

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it does not raise _Retry, for RETRY_FOR seconds,
        backing off (REQUEST_RETRY); then the hub counts as gone."""
        retry = RetryState(REQUEST_RETRY)
        retry.mark_started()
        while True:
            try:
                return await attempt()
            except _Retry as exc:
                delay = retry.failed(self._clock(), self._rand())
                if delay is None:
                    raise ChannelClosed(
                        f"the hub could not be reached for {RETRY_FOR:.0f} s: {exc}"
                    ) from None
            await asyncio.sleep(delay)

    async def _request(self, method: str, url: URL, body: bytes = b"") -> None:
        """One request whose answer has no body we need (204). A body goes
        as a file-like object: aiohttp then writes it in pieces instead of
        holding the event loop for megabytes at once."""
        data = io.BytesIO(body) if body else None
        try:
            async with self._http.request(method, url, data=data) as resp:
                if not 200 <= resp.status < 300:
                    raise await _failure_for(resp)
        except aiohttp.ServerFingerprintMismatch:
            raise ChannelClosed("the hub's certificate changed") from None
        except RuntimeError as exc:  # the session was closed under us
            raise ChannelClosed(f"the HTTP session is gone: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(str(exc) or type(exc).__name__) from None

    async def _delete(self) -> None:
        """Tell the hub we are done; if it cannot hear it, the grace period ends it."""
        with contextlib.suppress(FreightError, _Retry, TimeoutError):
            async with asyncio.timeout(CLOSE_FLUSH):
                await self._request("DELETE", self.url)

    # --- up -----------------------------------------------------------------------

    async def _upload(self) -> None:
        """The uploader: post the queue in order, one POST at a time."""
        while self._failure is None:
            if len(self.machine.queue):
                await self._post_batch()
            else:
                await self._changed.wait()

    async def _send_acks(self) -> None:
        """The machine's timer: acknowledge what recv() took when no request
        did so for a while. An ack-only POST (no body, no ``seq``) never
        waits on the hub."""
        while self._failure is None:
            if self.machine.handle_timer(self._clock()):
                url = (self.url / "up").with_query(ack=self.machine.take_ack())
                await self._retrying(functools.partial(self._request, "POST", url))
                continue
            deadline = self.machine.next_deadline()
            await self._changed.wait(None if deadline is None else deadline - self._clock())

    async def _post_batch(self) -> None:
        """Post the head of the queue, acknowledging what we took on the
        way. A retry sends a smaller head from the same ``seq``."""
        ack = self.machine.take_ack()

        async def attempt() -> None:
            if self._failure is not None:  # it failed while we waited to try again
                raise self._failure
            batch = self.machine.up_batch()
            if batch is None:
                return
            seq, count, body = batch
            url = (self.url / "up").with_query(seq=seq, ack=ack)
            try:
                await self._request("POST", url, body)
            except _Retry:
                self.machine.up_failed()
                raise
            self.machine.up_done(seq, count)
            self._changed.notify()

        await self._retrying(attempt)

    # --- down ---------------------------------------------------------------------

    async def _read_down(self) -> bytes:
        """The next bytes of the down stream, re-issuing the GET whenever a
        response ends or breaks (a proxy cut it, or the hub ended it)."""
        while True:
            if self._resp is None:
                try:
                    resp, chunk = await self._retrying(self._open_down)
                except FreightError as exc:
                    self._fail(exc)
                    raise
                if self._failure is not None:  # closed while we were asking
                    resp.close()
                    raise self._failure
                self._resp = resp
                return chunk
            chunk = await self._read_chunk(self._resp)
            if chunk:
                return chunk
            self._drop_down()
            self._check_open()

    async def _read_chunk(self, resp: aiohttp.ClientResponse) -> bytes:
        """Bytes of ``resp`` as they come; b"" once it ended, broke or
        stalled (no byte, not even a Ping, by the machine's stall deadline)."""
        try:
            async with asyncio.timeout(max(0.0, self.machine.stall_deadline() - self._clock())):
                return await resp.content.readany()
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            return b""

    async def _open_down(self) -> tuple[aiohttp.ClientResponse, bytes]:
        """A new down response and its first bytes (the hub starts each with
        a Ping). One that ends at once is retried with a back-off, so a proxy
        answering every GET with nothing does not make us spin."""
        if self._failure is not None:  # it failed while we waited to try again
            raise self._failure
        ack = self.machine.down_open(self._clock())
        url = (self.url / "down").with_query(ack=ack)
        try:
            resp = await self._http.get(url)
        except aiohttp.ServerFingerprintMismatch:
            raise ChannelClosed("the hub's certificate changed") from None
        except RuntimeError as exc:  # the session was closed under us
            raise ChannelClosed(f"the HTTP session is gone: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(str(exc) or type(exc).__name__) from None
        if resp.status != 200:
            try:
                raise await _failure_for(resp)
            finally:
                resp.release()
        with closing_on_failure(resp):  # cancelled: nobody will read this response
            chunk = await self._read_chunk(resp)
        if not chunk:
            resp.close()
            raise _Retry("the down response ended at once")
        return resp, chunk

    def _drop_down(self) -> None:
        """Forget the down response; a partial frame in it is replayed whole
        by the next one, which starts at the first frame not taken."""
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if not self.machine.closed:
            self.machine.down_end()
