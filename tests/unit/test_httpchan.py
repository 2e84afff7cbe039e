"""Frame channels over plain HTTP (the WebSocket fallback), both ends, against
a real aiohttp server on loopback with an echo ``serve``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

import freight.hub.httpattach
from freight.errors import NotLoggedIn
from freight.hub.httpattach import DOWN_WINDOW_BYTES, INBOX_BYTES, ServerHTTPChannel, add_routes
from freight.hub.requests import errors_middleware
from freight.hub.streams import User
from freight.protocol import messages as m
from freight.protocol.frames import FrameDecoder, encode_frame, encode_header
from freight.protocol.retry import RetryState
from freight.transport.channel import ChannelClosed, FrameChannel
from freight.transport.httpchan import (
    MAX_BACKOFF,
    REQUEST_RETRY,
    RETRY_FOR,
    HTTPAttachRefused,
    HTTPChannel,
    open_http_channel,
)
from tests.faultproxy import FaultProxy
from tests.support import until

MiB = 1024 * 1024
ALICE, BOB = "token-alice", "token-bob"
USERS = {ALICE: User(1, "alice", "user"), BOB: User(2, "bob", "user")}


async def fake_current_user(request: web.Request) -> User:
    """The hub's user lookup, keyed by the bearer token alone."""
    user = USERS.get(request.headers.get("Authorization", "").removeprefix("Bearer "))
    if user is None:
        raise NotLoggedIn("unknown token")
    return user


@dataclass
class EchoHub:
    """A hub whose ``serve`` sends back every frame it receives."""

    server: TestServer
    attached: asyncio.Queue[ServerHTTPChannel] = field(default_factory=asyncio.Queue)
    ended: asyncio.Queue[tuple[str, BaseException | None]] = field(default_factory=asyncio.Queue)
    requests: list[str] = field(default_factory=list)  # "GET down", "POST up", ...
    received: list[m.AnyMessage] = field(default_factory=list)  # by every serve
    reading: asyncio.Event = field(default_factory=asyncio.Event)  # clear: serve stops reading
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def base(self) -> URL:
        return self.server.make_url("/")

    def attach_url(self, aid: str = "") -> URL:
        url = self.base / "v1/attach/http"
        return url / aid if aid else url

    def session(self, token: str = ALICE) -> aiohttp.ClientSession:
        s = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
        self.sessions.append(s)
        return s

    async def open(self, token: str = ALICE) -> tuple[HTTPChannel, ServerHTTPChannel]:
        chan = await open_http_channel(self.session(token), self.base)
        return chan, await asyncio.wait_for(self.attached.get(), 5)

    async def create_raw(self, session: aiohttp.ClientSession) -> str:
        async with session.post(self.attach_url()) as resp:
            assert resp.status == 200
            return str((await resp.json())["aid"])

    async def serve(self, request: web.Request, chan: FrameChannel) -> None:
        assert isinstance(chan, ServerHTTPChannel)
        self.attached.put_nowait(chan)
        failure: BaseException | None = None
        try:
            while True:
                await self.reading.wait()
                msg, payload = await chan.recv()
                self.received.append(msg)
                await chan.send(msg, payload)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.ended.put_nowait((chan.aid, failure))

    @web.middleware
    async def count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path.rsplit('/', 1)[-1]}")
        return await handler(request)


StartHub = Callable[..., Awaitable[EchoHub]]


@pytest.fixture
async def start_hub(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartHub]:
    monkeypatch.setattr(freight.hub.httpattach, "current_user", fake_current_user)
    hubs: list[EchoHub] = []

    async def start(*, keepalive: float = 25.0, grace: float = 60.0) -> EchoHub:
        app = web.Application(middlewares=[errors_middleware])
        hub = EchoHub(TestServer(app, host="127.0.0.1"))
        hub.reading.set()
        app.middlewares.append(hub.count)
        add_routes(app, hub.serve, keepalive=keepalive, grace=grace)
        await hub.server.start_server()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        for s in hub.sessions:
            await s.close()
        await asyncio.wait_for(hub.server.close(), 10)


