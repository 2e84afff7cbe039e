"""Live updates for the console: ``GET /console/stream``, server-sent
events named after what changed (``connections``, ``transfers``,
``agents``, ``events``, ``users``, ``dashboard``); a page's tables refetch
their fragment when their topic's event arrives.

What changed is learnt from the hub's event log (:class:`Feed` listens to
every event and notes its topics): a connection opened or closed, an agent
attached or detached, a transfer started or ended. A topic is sent only
when it changed, never on a tick while nothing did; the counters that move
without an event (bytes and rates of live connections, a transfer's
progress) refresh more slowly, every ``COUNTERS[topic]`` seconds while
something is live (:class:`Pacer`). Each stream sends at most one event
per ``COALESCE`` seconds, however many events the hub records: a burst of
thousands of events costs a browser a handful of refetches, and a change
is sent within ``COALESCE`` of happening.

Event ids are ``EPOCH-SEQ``: the feed's sequence number of the last change
sent, within one run of the hub (``EPOCH``). A browser reconnecting with
``Last-Event-ID`` gets at once the topics that changed since, or every
topic if the hub restarted meanwhile. Streams are bounded per login and in
all (429 beyond); each lives as long as its response and ends when the
client goes, its login ends (logout, disabled, expired) or the hub stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Collection, Iterator

from aiohttp import web

from ...errors import LimitReached
from ..requests import current_login
from ..services import STATE

TOPICS = ("connections", "transfers", "agents", "events", "users", "dashboard")
COALESCE = 0.5  # seconds between two events of one stream
# Topics whose counters move without events, and the seconds between two
# refreshes of them while something is live: a transfer's progress each
# second, the bytes and rates of live connections every 5 s.
COUNTERS = {"transfers": 1.0, "connections": 5.0}
GONE_CHECK = 1.0  # seconds between two looks at whether the browser went (nothing sent)
KEEPALIVE = 15.0  # a comment line keeps proxies from closing an idle stream
MAX_PER_LOGIN = 8
MAX_STREAMS = 256

_PREFIXES = {
    "connections": ("connection_", "code_", "tunnel", "msg_"),
    "transfers": ("push", "pull", "stream", "file_", "job", "transfer", "upload"),
    "agents": ("agent_", "enrol_", "command_", "key_"),
    "users": (
        "user_",
        "login",
        "logout",
        "password_",
        "quota_",
        "sessions_",
        "register",
        "role_",
        "app_",
    ),
}
_DASHBOARD = ("security", "login_failure", "bandwidth_changed", "hub_start", "agent_")


def topics_of(kind: str) -> set[str]:
    """The topics an event of ``kind`` changes."""
    out = {"events"}
    for topic, prefixes in _PREFIXES.items():
        if kind.startswith(prefixes):
            out.add(topic)
    if out & {"connections", "transfers"} or kind.startswith(_DASHBOARD):
        out.add("dashboard")
    return out


class Feed:
    """Which topics changed when, and the streams waiting to hear of it."""

    def __init__(self, max_streams: int = MAX_STREAMS, max_per_login: int = MAX_PER_LOGIN) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.changed_at = dict.fromkeys(TOPICS, 0)
        self.max_streams = max_streams
        self.max_per_login = max_per_login
        self._waiting: set[asyncio.Event] = set()
        self._per_login: dict[str, int] = {}
        self.closing = False

    def changed(self, kind: str) -> None:
        """The event log's listener: one event of ``kind`` was recorded."""
        self.touch(*topics_of(kind))

    def touch(self, *topics: str) -> None:
        self.seq += 1
        for topic in topics:
            self.changed_at[topic] = self.seq
        for wake in self._waiting:
            wake.set()

    def since(self, seq: int) -> list[str]:
        return [t for t in TOPICS if self.changed_at[t] > seq]

    def event_id(self) -> str:
        return f"{self.epoch}-{self.seq}"

    def resume_from(self, last_id: str) -> int:
        """The sequence number a stream resumes after: ``last_id``'s when it
        is of this run, else -1 (every topic is sent at once). No id: now."""
        if not last_id:
            return self.seq
        epoch, _, seq = last_id.partition("-")
        if epoch == self.epoch and seq.isdigit():
            return min(int(seq), self.seq)
        return -1

    @property
    def streams(self) -> int:
        return len(self._waiting)

    @contextlib.contextmanager
    def subscribe(self, login: str) -> Iterator[asyncio.Event]:
        """A stream's wake-up event while it lasts, within the bounds."""
        if self.closing:
            raise LimitReached("the hub is shutting down")
        if self._per_login.get(login, 0) >= self.max_per_login:
            raise LimitReached(
                f"at most {self.max_per_login} live pages per login: close some console tabs"
            )
        if len(self._waiting) >= self.max_streams:
            raise LimitReached(f"at most {self.max_streams} live console pages on this hub")
        wake = asyncio.Event()
        self._waiting.add(wake)
        self._per_login[login] = self._per_login.get(login, 0) + 1
        try:
            yield wake
        finally:
            self._waiting.discard(wake)
            left = self._per_login.pop(login) - 1
            if left:
                self._per_login[login] = left

    def close(self) -> None:
        """The hub stops: every stream ends now (a browser reconnects to
        the next hub run and refetches everything)."""
        self.closing = True
        for wake in self._waiting:
            wake.set()


