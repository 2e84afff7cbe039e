"""Messaging through a real hub process over real TLS: the test plays the
hosts with raw control channels and hand-made frames (MsgHello with real
host keys signed by identity keys registered for their accounts), and checks
what the hub answers: refused announcements, routes and their reasons,
messages handed on and their results forwarded, ``no_host`` at once,
``retry`` when a receiving host goes, ``busy`` at the in-flight bound
without the hub's memory growing, hostile frames ending only their own
attachment, and what ``GET /v1/msg/hosts``, /metrics and the events say.
The payload is opaque to the hub: plain bytes here, no sealing."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from freight.client.session import HubSession, open_channel
from freight.protocol import messages as m
from freight.protocol.frames import encode_frame, encode_header
from freight.protocol.msgdirectory import MAX_INFLIGHT, MAX_INFLIGHT_BYTES, MAX_SEALED
from freight.protocol.msgkeys import sign_host_key, verify_host_key
from tests.authsupport import rest
from tests.msgsupport import (
    ANSWER_WAIT,
    Accounts,
    RawHost,
    events,
    gone_from_hub,
    metric,
    recorded,
    reg,
    rss,
)
from tests.support import Hub


@pytest.fixture(scope="module")
def msg_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("msg") / "hub", extra=["--msg-warmup", "0"]).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def people(msg_hub: Hub) -> Accounts:
    return Accounts(msg_hub)


@pytest.fixture
async def hosts(msg_hub: Hub, people: Accounts) -> AsyncIterator[Callable[..., Any]]:
    """Open hosts: ``await host(account, regs)`` (announced unless
    ``regs`` is None); every one is closed after the test."""
    opened: list[RawHost] = []

    async def host(account: str, regs: list[m.MsgReg] | None = None) -> RawHost:
        h = RawHost(msg_hub, account, people.token(account), people.identity(account))
        opened.append(h)
        h.register_identity()
        await h.open()
        if regs is not None:
            answer = await h.hello(regs)
            assert isinstance(answer, m.Done), answer
        return h

    yield host
    for h in opened:
        await h.close()


# --- announcing -------------------------------------------------------------------


async def test_hello_is_refused_for_a_wrong_signature_or_an_unregistered_identity(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    bob = await hosts("bob")
    # Signed by another key than the identity it names.
    answer = await bob.hello([], sig=sign_host_key(Ed25519PrivateKey.generate(), bob.key))
    assert isinstance(answer, m.Error)
    assert answer.code == "bad_host_key"
    # An identity key bob never registered (well signed by it).
    stranger = RawHost(msg_hub, "bob", bob.token)
    stranger.key = bob.key
    answer = await bob.hello([], sig=sign_host_key(stranger.identity, bob.key))
    assert isinstance(answer, m.Error)
    assert answer.code == "bad_host_key"  # the named identity did not sign it
    frame = m.MsgHello(
        rid="h2",
        key=bob.key.hex(),
        sig=sign_host_key(stranger.identity, bob.key).hex(),
        identity=stranger.identity_hex,
    )
    await bob.put(frame)
    answer = await bob.expect(lambda f: isinstance(f, m.Error | m.Done) and f.rid == "h2")
    assert isinstance(answer, m.Error)
    assert answer.code == "forbidden"
    assert "not one of account 'bob'" in answer.message
    # Carol's registered identity does not make a host of bob's account.
    carol = await hosts("carol")
    frame = m.MsgHello(
        rid="h3",
        key=bob.key.hex(),
        sig=sign_host_key(carol.identity, bob.key).hex(),
        identity=carol.identity_hex,
    )
    await bob.put(frame)
    answer = await bob.expect(lambda f: isinstance(f, m.Error | m.Done) and f.rid == "h3")
    assert isinstance(answer, m.Error)
    assert answer.code == "forbidden"
    # None of these made a host.
    assert (await carol.resolve("host:" + bob.hid)).reason == "no_host"
    # The right one does; its key cannot then be announced by another account.
    assert isinstance(await bob.hello([reg("hello-app", 1)]), m.Done)
    assert [h.hid for h in (await carol.resolve("host:" + bob.hid)).hosts] == [bob.hid]
    thief = RawHost(msg_hub, "carol", carol.token, identity=carol.identity)
    thief.key = bob.key
    await thief.open()
    try:
        answer = await thief.hello([])
        assert isinstance(answer, m.Error)
        assert answer.code == "conflict"
    finally:
        await thief.close()


async def test_send_before_hello_is_not_host(hosts: Callable[..., Any]) -> None:
    target = await hosts("admin", [reg("nh-app", 1)])
    anon = await hosts("bob")
    mid = await anon.send(target, b"x", app="nh-app")
    res = await anon.result(mid)
    assert res.reason == "not_host"
    assert res.count == 0


# --- routes -----------------------------------------------------------------------


async def test_resolve_answers_hosts_or_why_not(hosts: Callable[..., Any]) -> None:
    wide = await hosts("admin", [reg("rt-chat", 0xFFFF0000), reg("rt-mail", 1, peer="carol")])
    narrow = await hosts("admin", [reg("rt-chat", 0x12340000)])
    asker = await hosts("bob", [])
    route = await asker.resolve("admin", "rt-chat", 0x12340000)
    assert route.reason == ""
    assert sorted(h.hid for h in route.hosts) == sorted([wide.hid, narrow.hid])
    route = await asker.resolve("admin", "rt-chat", 0x00010000)
    assert [h.hid for h in route.hosts] == [wide.hid]
    route = await asker.resolve("*", "rt-chat", 0x00010000)
    assert [h.hid for h in route.hosts] == [wide.hid]
    # Each host's info checks out the way a sender checks it.
    for info in (await asker.resolve("admin", "rt-chat", 0x12340000)).hosts:
        assert info.account == "admin"
        hid = verify_host_key(
            bytes.fromhex(info.identity), bytes.fromhex(info.key), bytes.fromhex(info.sig)
        )
        assert hid == info.hid
    route = await asker.resolve("host:" + narrow.hid)
    assert [h.hid for h in route.hosts] == [narrow.hid]
    assert route.hosts[0].key == narrow.key.hex()
    reasons = {
        ("nobody-here", "rt-chat", 1): "no_host",
        ("host:" + "0" * 32, "", 0): "no_host",
        ("admin", "rt-none", 1): "no_app",
        ("*", "rt-none", 1): "no_app",
        ("admin", "rt-chat", 0x00001234): "no_interest",
        ("admin", "rt-mail", 1): "forbidden",
    }
    for (dest, app, type), reason in reasons.items():
        route = await asker.resolve(dest, app, type)
        assert route.hosts == [], (dest, app)
        assert route.reason == reason, (dest, app)
        assert route.message
    # Carol is the peer the mail registration names.
    carol = await hosts("carol", [])
    assert [h.hid for h in (await carol.resolve("admin", "rt-mail", 1)).hosts] == [wide.hid]


async def test_an_empty_route_is_retry_while_the_hub_warms_up(
    hubs: Callable[..., Hub],
) -> None:
    hub = hubs("--msg-warmup", "120")
    people = Accounts(hub)
    host = RawHost(hub, "admin", people.admin, people.identity("admin"))
    host.register_identity()
    await host.open()
    try:
        assert isinstance(await host.hello([reg("warm", 1)]), m.Done)
        assert (await host.resolve("admin", "warm", 2)).reason == "retry"
        assert (await host.resolve("host:" + "1" * 32)).reason == "retry"
        assert (await host.resolve("*", "cold", 1)).reason == "no_app"
        assert [h.hid for h in (await host.resolve("admin", "warm", 1)).hosts] == [host.hid]
    finally:
        await host.close()


# --- messages -----------------------------------------------------------------------


async def test_a_message_is_delivered_and_its_result_forwarded(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    delivered_before = metric(msg_hub, "freight_msg_messages_total", 'outcome="delivered"')
    receiver = await hosts("admin", [reg("dl-app", 0xFF)])
    sender = await hosts("bob", [])
    body = secrets.token_bytes(5000)
    mid = secrets.token_hex(16)
    await sender.put(
        m.MsgSend(
            len=len(body),
            id=mid,
            to=receiver.hid,
            app="dl-app",
            type=4,
            ticket=receiver.hid + ".1f",
            from_ticket=sender.hid + ".2",
            reply_to="ab" * 16,
        ),
        body,
    )
    got, payload = await receiver.expect_with_payload(lambda f: isinstance(f, m.MsgDeliver))
    assert isinstance(got, m.MsgDeliver)
    assert payload == body
    assert (got.id, got.frm, got.account, got.app, got.type) == (
        mid,
        sender.hid,
        "bob",
        "dl-app",
        4,
    )
    assert (got.ticket, got.from_ticket, got.reply_to) == (
        receiver.hid + ".1f",
        sender.hid + ".2",
        "ab" * 16,
    )
    await receiver.put(m.MsgResult(id=mid, count=3))
    res = await sender.result(mid)
    assert (res.host, res.count, res.reason) == (receiver.hid, 3, "")
    # A second result for it goes nowhere: the sender hears of it once.
    await receiver.put(m.MsgResult(id=mid, count=3))
    await receiver.settled()
    await sender.settled()
    assert not [f for f, _ in sender.pending if isinstance(f, m.MsgResult)]
    # A refusal by the receiving host reaches the sender with its reason.
    mid2 = await sender.send(receiver, b"again", app="dl-app", type=8)
    await receiver.expect(lambda f: isinstance(f, m.MsgDeliver) and f.id == mid2)
    await receiver.put(m.MsgResult(id=mid2, reason="no_interest", message="none takes 8"))
    res = await sender.result(mid2)
    assert (res.host, res.count, res.reason) == (receiver.hid, 0, "no_interest")
    # The listing counts them; the metrics too.
    status, listing = rest(msg_hub, "GET", "/v1/msg/hosts", token=people.admin)
    assert status == 200
    mine = {h["hid"]: h for h in listing["hosts"]}
    assert mine[sender.hid]["sent"] == 2
    assert mine[sender.hid]["refused"] == 1
    assert mine[receiver.hid]["delivered"] == 1
    assert mine[receiver.hid]["inflight"] == 0
    assert mine[receiver.hid]["regs"] == [{"app": "dl-app", "interest": 0xFF, "peer": "*"}]
    assert mine[receiver.hid]["account"] == "admin"
    after = metric(msg_hub, "freight_msg_messages_total", 'outcome="delivered"')
    assert after == delivered_before + 1


async def test_a_host_not_attached_is_no_host_at_once(hosts: Callable[..., Any]) -> None:
    gone = await hosts("admin", [reg("nh2", 1)])
    sender = await hosts("bob", [])
    hid = gone.hid
    await gone.close()
    await gone_from_hub(sender, hid)
    mid = await sender.send(hid, b"hello", app="nh2")
    res = await sender.result(mid)
    assert (res.host, res.count, res.reason) == (hid, 0, "no_host")
    mid = await sender.send("f" * 32, b"hello", app="nh2")
    assert (await sender.result(mid)).reason == "no_host"


async def test_a_receiving_host_going_answers_retry_for_what_was_in_flight(
    hosts: Callable[..., Any],
) -> None:
    receiver = await hosts("admin", [reg("rt-app", 1)])
    sender = await hosts("bob", [])
    mids = [await sender.send(receiver, b"m%d" % i, app="rt-app") for i in range(3)]
    for mid in mids:
        await receiver.expect(lambda f, mid=mid: isinstance(f, m.MsgDeliver) and f.id == mid)
    await receiver.put(m.MsgResult(id=mids[0], count=1))
    assert (await sender.result(mids[0])).count == 1
    await receiver.close()
    for mid in mids[1:]:
        res = await sender.result(mid)
        assert (res.host, res.count, res.reason) == (receiver.hid, 0, "retry")


async def test_a_reattaching_host_replaces_its_old_attachment(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    first = await hosts("admin", [reg("re-app", 1)])
    sender = await hosts("bob", [])
    mid = await sender.send(first, b"before", app="re-app")
    await first.expect(lambda f: isinstance(f, m.MsgDeliver) and f.id == mid)
    second = RawHost(msg_hub, "admin", people.token("admin"), identity=first.identity)
    second.key = first.key
    second.hid = first.hid
    await second.open()
    try:
        assert isinstance(await second.hello([reg("re-app", 1)]), m.Done)
        res = await sender.result(mid)  # the old attachment will not answer
        assert (res.host, res.reason) == (first.hid, "retry")
        mid2 = await sender.send(first.hid, b"after", app="re-app")
        got = await second.expect(lambda f: isinstance(f, m.MsgDeliver))
        assert got.id == mid2  # type: ignore[union-attr]
        # The old one going does not take the new one away (a bad frame: the
        # hub's Error comes after it has let the attachment go).
        await first.ws.send_bytes(b"junk")
        assert isinstance(await first.closed(), m.Error)
        assert [h.hid for h in (await sender.resolve("admin", "re-app", 1)).hosts] == [first.hid]
    finally:
        await second.close()


async def test_the_in_flight_bound_answers_busy_and_the_hub_holds_no_more(
    hosts: Callable[..., Any], msg_hub: Hub
) -> None:
    # By count: MAX_INFLIGHT small messages nobody answers, then busy.
    slow = await hosts("admin", [reg("bz-app", 1)])
    sender = await hosts("bob", [])
    busy_before = metric(msg_hub, "freight_msg_messages_total", 'outcome="busy"')
    for i in range(MAX_INFLIGHT):
        await sender.send(slow, b"%d" % i, app="bz-app")
    over = await sender.send(slow, b"over", app="bz-app")
    assert (await sender.result(over)).reason == "busy"
    await sender.settled()
    assert not [f for f, _ in sender.pending if isinstance(f, m.MsgResult)]
    status, listing = rest(msg_hub, "GET", "/v1/msg/hosts", token=sender.token)
    assert status == 200
    (mine,) = [h for h in listing["hosts"] if h["hid"] == slow.hid]
    assert mine["inflight"] == MAX_INFLIGHT
    # By bytes: as many sealed bodies of the largest size as fit in
    # MAX_INFLIGHT_BYTES, then busy; a flood of large messages after it
    # costs the hub no memory.
    big = await hosts("admin", [reg("bz-app", 1)])
    sender2 = await hosts("carol", [])
    body = secrets.token_bytes(MAX_SEALED)
    fit = MAX_INFLIGHT_BYTES // MAX_SEALED
    for _ in range(fit):
        await sender2.send(big, body, app="bz-app")
    over = await sender2.send(big, body, app="bz-app")
    assert (await sender2.result(over)).reason == "busy"
    await sender2.settled()
    before = rss(msg_hub)
    flood = [await sender2.send(big, body, app="bz-app") for _ in range(200)]
    for mid in flood:
        assert (await sender2.result(mid)).reason == "busy"
    grown = rss(msg_hub) - before
    assert grown < 48 * 1024 * 1024, grown  # 200 MiB went through and was not kept
    busy_after = metric(msg_hub, "freight_msg_messages_total", 'outcome="busy"')
    assert busy_after == busy_before + 202
    assert metric(msg_hub, "freight_msg_inflight") >= MAX_INFLIGHT + fit
    # Too large is answered at once, and the channel stays.
    mid = await sender2.send(big, bytes(MAX_SEALED + 1), app="bz-app")
    assert (await sender2.result(mid)).reason == "too_large"
    assert (await sender2.resolve("host:" + big.hid)).hosts[0].hid == big.hid


async def test_a_host_attached_over_plain_http_takes_messages(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    """The HTTP long-poll fallback carries the same frames."""
    token = people.token("admin")
    host = RawHost(msg_hub, "admin", token, people.identity("admin"))
    host.register_identity()
    session = HubSession(msg_hub.url, fingerprint=msg_hub.fingerprint, token=token)
    async with session:
        chan, used = await open_channel(session, "http")
        assert used == "http"

        async def next_frame() -> tuple[m.AnyMessage, bytes]:
            async with asyncio.timeout(ANSWER_WAIT):
                while True:
                    msg, payload = await chan.recv()
                    if not isinstance(msg, m.Ping):
                        return msg, payload

        try:
            await chan.send(host.hello_frame([reg("http-app", 1)], rid="hh"))
            done, _ = await next_frame()
            assert isinstance(done, m.Done), done
            sender = await hosts("bob", [])
            route = await sender.resolve("admin", "http-app", 1)
            assert [h.hid for h in route.hosts] == [host.hid]
            mid = await sender.send(host, b"over http", app="http-app")
            got, payload = await next_frame()
            assert isinstance(got, m.MsgDeliver), got
            assert (got.id, got.frm, payload) == (mid, sender.hid, b"over http")
            await chan.send(m.MsgResult(id=mid, count=1))
            res = await sender.result(mid)
            assert (res.host, res.count) == (host.hid, 1)
        finally:
            await chan.aclose()


# --- hostile frames ---------------------------------------------------------------


async def test_garbage_or_oversized_frames_end_only_that_attachment(
    hosts: Callable[..., Any],
) -> None:
    witness = await hosts("carol", [reg("hx-app", 1)])

    async def ends(send: Callable[[RawHost], Any]) -> None:
        bad = await hosts("bob", [reg("hx-app", 1)])
        assert [h.hid for h in (await witness.resolve("host:" + bad.hid)).hosts] == [bad.hid]
        await send(bad)
        await bad.closed()
        await gone_from_hub(witness, bad.hid)

    await ends(lambda h: h.ws.send_bytes(b"\x00\x00\x00\x08not json"))
    # A header that claims more payload than any frame may carry.
    await ends(
        lambda h: h.ws.send_bytes(
            encode_header(m.MsgSend(len=1 << 30, id="a" * 32, to=witness.hid, app="x", type=1))
        )
    )
    # A WebSocket message beyond the channel's largest frame.
    await ends(lambda h: h.ws.send_bytes(bytes(17 * 1024 * 1024 + 100)))
    # An announcement with more registrations than a host may hold.
    many = [reg(f"a{i}", 1) for i in range(m.MAX_HOST_REGS + 1)]

    async def too_many(h: RawHost) -> None:
        await h.put(h.hello_frame(many, rid="many"))

    await ends(too_many)
    # The witness was never disturbed.
    route = await witness.resolve("carol", "hx-app", 1)
    assert [h.hid for h in route.hosts] == [witness.hid]


async def test_asking_for_routes_without_reading_them_is_held_back_not_queued(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    """Routes go straight onto the asking channel: a client that asks and
    never reads fills its own socket, then the hub stops reading it; the
    hub's memory does not grow with what it asked, and it is not dropped
    as a slow client either (nothing of it waits in a queue at the hub)."""
    token = people.token("admin")
    many = [RawHost(msg_hub, "admin", token, people.identity("admin")) for _ in range(12)]
    many[0].register_identity()
    try:
        for h in many:  # twelve hosts in each route: the answers fill the socket sooner
            await h.open()
            assert isinstance(await h.hello([reg("deaf-app", 1)]), m.Done)
        deaf = await hosts("bob", [])
        sock = deaf.ws.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # fill it sooner
        before = rss(msg_hub)
        frame = encode_frame(m.MsgResolve(rid="d" * 64, dest="admin", app="deaf-app", type=1))
        sent = 0
        held_back = False
        while sent < 500_000:
            try:
                await asyncio.wait_for(deaf.ws.send_bytes(frame), 3)
            except TimeoutError:
                held_back = True
                break
            sent += 1
        assert held_back, f"{sent} requests were all taken"
        grown = rss(msg_hub) - before
        assert grown < 48 * 1024 * 1024, (sent, grown)
        # Others are served meanwhile.
        other = await hosts("carol", [])
        assert len((await other.resolve("admin", "deaf-app", 1)).hosts) == 12
        slow = [
            e for e in events(msg_hub, people.admin, "relay_slow_client") if e["actor"] == "bob"
        ]
        assert slow == []
    finally:
        for h in many:
            await h.close()


# --- listing and events ---------------------------------------------------------------


async def test_the_host_listing_shows_each_user_what_is_open_to_it(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    mine = await hosts("dave", [reg("ls-app", 1, peer="admin")])
    open_to_dave = await hosts("erin", [reg("ls-app", 1, peer="dave")])
    closed_to_dave = await hosts("erin", [reg("ls-app", 1, peer="admin")])
    for_all = await hosts("frank", [reg("ls-app", 1)])

    def listed(token: str) -> set[str]:
        status, body = rest(msg_hub, "GET", "/v1/msg/hosts", token=token)
        assert status == 200, body
        return {h["hid"] for h in body["hosts"]}

    ours = {mine.hid, open_to_dave.hid, closed_to_dave.hid, for_all.hid}
    assert listed(people.token("dave")) & ours == {mine.hid, open_to_dave.hid, for_all.hid}
    assert listed(people.admin) & ours == ours
    assert listed(people.token("erin")) & ours == {
        open_to_dave.hid,
        closed_to_dave.hid,
        for_all.hid,
    }
    status, body = rest(msg_hub, "GET", "/api/msg/hosts", token=people.admin)
    assert status == 200
    assert {h["hid"] for h in body["hosts"]} & ours == ours
    assert rest(msg_hub, "GET", "/v1/msg/hosts")[0] == 401
    assert metric(msg_hub, "freight_msg_hosts") >= len(ours)


async def test_events_record_registrations_and_refusals_at_a_bounded_rate(
    hosts: Callable[..., Any], msg_hub: Hub, people: Accounts
) -> None:
    host = await hosts("gina", [reg("ev-app", 1)])
    assert isinstance(await host.hello([reg("ev-app", 3), reg("ev-other", 1)], rid="h9"), m.Done)
    await host.settled()
    regs = await recorded(msg_hub, people.admin, "msg_registrations", "gina")
    assert len(regs) == 1  # the change within a few seconds of the first is held back
    assert regs[0]["detail"]["host"] == host.hid
    assert regs[0]["detail"]["regs"] == [{"app": "ev-app", "interest": 1, "peer": "*"}]
    # A flood of refusals leaves one event per reason.
    for _ in range(50):
        await host.send("e" * 32, b"x", app="ev-app")
    await host.settled()
    refused = await recorded(msg_hub, people.admin, "msg_refused", "gina")
    assert len(refused) == 1
    assert refused[0]["detail"] == {"reason": "no_host", "count": 1}