def data(i: int, payload: bytes) -> m.Data:
    return m.Data(sid="s", seq=i, offset=0, raw=len(payload), len=len(payload))


async def echo(chan: HTTPChannel, payloads: list[bytes]) -> None:
    """Send every payload while receiving the echoes."""
    sender = asyncio.create_task(send_all(chan, payloads))
    await expect_all(chan, payloads)
    await asyncio.wait_for(sender, 5)


async def expect_all(chan: FrameChannel, payloads: list[bytes]) -> None:
    """The next frames are Data numbered 0, 1, … carrying ``payloads``."""
    for i, payload in enumerate(payloads):
        await expect(chan, i, payload)


async def expect(chan: FrameChannel, seq: int, payload: bytes) -> None:
    msg, got = await asyncio.wait_for(chan.recv(), 30)
    if not (isinstance(msg, m.Data) and msg.seq == seq and got == payload):
        # Not a bare assert: pytest would try to diff megabytes.
        raise AssertionError(
            f"expected frame {seq} of {len(payload)} bytes, got {msg!r} with {len(got)}"
        )


async def send_all(chan: FrameChannel, payloads: list[bytes]) -> None:
    for i, payload in enumerate(payloads):
        await chan.send(data(i, payload), payload)


async def ended(hub: EchoHub, aid: str, timeout: float = 5.0) -> BaseException | None:
    """How the echo ``serve`` of attachment ``aid`` ended."""
    while True:
        got_aid, failure = await asyncio.wait_for(hub.ended.get(), timeout)
        if got_aid == aid:
            return failure


# --- echo -------------------------------------------------------------------------