FEED: web.AppKey[Feed] = web.AppKey("console_feed", Feed)


class Pacer:
    """When one stream sends which topics, on the monotonic clock ``now``
    its caller passes: a topic that changed (the feed's sequence passed the
    stream's) at once, or when the coalescing window of the stream's
    previous event ends; a topic of :data:`COUNTERS` every so often while
    it is ``live``. Nothing otherwise."""

    def __init__(self, feed: Feed, last: int, now: float) -> None:
        self.feed = feed
        self.last = last  # the feed's sequence number when the stream last sent
        self.sent_at = -math.inf
        self.counted_at = dict.fromkeys(COUNTERS, now)

    def _counters(self, live: Collection[str], now: float) -> None:
        for topic in COUNTERS:
            if topic not in live:  # its next refresh is a full interval after it goes live
                self.counted_at[topic] = now

    def due(self, live: Collection[str], now: float) -> list[str]:
        """The topics to send now (none within the coalescing window)."""
        self._counters(live, now)
        if now < self.sent_at + COALESCE:
            return []
        out = set(self.feed.since(self.last))
        out.update(t for t in live if t in COUNTERS and now >= self.counted_at[t] + COUNTERS[t])
        return [t for t in TOPICS if t in out]

    def sent(self, topics: Collection[str], now: float) -> None:
        self.last = self.feed.seq
        self.sent_at = now
        for topic in topics:
            if topic in COUNTERS:
                self.counted_at[topic] = now

    def wait(self, live: Collection[str], now: float) -> tuple[float, bool]:
        """How long to wait before :meth:`due` may have something, and
        whether a change in the feed may end the wait sooner (not while a
        change already waits for the coalescing window to end)."""
        self._counters(live, now)
        window = max(0.0, self.sent_at + COALESCE - now)
        if self.feed.since(self.last):
            return window, False
        counters = [self.counted_at[t] + COUNTERS[t] - now for t in live if t in COUNTERS]
        return max(window, min(counters, default=KEEPALIVE)), True


class _Ender:
    """What the hub's live logins close when the stream's login ends."""

    def __init__(self, wake: asyncio.Event) -> None:
        self.wake = wake
        self.ended = False

    async def aclose(self) -> None:
        self.ended = True
        self.wake.set()


def _live_topics(request: web.Request) -> tuple[str, ...]:
    """Topics whose counters move without events right now."""
    st = request.app[STATE]
    live: list[str] = []
    if st.relay.conns:
        live.append("connections")
    if st.bandwidth.active:
        live.append("transfers")
    return tuple(live)


async def stream(request: web.Request) -> web.StreamResponse:
    user, expires = await current_login(request)
    feed = request.app[FEED]
    st = request.app[STATE]
    with feed.subscribe(user.token) as wake:
        ender = _Ender(wake)
        with st.sessions.track(user, ender, expires):
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            last = feed.resume_from(request.headers.get("Last-Event-ID", "")[:64])
            with contextlib.suppress(ConnectionError):
                await _serve(request, response, feed, wake, ender, last)
    return response


async def _serve(
    request: web.Request,
    response: web.StreamResponse,
    feed: Feed,
    wake: asyncio.Event,
    ender: _Ender,
    last: int,
) -> None:
    await response.write(b"retry: 2000\n\n")
    pacer = Pacer(feed, last, time.monotonic())
    quiet_since = time.monotonic()
    while not (feed.closing or ender.ended):
        transport = request.transport
        if transport is None or transport.is_closing():
            return  # the browser went
        wake.clear()
        now = time.monotonic()
        live = _live_topics(request)
        topics = pacer.due(live, now)
        if topics:
            pacer.sent(topics, now)
            ident = feed.event_id()
            await response.write(
                "".join(f"id: {ident}\nevent: {t}\ndata: {t}\n\n" for t in topics).encode()
            )
            quiet_since = now
        elif now - quiet_since >= KEEPALIVE:
            await response.write(b": keep-alive\n\n")
            quiet_since = now
        delay, wakes = pacer.wait(live, now)
        delay = min(delay, max(0.0, quiet_since + KEEPALIVE - now), GONE_CHECK)
        if not wakes:
            await asyncio.sleep(delay)  # what changes meanwhile goes out together
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)
