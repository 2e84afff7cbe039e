"""The hub's relay adapter (freight.hub.relay.Router) in one process: fake
channels and a fake database, the switch and the bus real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from freight.hub.observe import EventLog, Metrics
from freight.hub.relay import Attachment, Router
from freight.hub.streams import User
from freight.protocol import messages as m
from freight.protocol.relaycodes import HangupCode, RefusalCode
from freight.store.rows import UserRow

USERS = {"alice": User(1, "alice", "user"), "bob": User(2, "bob", "user")}


def _row(u: User) -> UserRow:
    return UserRow(
        id=u.id, name=u.name, pw_hash="", role=u.role, disabled=False, created=0.0, quota=0
    )


class FakeDb:
    async def user_by_name(self, name: str) -> UserRow | None:
        u = USERS.get(name)
        return None if u is None else _row(u)

    async def user_by_id(self, user_id: int) -> UserRow | None:
        u = next((u for u in USERS.values() if u.id == user_id), None)
        return None if u is None else _row(u)

    async def identity_keys(self, user_id: int) -> list[str]:
        return []

    async def add_event(self, kind: str, actor: str, detail: Any) -> None:
        pass


class Chan:
    """Records what the hub sends; can be made to block (a slow client)."""

    def __init__(self) -> None:
        self.sent: list[tuple[m.Message, bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        await self.gate.wait()
        self.sent.append((msg, payload))

    async def aclose(self) -> None:
        pass

    def of(self, kind: type[m.Message]) -> list[Any]:
        return [msg for msg, _ in self.sent if isinstance(msg, kind)]


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    db = FakeDb()
    r = Router(db, EventLog(db), Metrics(), 64 * 1024)  # type: ignore[arg-type]
    yield r
    for att in list(r.attachments):
        r.detach(att)
    await r.aclose()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def linked_pair(r: Router) -> tuple[Attachment, Chan, Attachment, Chan]:
    ca, cb = Chan(), Chan()
    a = r.attach(USERS["alice"], ca, "ws")
    b = r.attach(USERS["bob"], cb, "ws")
    await r.handle(b, m.Listen(rid="r1", app="chat"), b"")
    await r.handle(a, m.Dial(rid="r2", cid="c1", peer="bob", app="chat"), b"")
    await settle()
    assert [x.cid for x in ca.of(m.Linked)] == ["c1"] and [x.cid for x in cb.of(m.Linked)] == ["c1"]
    return a, ca, b, cb


async def test_a_dial_meets_a_listener_and_records_cross(router: Router) -> None:
    a, _ca, b, cb = await linked_pair(router)
    await router.handle(a, m.Relay(cid="c1", kind="d", seq=0, len=5), b"hello")
    await settle()
    assert cb.sent[-1] == (m.Relay(cid="c1", kind="d", seq=0, len=5), b"hello")
    assert router.conns["c1"].relayed["dial"] == 5
    assert b.queued == 0 and router.conns["c1"].queued["accept"] == 0


async def test_refusals_carry_codes(router: Router) -> None:
    ca = Chan()
    a = router.attach(USERS["alice"], ca, "ws")
    await router.handle(a, m.Dial(rid="r1", cid="c1", peer="alice", app="x"), b"")
    await router.handle(a, m.Dial(rid="r2", cid="c2", peer="nobody", app="x"), b"")
    await router.handle(a, m.Listen(rid="r3", app="code:7"), b"")
    await settle()
    assert [e.code for e in ca.of(m.Error)] == [
        RefusalCode.SELF_CONNECT,
        RefusalCode.UNKNOWN_USER,
        RefusalCode.USAGE,
    ]


async def test_a_slow_reader_pauses_its_sender_and_resumes_it(router: Router) -> None:
    a, ca, b, cb = await linked_pair(router)
    cb.gate.clear()  # bob's client stops reading
    for seq in range(6):
        await router.handle(a, m.Relay(cid="c1", kind="d", seq=seq, len=16384), b"x" * 16384)
    await settle()
    assert [p.cid for p in ca.of(m.Pause)] == ["c1"]
    cb.gate.set()
    await settle()
    assert [p.cid for p in ca.of(m.Resume)] == ["c1"]
    assert b.queued == 0


async def test_a_hangup_reaches_the_other_end_and_is_remembered(router: Router) -> None:
    _a, ca, b, _cb = await linked_pair(router)
    await router.handle(b, m.Hangup(cid="c1", code="closed", message="bye"), b"")
    await settle()
    assert [(h.code, h.by) for h in ca.of(m.Hangup)] == [("closed", "peer")]
    assert "c1" not in router.conns and router.ended["c1"][0] == "closed"
    assert router.kill("c1", "admin") is False


async def test_an_admin_kill_ends_both_ends(router: Router) -> None:
    _a, ca, _b, cb = await linked_pair(router)
    assert router.kill("c1", "root")
    await settle()
    for chan in (ca, cb):
        assert [h.code for h in chan.of(m.Hangup)] == [HangupCode.KILLED]


async def test_a_detached_end_drops_records_and_relinks(router: Router) -> None:
    a, ca, b, _cb = await linked_pair(router)
    router.detach(b)
    await router.handle(a, m.Relay(cid="c1", kind="d", seq=0, len=3), b"abc")
    assert router.conns["c1"].relayed["dial"] == 3  # counted, dropped
    cb2 = Chan()
    b2 = router.attach(USERS["bob"], cb2, "ws")
    await router.handle(
        b2, m.Dial(rid="r9", cid="c1", peer="alice", app="chat", role="accept", rejoin=True), b""
    )
    await settle()
    (again,) = cb2.of(m.Linked)
    assert again.rejoined
    assert [x.rejoined for x in ca.of(m.Linked)] == [False, True]


async def test_a_connection_owns_its_background_work(router: Router) -> None:
    """The Linked announcement runs in the connection's own supervisor: an
    end before it finished cancels it, and only then is the end recorded."""
    gate = asyncio.Event()
    events: list[str] = []

    async def slow_keys(user_id: int) -> list[str]:
        await gate.wait()
        return []

    async def add_event(kind: str, actor: str, detail: Any) -> None:
        events.append(kind)

    router.db.identity_keys = slow_keys
    router.db.add_event = add_event
    ca, cb = Chan(), Chan()
    a = router.attach(USERS["alice"], ca, "ws")
    b = router.attach(USERS["bob"], cb, "ws")
    await router.handle(b, m.Listen(rid="r1", app="chat"), b"")
    await router.handle(a, m.Dial(rid="r2", cid="c1", peer="bob", app="chat"), b"")
    await settle()
    conn = router.conns["c1"]
    assert len(conn.tasks) == 1 and len(router.tasks) == 0  # announcing, on its own
    assert router.kill("c1", "root")
    await settle()
    assert len(conn.tasks) == 0 and not ca.of(m.Linked) and not cb.of(m.Linked)
    assert events == ["connection_closed"]
    gate.set()


class BatchingChan(Chan):
    """A channel that writes several frames per message (``send_many``),
    its writes logged in one list shared with the lane beside it."""

    batching = True

    def __init__(self, log: list[tuple[str, m.Message]], name: str) -> None:
        super().__init__()
        self.log = log
        self.name = name

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        await super().send(msg, payload)
        self.log.append((self.name, msg))

    async def send_many(self, frames: list[tuple[m.Message, bytes]]) -> None:
        for msg, payload in frames:
            await self.send(msg, payload)


async def test_records_on_the_lane_and_control_frames_leave_in_the_order_queued(
    router: Router,
) -> None:
    """A batched run of control frames never jumps ahead of a record queued
    before it for the lane, nor a record behind it: the hub writes what it
    queued for one attachment in queue order, whichever way each frame goes."""
    writes: list[tuple[str, m.Message]] = []
    a, _ca, b, _cb = await linked_pair(router)
    b.chan = BatchingChan(writes, "chan")
    b.lane = BatchingChan(writes, "lane")
    b.lane.gate.clear()  # the lane is slow: frames pile up behind the first record
    queued: list[m.Message] = []
    for seq in range(3):
        record = m.Relay(cid="c1", kind="d", seq=seq, len=1)
        await router.handle(a, record, b"x")
        queued.append(record)
        grant = m.TicketGrant(rid=f"t{seq}", ticket="00", secret="00", expires_in=60)
        b.post(grant)
        queued.append(grant)
    await router.handle(a, m.Hangup(cid="c1", code="closed", message="bye"), b"")
    await settle()
    b.lane.gate.set()
    await settle()
    assert [msg for _, msg in writes][: len(queued)] == queued
    assert [where for where, _ in writes][: len(queued)] == ["lane", "chan"] * 3
    assert isinstance(writes[-1][1], m.Hangup) and writes[-1][0] == "chan"
