"""The relay pairing driven by random input sequences: whatever clients ask
in whatever order, only typed protocol errors escape and the tables stay
consistent and bounded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from freight.protocol import messages as m
from freight.protocol.e2e import ACCEPT, DIAL
from freight.protocol.errors import LocalProtocolError
from freight.protocol.pairacts import (
    Action,
    Away,
    Done,
    Ended,
    Granted,
    Hangup,
    Pair,
    Party,
    Ready,
    Refuse,
    RejoinCode,
    ResolvePeer,
    Seat,
    Waiting,
)
from freight.protocol.pairing import Pairing
from freight.protocol.relaycodes import HangupCode, RefusalCode
from freight.protocol.switch import LinkState, Switch


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str = "user"


USERS = {u.name: u for u in (User(1, "alice"), User(2, "bob"), User(3, "carol"))}


def new_pair(
    cid: str, app: str, users: dict[str, Party], owner: int, rejoin: bool, nameplate: str
) -> Pair:
    return Pair(cid, app, users, owner=owner, linked_once=rejoin, nameplate=nameplate)


MAX_CONNS, MAX_LISTENS, REMEMBERED = 3, 2, 5
NAMES = sorted(USERS)
CIDS = [f"c{i}" for i in range(6)]
APPS = ["chat", "files", "code:7", "code:8"]
KNOWN = (Refuse, Done, Granted, Waiting, Ready, Hangup, Ended, Away, ResolvePeer, RejoinCode)


class PairingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.p: Pairing[Seat, Pair] = Pairing(
            Switch(64 * 1024),
            new_pair,
            max_conns=MAX_CONNS,
            max_listens=MAX_LISTENS,
            remembered=REMEMBERED,
        )
        self.seats: list[Seat] = []
        self.now = 0.0

    def check(self, acts: list[Action]) -> list[Action]:
        for act in acts:
            assert isinstance(act, KNOWN), act
            if isinstance(act, Refuse):
                assert isinstance(act.code, RefusalCode) and act.message
                assert len(acts) == 1  # a refusal changes nothing else
            if isinstance(act, Ready):
                assert act.conn.complete()
                self.p.linked(act.conn)  # the adapter announces it
            if isinstance(act, Ended):
                assert act.conn.state is LinkState.ENDED and act.conn.cid not in self.p.conns
        return acts

    def seat(self, i: int) -> Seat | None:
        live = [s for s in self.seats if not s.closed]
        return live[i % len(live)] if live else None

    @rule(name=st.sampled_from(NAMES))
    def attach(self, name: str) -> None:
        if len(self.seats) < 12:
            self.seats.append(Seat(USERS[name]))

    @rule(i=st.integers(0, 20), dt=st.floats(0, 3000))
    def detach(self, i: int, dt: float) -> None:
        seat = self.seat(i)
        if seat is not None:
            self.now += dt
            seat.closed = True
            self.check(self.p.detach(seat, self.now))
            assert not seat.ends and not seat.apps

    @rule(i=st.integers(0, 20), app=st.sampled_from(APPS), peer=st.sampled_from(["*", *NAMES]))
    def listen(self, i: int, app: str, peer: str) -> None:
        seat = self.seat(i)
        if seat is not None:
            self.check(self.p.listen(seat, m.Listen(rid="l", app=app, peer=peer)))

    @rule(i=st.integers(0, 20), app=st.sampled_from(APPS))
    def unlisten(self, i: int, app: str) -> None:
        seat = self.seat(i)
        if seat is not None:
            assert self.check(self.p.unlisten(seat, m.Unlisten(rid="u", app=app))) == [Done("u")]

    @rule(
        i=st.integers(0, 20),
        cid=st.sampled_from(CIDS),
        peer=st.sampled_from(NAMES),
        app=st.sampled_from(APPS),
        role=st.sampled_from([DIAL, ACCEPT, ACCEPT, "bogus"]),
        rejoin=st.booleans(),
    )
    def dial(self, i: int, cid: str, peer: str, app: str, role: str, rejoin: bool) -> None:
        seat = self.seat(i)
        if seat is None:
            return
        msg = m.Dial(rid="d", cid=cid, peer=peer, app=app, role=role, rejoin=rejoin)  # type: ignore[arg-type]
        try:
            acts = self.check(self.p.dial(seat, msg))
            if acts and isinstance(acts[0], ResolvePeer):
                self.check(self.p.dial(seat, msg, USERS[peer]))
            elif acts and isinstance(acts[0], RejoinCode):
                sender, claimant = USERS[peer], seat.user
                if role == ACCEPT:
                    sender, claimant = claimant, sender
                self.check(self.p.rejoin_code(seat, msg, sender, claimant))
        except LocalProtocolError:
            assert role == "bogus"

    @rule(i=st.integers(0, 20), nameplate=st.sampled_from(["7", "8"]))
    def offer(self, i: int, nameplate: str) -> None:
        seat = self.seat(i)
        if seat is not None:
            self.check(self.p.offer(seat, "o", nameplate, self.now + 600))

    @rule(
        i=st.integers(0, 20),
        cid=st.sampled_from(CIDS),
        nameplate=st.sampled_from(["7", "8"]),
        sender=st.sampled_from(NAMES),
    )
    def claim(self, i: int, cid: str, nameplate: str, sender: str) -> None:
        seat = self.seat(i)
        if seat is None:
            return
        first = self.check(self.p.claim_check(seat, nameplate))
        if (first and isinstance(first[0], Refuse)) or cid in self.p.conns:
            return  # the adapter answers, or the id is taken (checked by the codec's ids)
        msg = m.Claim(rid="k", cid=cid, nameplate=nameplate)
        self.check(self.p.claim(seat, msg, USERS[sender], self.now + 600))

    @rule(nameplate=st.sampled_from(["7", "8"]))
    def burn(self, nameplate: str) -> None:
        _, acts = self.p.burn(nameplate, "burned")
        self.check(acts)

    @rule(i=st.integers(0, 20), cid=st.sampled_from(CIDS))
    def hangup(self, i: int, cid: str) -> None:
        seat = self.seat(i)
        if seat is not None:
            self.check(self.p.hangup(seat, m.Hangup(cid=cid, code="closed")))

    @precondition(lambda self: bool(self.p.conns))
    @rule(k=st.integers(0, 20))
    def kill(self, k: int) -> None:
        conn = list(self.p.conns.values())[k % len(self.p.conns)]
        self.check(self.p.end(conn, HangupCode.KILLED, "ended by admin root", "admin"))

    @rule(dt=st.floats(0, 5000))
    def timer(self, dt: float) -> None:
        self.now += dt
        deadline = self.p.next_deadline()
        self.check(self.p.handle_timer(self.now))
        after = self.p.next_deadline()
        assert after is None or after >= self.now or (deadline is not None and after >= deadline)

    @invariant()
    def tables_agree(self) -> None:
        p = self.p
        # At most one listener per (user, application), counted per user.
        assert Counter(u for u, _ in p.listeners) == Counter(p.listening)
        assert all(n <= MAX_LISTENS for n in p.listening.values())
        for (user, app), (seat, _) in p.listeners.items():
            assert seat.user.name == user and app in seat.apps and not app.startswith("code:")
        # Per-account counts are the table's.
        assert Counter(c.owner for c in p.conns.values()) == Counter(p.held)
        assert all(n <= MAX_CONNS for n in p.held.values())
        assert len(p.ended) <= REMEMBERED
        # Indexes hold live connections only.
        for index in (p.waiting, p.pairs):
            for group in index.values():
                assert group and all(p.conns.get(cid) is c for cid, c in group.items())
        assert all(p.conns.get(cid) is c for cid, c in p.away.items())
        assert all(p.conns.get(c.cid) is c and c.nameplate == n for n, c in p.coded.items())
        # Each seat knows the ends it holds, and only those.
        for cid, conn in p.conns.items():
            assert conn.state is not LinkState.ENDED
            for role in (DIAL, ACCEPT):
                seat = conn.ends[role]
                if seat is not None:
                    assert seat.ends.get(cid) == role
        for seat in self.seats:
            for cid, role in seat.ends.items():
                assert p.conns[cid].ends[role] is seat


PairingMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPairingRandomly = PairingMachine.TestCase
