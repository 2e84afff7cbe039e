"""Messaging hosts (MessageHost on a RelayClient) of different accounts
against a real hub process: unicast and multicast with their counts,
request/reply, every negative answer at once, sealed bodies, a full queue
answering busy, duplicates never delivered twice, and spooled messages sent
again after a hub restart and a host restart, each delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from freight.client import msgsend
from freight.client.config import ClientConfig
from freight.client.msgapp import load_host_key
from freight.client.msghost import (
    Delivery,
    MessageHost,
    Registration,
    SendResult,
    result_error,
)
from freight.client.relay import RelayClient
from freight.client.session import HubSession, parse_hub_url
from freight.errors import Busy, ConnectionEnded, IntegrityError, NoRecipient, PeerAbsent
from freight.protocol import messages as m
from freight.protocol.msgseal import SEAL_OVERHEAD, aad, new_host_key, open_body, pair_keys
from tests.relaysupport import BOB_PASSWORD, FAST_RELAY, accounts, fast
from tests.support import Client, Hub, until

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAST_RELAY.items():
        monkeypatch.setenv(name, value)


def second_device(tmp: Path, hub: Hub, user: str, password: str) -> Client:
    c = fast(Client(tmp, hub))
    c.login(user=user, password=password)
    return c


@pytest.fixture(scope="module")
def msg_hub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Hub, Client, Client, Client]]:
    """One hub (no warm-up) and three devices: admin, and bob twice."""
    tmp = tmp_path_factory.mktemp("msg")
    hub = Hub(tmp / "hub", extra=["--msg-warmup", "0"]).start()
    try:
        admin, bob = accounts(tmp, hub)
        bob2 = second_device(tmp / "client-bob2", hub, "bob", BOB_PASSWORD)
        yield hub, admin, bob, bob2
    finally:
        hub.stop()


@contextlib.asynccontextmanager
async def msg_host(client: Client, *also: str) -> AsyncIterator[MessageHost]:
    """A messaging host on a CLI client's saved login (its own config folder);
    ``also``: more node addresses it knows, after its own."""
    config = ClientConfig(client.config)
    session = HubSession.from_config(config)
    session.nodes += [parse_hub_url(u) for u in also]
    async with RelayClient(session, config) as rc:
        await asyncio.wait_for(rc.start(), 30)
        host = MessageHost(rc, config)
        try:
            await asyncio.wait_for(host.start(), 30)
            yield host
        finally:
            await host.aclose()


class Taker:
    """A consumer that takes everything its registration gets."""

    def __init__(self, reg: Registration) -> None:
        self.reg = reg
        self.got: list[Delivery] = []
        self._more = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.reg.closed:
            try:
                d = await self.reg.get()
            except ConnectionEnded:
                return  # the host closed
            self.reg.taken(d)
            self.got.append(d)
            self._more.set()

    async def wait(self, n: int, timeout: float = 30) -> list[Delivery]:
        async def enough() -> None:
            while len(self.got) < n:
                self._more.clear()
                await self._more.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.got

    def stop(self) -> None:
        self.task.cancel()


async def timed(coro: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


async def assert_refused_at_once(res_and_time: tuple[SendResult, float], reason: str) -> None:
    res, took = res_and_time
    assert res.count == 0
    assert res.reason == reason, res
    assert took < 3.0, f"{reason} took {took:.1f} s, not one round trip"


async def test_unicast_multicast_tickets_and_the_negative_answers(
    msg_hub: tuple[Hub, Client, Client, Client],
) -> None:
    _, admin, bob, bob2 = msg_hub
    async with msg_host(admin) as a, msg_host(bob) as b1, msg_host(bob2) as b2:
        assert len({a.hid, b1.hid, b2.hid}) == 3
        r1 = b1.register("sensors", 0xFFFF0000)
        r2 = b1.register("sensors", 0x12340000)
        r3 = b2.register("sensors", 0xFFFFFFFF)
        b2.register("logs", 0x1)
        await asyncio.wait_for(asyncio.gather(b1.announced(), b2.announced()), 20)
        t1, t2, t3 = Taker(r1), Taker(r2), Taker(r3)
        try:
            # Multicast to an account: both hosts, three registrations.
            res = await a.send("bob", "sensors", 0x12340000, b"calibrate", timeout=30)
            assert res.count == 3
            assert res.ok
            for t in (t1, t2, t3):
                (d,) = await t.wait(1)
                assert d.body == b"calibrate"
                assert d.account == "admin"
                assert d.frm == a.hid
                assert d.app == "sensors"
                assert d.type == 0x12340000
                assert d.id == res.id
                assert d.ticket == t.reg.ticket
            assert r1.ticket.startswith(b1.hid + ".")
            # The seed's other types: only the all-ones interest matches.
            res = await a.send("bob", "sensors", 0x00002222, b"x")
            assert res.count == 1
            await t3.wait(2)
            # A ticket: that registration only.
            res = await a.send(f"host:{b1.hid}", "sensors", 0x12340000, b"t", ticket=r2.ticket)
            assert res.count == 1
            assert [d.body for d in await t2.wait(2)] == [b"calibrate", b"t"]
            assert len(t1.got) == 1
            # The negative answers, each within a round trip.
            await assert_refused_at_once(
                await timed(a.send(f"host:{b1.hid}", "sensors", 0x00001234, b"n")), "no_interest"
            )
            await assert_refused_at_once(
                await timed(
                    a.send(f"host:{b1.hid}", "sensors", 0x00002222, b"n", ticket=r2.ticket)
                ),
                "no_interest",
            )
            await assert_refused_at_once(await timed(a.send("bob", "nothere", 1, b"n")), "no_app")
            await assert_refused_at_once(
                await timed(a.send(f"host:{'0' * 32}", "sensors", 1, b"n")), "no_host"
            )
            b1.unregister(r2.ticket)
            await asyncio.wait_for(b1.announced(), 20)
            await assert_refused_at_once(
                await timed(
                    a.send(f"host:{b1.hid}", "sensors", 0x12340000, b"n", ticket=r2.ticket)
                ),
                "ticket_gone",
            )
            with pytest.raises(NoRecipient) as info:
                raise result_error(await a.send("bob", "nothere", 1, b"n"))
            assert info.value.exit_code == 9
            assert info.value.reason == "no_app"
            # Every host the sender may reach, every matching registration.
            res = await a.send("*", "sensors", 0xFFFFFFFF, b"all")
            assert res.count == 2
            assert t1.got[-1].body == b"all"
            assert t3.got[-1].body == b"all"
            assert len(t2.got) == 2
            assert a.counters()["sent"] == 10
            by_ticket = {row["ticket"]: row for row in b1.apps()}
            assert by_ticket[r1.ticket]["delivered"] == 2
        finally:
            for t in (t1, t2, t3):
                t.stop()


async def test_request_and_reply(msg_hub: tuple[Hub, Client, Client, Client]) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a, msg_host(bob) as b1:
        echo = b1.register("echo", 0x0000FFFF)
        silent = b1.register("silent", 0xFFFFFFFF)
        await asyncio.wait_for(b1.announced(), 20)

        async def serve() -> None:
            while True:
                d = await echo.get()
                echo.taken(d)
                await b1.send(
                    f"host:{d.frm}",
                    d.app,
                    0x1,
                    b"re: " + d.body,
                    ticket=d.from_ticket,
                    reply_to=d.id,
                )

        server = asyncio.create_task(serve())
        try:
            reply = await a.request("bob", "echo", 0x0001, b"status", timeout=10)
            assert reply.body == b"re: status"
            assert reply.frm == b1.hid
            assert reply.account == "bob"
            assert reply.ticket.startswith(a.hid + ".")
            assert a.apps() == []  # the reply registration is gone
            with pytest.raises(NoRecipient, match="no registered interest"):
                await a.request("bob", "echo", 0x10000, b"x", timeout=10)
            taker = Taker(silent)
            with pytest.raises(PeerAbsent, match="no reply"):
                await a.request("bob", "silent", 1, b"anyone?", timeout=2)
            taker.stop()
        finally:
            server.cancel()


async def test_a_reply_ends_a_request_before_the_request_is_answered(
    msg_hub: tuple[Hub, Client, Client, Client],
) -> None:
    """The requester waits for the reply, not for its request's own answer
    (which comes once the responder has taken it)."""
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a, msg_host(bob) as b1:
        slow = b1.register("replies-first", 0xFF)
        await asyncio.wait_for(b1.announced(), 20)
        held: list[Delivery] = []

        async def serve() -> SendResult:
            d = await slow.get()
            held.append(d)  # not taken: the request stays unanswered
            return await b1.send(f"host:{d.frm}", d.app, 1, b"early", ticket=d.from_ticket,
                                 reply_to=d.id, timeout=10)  # fmt: skip

        server = asyncio.create_task(serve())
        try:
            reply = await asyncio.wait_for(
                a.request("bob", "replies-first", 1, b"q", timeout=60), 20
            )
            assert reply.body == b"early"
            assert reply.reply_to == held[0].id
            assert slow.stats()["delivered"] == 0  # the request itself is still untaken
            slow.taken(held[0])
            # The reply's sender is told it was taken (once, by the requester).
            answered = await asyncio.wait_for(server, 20)
            assert (answered.count, answered.reason) == (1, "")
        finally:
            server.cancel()


async def test_the_hub_sees_only_sealed_bodies(msg_hub: tuple[Hub, Client, Client, Client]) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a, msg_host(bob) as b1:
        taker = Taker(b1.register("vault", 0x1))
        await asyncio.wait_for(b1.announced(), 20)
        seen: list[tuple[m.MsgDeliver, bytes]] = []
        inner = b1.relay.on_message
        assert inner is not None

        async def spy(msg: m.AnyMessage, payload: bytes) -> None:
            if isinstance(msg, m.MsgDeliver):
                seen.append((msg, payload))
            await inner(msg, payload)

        b1.relay.on_message = spy
        body = b"the launch code is 0000 " * 8
        assert (await a.send("bob", "vault", 0x1, body)).count == 1
        assert [d.body for d in await taker.wait(1)] == [body]
        taker.stop()
        ((msg, payload),) = seen
        assert payload != body
        assert body[:24] not in payload
        assert len(payload) == len(body) + SEAL_OVERHEAD
        header = aad(msg.id, msg.frm, b1.hid, msg.type, msg.app, msg.ticket)
        to_a, from_a = pair_keys(load_host_key(ClientConfig(bob.config)), a.key)
        assert open_body(from_a, payload, header) == body
        with pytest.raises(IntegrityError):
            open_body(to_a, payload, header)  # the other direction's key
        stranger = pair_keys(new_host_key(), a.key)[1]
        with pytest.raises(IntegrityError):
            open_body(stranger, payload, header)


async def test_a_full_queue_answers_busy(msg_hub: tuple[Hub, Client, Client, Client]) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a, msg_host(bob) as b1:
        slow = b1.register("slow", 0x1)
        await asyncio.wait_for(b1.announced(), 20)
        # Four bodies of 1 MiB fill the registration's 4 MiB; nobody takes them.
        waiting = [
            asyncio.create_task(a.send("bob", "slow", 0x1, bytes([i]) * MiB, timeout=60))
            for i in range(4)
        ]
        for _ in range(200):
            if slow.stats()["queued"] == 4:
                break
            await asyncio.sleep(0.05)
        assert slow.stats()["queued"] == 4
        res = await a.send("bob", "slow", 0x1, b"one more", timeout=1.5)
        assert res.count == 0
        assert res.reason == "busy"
        assert isinstance(result_error(res), Busy)
        assert slow.stats()["refused_busy"] >= 1
        assert not any(t.done() for t in waiting)
        # The consumer catches up: the four are delivered, once each.
        taker = Taker(slow)
        results = await asyncio.wait_for(asyncio.gather(*waiting), 30)
        assert [r.count for r in results] == [1, 1, 1, 1]
        assert sorted(d.body[0] for d in taker.got) == [0, 1, 2, 3]
        assert (await a.send("bob", "slow", 0x1, b"now it fits")).count == 1
        taker.stop()


async def test_unanswered_messages_are_bounded_and_send_waits(
    msg_hub: tuple[Hub, Client, Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, admin, bob, _ = msg_hub
    monkeypatch.setattr(msgsend, "MAX_UNANSWERED", 3)
    async with msg_host(admin) as a, msg_host(bob) as b1:
        held = b1.register("bounded", 0x1)
        await asyncio.wait_for(b1.announced(), 20)
        sends = [
            asyncio.create_task(a.send("bob", "bounded", 0x1, b"%d" % i, timeout=60))
            for i in range(5)
        ]
        for _ in range(200):
            if held.stats()["queued"] == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for a fourth, were it let through
        assert held.stats()["queued"] == 3
        assert spooled(admin) == 3  # the other two wait before the spool
        taker = Taker(held)
        results = await asyncio.wait_for(asyncio.gather(*sends), 30)
        assert [r.count for r in results] == [1] * 5
        assert sorted(d.body for d in taker.got) == [b"0", b"1", b"2", b"3", b"4"]
        taker.stop()


async def test_a_registration_removed_with_messages_not_taken_answers_them(
    msg_hub: tuple[Hub, Client, Client, Client],
) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a, msg_host(bob) as b1:
        queued = b1.register("drop", 0x1)
        given = b1.register("drop", 0x2)
        await asyncio.wait_for(b1.announced(), 20)
        first = asyncio.create_task(a.send("bob", "drop", 0x1, b"queued", timeout=60))
        second = asyncio.create_task(a.send("bob", "drop", 0x2, b"given", timeout=60))
        got = await asyncio.wait_for(given.get(), 20)  # given out, never taken
        assert got.body == b"given"
        for _ in range(200):
            if queued.stats()["queued"] == 1:
                break
            await asyncio.sleep(0.05)
        b1.unregister(queued.ticket)
        b1.unregister(given.ticket)
        results = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert [(r.count, r.reason) for r in results] == [(0, "ticket_gone")] * 2


async def test_duplicates_are_never_delivered_twice(
    msg_hub: tuple[Hub, Client, Client, Client],
) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a:
        sent: list[tuple[m.Message, bytes]] = []
        results: list[m.MsgResult] = []
        send_frame, send_frames = a.relay.send_frame, a.relay.send_frames
        on_message = a.relay.on_message
        assert on_message is not None

        async def spy_send(frames: list[tuple[m.Message, bytes]]) -> None:
            sent.extend((msg, payload) for msg, payload in frames if isinstance(msg, m.MsgSend))
            await send_frames(frames)

        async def spy_results(msg: m.AnyMessage, payload: bytes) -> None:
            if isinstance(msg, m.MsgResult):
                results.append(msg)
            await on_message(msg, payload)

        a.relay.send_frames = spy_send  # type: ignore[method-assign]
        a.relay.on_message = spy_results

        async def answered_again(mid: str, before: int) -> m.MsgResult:
            for _ in range(200):
                again = [r for r in results if r.id == mid]
                if len(again) > before:
                    return again[-1]
                await asyncio.sleep(0.05)
            raise AssertionError("no answer to the duplicate")

        async with msg_host(bob) as b1:
            taker = Taker(b1.register("once", 0x1))
            await asyncio.wait_for(b1.announced(), 20)
            res = await a.send("bob", "once", 0x1, b"only once")
            assert res.count == 1
            ((frame, payload),) = sent
            await send_frame(frame, payload)  # the same id again
            dup = await answered_again(res.id, 1)
            assert dup.count == 1
            assert dup.host == b1.hid
            assert b1.counters()["deduplicated"] == 1
            assert [d.body for d in taker.got] == [b"only once"]
            taker.stop()
        # A restarted host still knows the id (its spool remembers it).
        async with msg_host(bob) as b1:
            taker = Taker(b1.register("once", 0x1))
            await asyncio.wait_for(b1.announced(), 20)
            await send_frame(frame, payload)
            dup = await answered_again(res.id, 2)
            assert dup.count == 1
            assert b1.counters()["deduplicated"] == 1
            assert taker.got == []
            taker.stop()


async def test_a_receiving_host_restarting_mid_flight_gets_the_message_in_its_next_run(
    msg_hub: tuple[Hub, Client, Client, Client],
) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(admin) as a:
        async with msg_host(bob) as b1:
            held = b1.register("restart", 0x1)
            await asyncio.wait_for(b1.announced(), 20)
            sending = asyncio.create_task(a.send("bob", "restart", 0x1, b"survive", timeout=60))
            for _ in range(200):
                if held.stats()["queued"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert held.stats()["queued"] == 1  # arrived, never taken
        assert not sending.done()
        async with msg_host(bob) as b2:
            assert b2.hid == b1.hid  # the same host key, a new run
            taker = Taker(b2.register("restart", 0x1))
            res = await asyncio.wait_for(sending, 30)
            assert res.count == 1
            assert [d.body for d in taker.got] == [b"survive"]
            assert a.counters()["resent"] >= 1
            taker.stop()


async def test_a_send_not_waited_for_returns_once_spooled_and_is_delivered_once(
    msg_hub: tuple[Hub, Client, Client, Client],
) -> None:
    _, admin, bob, _ = msg_hub
    async with msg_host(bob) as b:
        later = b.register("later", 0x1)  # nobody takes its messages yet
        await asyncio.wait_for(b.announced(), 20)
        async with msg_host(admin) as a:
            res = await asyncio.wait_for(
                a.send("bob", "later", 0x1, b"first", wait=False, timeout=60), 10
            )
            assert (res.count, res.reason) == (0, "spooled")
            assert spooled(admin) == 1  # held until bob's host answers
            await until(lambda: later.stats()["queued"] == 1, what="queued at bob")
            # The sending host stops before the answer: the next run sends it.
            res2 = await a.send("bob", "later", 0x1, b"second", wait=False, timeout=60)
            await until(lambda: later.stats()["queued"] == 2, what="both queued at bob")
        assert spooled(admin) == 2
        async with msg_host(admin) as a2:
            taker = Taker(later)
            await taker.wait(2)
            await until(lambda: spooled(admin) == 0, what="an empty spool")
            assert a2.counters()["resent"] == 2
            assert a2.counters()["delivered"] == 2
            assert [d.body for d in taker.got] == [b"first", b"second"]  # once each
            assert [d.id for d in taker.got] == [res.id, res2.id]
            taker.stop()


def spooled(client: Client) -> int:
    with contextlib.closing(sqlite3.connect(client.config / "msgspool.db")) as db:
        return int(db.execute("SELECT count(*) FROM spool").fetchone()[0])


async def test_spooled_messages_survive_hub_and_host_restarts(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", extra=["--msg-warmup", "5"]).start()
    try:
        admin, bob = accounts(tmp_path, hub)
        async with msg_host(bob) as b:
            taker = Taker(b.register("jobs", 0xFF))
            await asyncio.wait_for(b.announced(), 20)
            async with msg_host(admin) as a:
                assert (await a.send("bob", "jobs", 0x1, b"warm")).count == 1
                # Messages in flight while the hub is SIGKILLed and started again.
                flying = [
                    asyncio.create_task(a.send("bob", "jobs", 0x1, b"fly %d" % i, timeout=60))
                    for i in range(40)
                ]
                await asyncio.sleep(0)
                await asyncio.to_thread(hub.kill)
                await asyncio.to_thread(hub.start)
                results = await asyncio.wait_for(asyncio.gather(*flying), 60)
                assert [r.count for r in results] == [1] * 40, results
                # Accepted while the hub is down, then the sending host stops.
                await asyncio.to_thread(hub.kill)
                parked = [
                    asyncio.create_task(a.send("bob", "jobs", 0x2, b"left %d" % i, timeout=60))
                    for i in range(10)
                ]
                for _ in range(100):
                    if spooled(admin) >= 10:
                        break
                    await asyncio.sleep(0.05)
            assert all(t.cancelled() for t in parked)
            assert spooled(admin) == 10
            await asyncio.to_thread(hub.start)
            # The next run of the sending host sends what the last one left.
            async with msg_host(admin) as a2:
                await taker.wait(1 + 40 + 10, timeout=60)
                assert a2.counters()["resent"] >= 10
                for _ in range(100):
                    if spooled(admin) == 0:
                        break
                    await asyncio.sleep(0.05)
                assert spooled(admin) == 0
            bodies = [d.body for d in taker.got]
            expected = [b"warm"] + [b"fly %d" % i for i in range(40)]
            expected += [b"left %d" % i for i in range(10)]
            assert sorted(bodies) == sorted(expected)  # each exactly once
            assert len({d.id for d in taker.got}) == len(expected)
            taker.stop()
    finally:
        hub.stop()