async def test_frames_echo_back_identical_and_in_order(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    rnd = random.Random(1)
    big = [rnd.randbytes(n) for n in (0, 1, 100, 64 * 1024, MiB, 4 * MiB, 4 * MiB, 3 * MiB)]
    small = [rnd.randbytes(rnd.randrange(0, 200)) for _ in range(1000)]
    await echo(chan, big + small)
    ups = hub.requests.count("POST up")
    assert ups < len(big + small), "frames sent together should share POSTs"
    await chan.aclose()


async def test_idle_channel_gets_pings_that_recv_skips(start_hub: StartHub) -> None:
    hub = await start_hub(keepalive=0.2)
    chan, _ = await hub.open()
    receiving = asyncio.create_task(chan.recv())
    # One Ping opens each down response; more mean the idle channel was kept alive.
    await until(lambda: chan.pings >= 4, 5.0, what="pings on an idle channel")
    assert not receiving.done(), "recv() must not return a Ping"
    assert hub.requests.count("GET down") == 1
    await chan.send(m.KeepAlive(sid="s", offset=7))
    msg, payload = await asyncio.wait_for(receiving, 5)
    assert msg == m.KeepAlive(sid="s", offset=7) and payload == b""
    await chan.aclose()


async def test_pings_on_the_raw_down_stream(start_hub: StartHub) -> None:
    hub = await start_hub(keepalive=0.2)
    session = hub.session()
    aid = await hub.create_raw(session)
    decoder = FrameDecoder()
    pings = 0
    async with session.get(hub.attach_url(aid) / "down") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        async with asyncio.timeout(5):
            while pings < 3:
                decoder.feed(await resp.content.readany())
                for msg, _ in decoder:
                    assert isinstance(msg, m.Ping)
                    pings += 1


async def test_hub_sends_beyond_its_window_to_a_client_that_only_reads(
    start_hub: StartHub,
) -> None:
    """The hub keeps at most DOWN_WINDOW_BYTES unacknowledged: a client that
    sends nothing must still acknowledge (with ack-only POSTs)."""
    hub = await start_hub()
    chan, server_chan = await hub.open()
    rnd = random.Random(4)
    payloads = [rnd.randbytes(MiB) for _ in range(3 * DOWN_WINDOW_BYTES // MiB)]
    flood = asyncio.create_task(send_all(server_chan, payloads))
    await expect_all(chan, payloads)
    await asyncio.wait_for(flood, 5)
    assert hub.received == [] and hub.requests.count("POST up") >= 2
    await chan.aclose()


async def test_acks_flow_while_a_frame_post_waits_on_the_hub(start_hub: StartHub) -> None:
    """The hub's serve does not read, so the client's frame POST waits; the
    hub floods the client meanwhile, which needs the client's acks."""
    hub = await start_hub()
    hub.reading.clear()
    chan, server_chan = await hub.open()
    up = [b"u" * MiB] * 24
    sending = asyncio.create_task(send_all(chan, up))
    await until(lambda: hub.requests.count("POST up") >= 1, 5.0, what="a frame POST")
    rnd = random.Random(5)
    down = [rnd.randbytes(MiB) for _ in range(3 * DOWN_WINDOW_BYTES // MiB)]
    flood = asyncio.create_task(send_all(server_chan, down))
    await expect_all(chan, down)
    await asyncio.wait_for(flood, 5)
    assert not sending.done(), "the client's frames should still wait on the hub"
    hub.reading.set()  # and now the echo of the held-up frames arrives in order
    await expect_all(chan, up)
    await asyncio.wait_for(sending, 5)
    await chan.aclose()


async def test_frames_the_hub_has_not_taken_are_bounded_in_bytes(start_hub: StartHub) -> None:
    """A client that sends large frames to a hub that does not read them is
    held back once INBOX_BYTES wait, whatever the number of frames (eight
    4 MiB frames were all held before)."""
    hub = await start_hub()
    hub.reading.clear()
    chan, server_chan = await hub.open()
    up = [bytes([i]) * (4 * MiB) for i in range(8)]
    sending = asyncio.create_task(send_all(chan, up))
    try:
        await until(lambda: server_chan.inbox_bytes > 0, 5.0, what="frames at the hub")
        # Give the client every chance to push more: it must stay held back.
        for _ in range(50):
            await asyncio.sleep(0.01)
            assert server_chan.inbox_bytes <= INBOX_BYTES + 4 * MiB
        assert not sending.done()
        hub.reading.set()
        await expect_all(chan, up)
        await asyncio.wait_for(sending, 5)
    finally:
        sending.cancel()
        await chan.aclose()


# --- broken down streams ------------------------------------------------------------


async def test_down_stream_ended_by_the_hub_is_asked_for_again(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, server_chan = await hub.open()
    rnd = random.Random(2)
    payloads = [rnd.randbytes(rnd.randrange(0, 5000)) for _ in range(300)]
    sender = asyncio.create_task(send_all(chan, payloads))
    for i, payload in enumerate(payloads):
        if i in (10, 100, 101, 250):
            server_chan.end_down()
        await expect(chan, i, payload)
    await asyncio.wait_for(sender, 5)
    assert hub.requests.count("GET down") >= 2
    # And later frames still arrive.
    await chan.send(m.KeepAlive(sid="s", offset=1))
    assert (await asyncio.wait_for(chan.recv(), 5))[0] == m.KeepAlive(sid="s", offset=1)
    await chan.aclose()


async def test_connections_reset_mid_frame_lose_and_repeat_nothing(start_hub: StartHub) -> None:
    """Every connection is reset after 300 KiB each way, mostly inside a
    frame: POSTs are retried from the same frame number, down responses
    replay from the last frame taken whole."""
    hub = await start_hub()
    assert hub.server.port is not None
    with FaultProxy(hub.server.port, cut_every=300 * 1024) as proxy:
        base = URL(f"http://127.0.0.1:{proxy.port}/")
        chan = await open_http_channel(hub.session(), base)
        rnd = random.Random(3)
        payloads = [rnd.randbytes(rnd.randrange(1, 64 * 1024)) for _ in range(150)]
        await echo(chan, payloads)
        assert proxy.cuts >= 10
        await chan.aclose()


# --- ending attachments ----------------------------------------------------------------


async def test_delete_ends_the_attachment(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    session = hub.session()
    async with session.delete(chan.url) as resp:
        assert resp.status == 204
    assert isinstance(await ended(hub, chan.aid), ChannelClosed)
    async with session.get(chan.url / "down") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    with pytest.raises(ChannelClosed, match="ended the HTTP attachment"):
        await asyncio.wait_for(chan.recv(), 5)
    with pytest.raises(ChannelClosed):
        await chan.send(m.KeepAlive(sid="s", offset=1))
    await chan.aclose()


async def test_send_fails_once_the_attachment_is_gone(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    async with hub.session().delete(chan.url) as resp:
        assert resp.status == 204

    async def send_until_refused() -> None:
        with pytest.raises(ChannelClosed, match="ended the HTTP attachment"):
            while True:
                await chan.send(m.KeepAlive(sid="s", offset=1))
                await asyncio.sleep(0.01)

    await asyncio.wait_for(send_until_refused(), 5)
    await chan.aclose()


async def test_aclose_delivers_queued_frames_then_deletes(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    await chan.send(m.KeepAlive(sid="s", offset=5))
    await chan.aclose()
    assert isinstance(await ended(hub, chan.aid), ChannelClosed)
    assert hub.received == [m.KeepAlive(sid="s", offset=5)]
    assert "DELETE " + chan.aid in hub.requests
    with pytest.raises(ChannelClosed):
        await chan.recv()


async def test_another_users_token_cannot_use_the_attachment(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open(ALICE)
    bob = hub.session(BOB)
    up = (chan.url / "up").with_query(seq=0, ack=0)
    body = encode_frame(m.KeepAlive(sid="s", offset=1))
    for method, url, payload in (
        ("GET", chan.url / "down", None),
        ("POST", up, body),
        ("DELETE", chan.url, None),
    ):
        async with bob.request(method, url, data=payload) as resp:
            assert resp.status == 404, method
    async with hub.session("nobody").get(chan.url / "down") as resp:
        assert resp.status == 401
    # Alice's channel is untouched by all that.
    await echo(chan, [b"still mine"])
    await chan.aclose()


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x05nojs!",  # a header that is not a message
        b"\x00\x00\x00\x00",  # an empty header
        encode_header(m.Data(sid="s", seq=0, offset=0, raw=9, len=9)),  # payload missing
        encode_frame(m.Ping()) + encode_header(m.Data(sid="s", seq=0, offset=0, raw=9, len=9))[:7],
    ],
    ids=["garbage", "empty-header", "payload-missing", "header-cut"],
)
async def test_malformed_up_body_is_refused_and_ends_the_attachment(
    start_hub: StartHub, body: bytes
) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    url = (chan.url / "up").with_query(seq=0, ack=0)
    async with hub.session().post(url, data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == "remote_protocol_error" and error["message"]
    assert isinstance(await ended(hub, chan.aid), ChannelClosed)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(chan.recv(), 5)
    await chan.aclose()


async def test_up_post_with_a_gap_is_refused(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    url = (chan.url / "up").with_query(seq=5, ack=0)
    async with hub.session().post(url, data=encode_frame(m.Ping())) as resp:
        assert resp.status == 400
    assert isinstance(await ended(hub, chan.aid), ChannelClosed)
    await chan.aclose()


async def test_an_ack_of_frames_never_sent_is_refused_and_ends_the_attachment(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    session = hub.session()
    aid = await hub.create_raw(session)
    url = (hub.attach_url(aid) / "up").with_query(ack=3)
    async with session.post(url) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "attach_sequence"
    assert isinstance(await ended(hub, aid), ChannelClosed)
    async with session.get(hub.attach_url(aid) / "down") as resp:
        assert resp.status == 404


async def test_a_retried_up_post_is_not_delivered_twice(start_hub: StartHub) -> None:
    hub = await start_hub()
    session = hub.session()
    aid = await hub.create_raw(session)
    frames = [m.KeepAlive(sid="s", offset=i) for i in range(3)]
    bodies = [b"".join(encode_frame(f) for f in frames[:2]), b"".join(map(encode_frame, frames))]
    for body in bodies:  # the second POST repeats frames 0 and 1
        url = (hub.attach_url(aid) / "up").with_query(seq=0, ack=0)
        async with session.post(url, data=body) as resp:
            assert resp.status == 204
    down = hub.attach_url(aid) / "down"
    decoder = FrameDecoder()
    got: list[m.AnyMessage] = []
    async with session.get(down) as resp:
        async with asyncio.timeout(5):
            while len(got) < 3:
                decoder.feed(await resp.content.readany())
                got += [msg for msg, _ in decoder if not isinstance(msg, m.Ping)]
    assert got == frames


async def test_plain_long_polling_without_ack_or_seq(start_hub: StartHub) -> None:
    """A client that follows the bare contract (no ``ack``, no ``seq``) still
    works: its POSTs append, and the hub does not wait for acknowledgements."""
    hub = await start_hub()
    session = hub.session()
    aid = await hub.create_raw(session)
    server_chan = await asyncio.wait_for(hub.attached.get(), 5)
    keepalives = [m.KeepAlive(sid="s", offset=i) for i in range(2)]
    for msg in keepalives:
        async with session.post(hub.attach_url(aid) / "up", data=encode_frame(msg)) as resp:
            assert resp.status == 204
    await until(lambda: len(hub.received) == 2, 5.0)
    assert hub.received == keepalives
    flood = [b"d" * MiB] * (3 * DOWN_WINDOW_BYTES // MiB)
    flooding = asyncio.create_task(send_all(server_chan, flood))
    decoder = FrameDecoder()
    got: list[tuple[m.AnyMessage, bytes]] = []
    async with session.get(hub.attach_url(aid) / "down") as resp, asyncio.timeout(10):
        while len(got) < len(keepalives) + len(flood):
            decoder.feed(await resp.content.readany())
            got += [f for f in decoder if not isinstance(f[0], m.Ping)]
    await asyncio.wait_for(flooding, 5)
    assert [msg for msg, _ in got[:2]] == keepalives
    assert [msg for msg, _ in got[2:]] == [data(i, p) for i, p in enumerate(flood)]
    assert all(payload == flood[0] for _, payload in got[2:])


async def test_grace_period_ends_an_attachment_whose_client_vanished(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(keepalive=0.1, grace=0.5)
    chan, _ = await hub.open()
    receiving = asyncio.create_task(chan.recv())
    # An idle client that keeps its down request open is kept well past grace.
    await until(lambda: chan.pings >= 12, 5.0, what="pings for over a second")
    assert hub.ended.empty()
    receiving.cancel()
    await hub.sessions[0].close()  # the client vanishes: no DELETE
    failure = await ended(hub, chan.aid)
    assert isinstance(failure, ChannelClosed) and "client gone" in failure.message
    await chan.aclose()


async def test_grace_period_ends_an_attachment_never_asked_for(start_hub: StartHub) -> None:
    hub = await start_hub(grace=0.3)
    aid = await hub.create_raw(hub.session())
    assert isinstance(await ended(hub, aid), ChannelClosed)


async def test_hub_shutdown_ends_open_attachments_at_once(start_hub: StartHub) -> None:
    hub = await start_hub()
    chan, _ = await hub.open()
    receiving = asyncio.create_task(chan.recv())
    await until(lambda: chan.pings >= 1, 5.0)
    await asyncio.wait_for(hub.server.close(), 5)
    assert isinstance(await ended(hub, chan.aid), ChannelClosed)
    receiving.cancel()
    await chan.aclose()


# --- making attachments ----------------------------------------------------------------


async def test_unknown_token_is_not_logged_in(start_hub: StartHub) -> None:
    hub = await start_hub()
    with pytest.raises(NotLoggedIn):
        await open_http_channel(hub.session("nobody"), hub.base)


async def test_non_2xx_answer_is_refused(start_hub: StartHub) -> None:
    hub = await start_hub()
    with pytest.raises(HTTPAttachRefused, match="404"):
        await open_http_channel(hub.session(), hub.base / "elsewhere/")


def test_requests_are_retried_from_50_ms_doubling_to_5_s_for_60_s() -> None:
    retry = RetryState(REQUEST_RETRY)
    retry.mark_started()
    now, delays = 0.0, []
    while (delay := retry.failed(now, 0.5)) is not None:
        delays.append(delay)
        now += delay
    assert delays[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert max(delays) == MAX_BACKOFF
    assert now == pytest.approx(RETRY_FOR)
