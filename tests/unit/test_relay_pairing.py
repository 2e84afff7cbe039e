"""The hub's relay pairing (freight.protocol.pairing), fed inputs alone:
every refusal with its code and text, the dials that wait and link, the
connections replaced, ended, remembered and timed out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from freight.protocol import messages as m
from freight.protocol.e2e import ACCEPT, DIAL
from freight.protocol.errors import LocalProtocolError
from freight.protocol.pairacts import (
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


ALICE, BOB, CAROL = User(1, "alice"), User(2, "bob"), User(3, "carol")
USERS = {u.name: u for u in (ALICE, BOB, CAROL)}


def new_pair(
    cid: str, app: str, users: dict[str, Party], owner: int, rejoin: bool, nameplate: str
) -> Pair:
    return Pair(cid, app, users, owner=owner, linked_once=rejoin, nameplate=nameplate)


def machine(**limits: int) -> Pairing[Seat, Pair]:
    return Pairing(Switch(64 * 1024), new_pair, **limits)


def dial(
    p: Pairing[Seat, Pair],
    seat: Seat,
    cid: str,
    peer: str,
    app: str = "chat",
    **kw: object,
) -> list[object]:
    """A dial as the adapter makes it: look the peer up when asked."""
    msg = m.Dial(rid="r-" + cid, cid=cid, peer=peer, app=app, **kw)  # type: ignore[arg-type]
    acts = p.dial(seat, msg)
    if acts and isinstance(acts[0], ResolvePeer):
        acts = p.dial(seat, msg, USERS[peer])
    return list(acts)


def listen(p: Pairing[Seat, Pair], seat: Seat, app: str = "chat", peer: str = "*") -> list[object]:
    return list(p.listen(seat, m.Listen(rid="l-" + app, app=app, peer=peer)))


def linked(p: Pairing[Seat, Pair], cid: str = "c1") -> tuple[Pair, Seat, Seat]:
    a, b = Seat(ALICE), Seat(BOB)
    assert listen(p, b) == [Done("l-chat")]
    acts = dial(p, a, cid, "bob")
    conn = p.conns[cid]
    assert acts == [Ready(conn)]
    assert p.linked(conn) is False
    return conn, a, b


def test_self_connect_is_refused() -> None:
    p = machine()
    assert dial(p, Seat(ALICE), "c1", "alice") == [
        Refuse(RefusalCode.SELF_CONNECT, "you cannot connect to yourself")
    ]
    assert not p.conns


def test_usage_errors() -> None:
    p = machine()
    a = Seat(ALICE)
    assert listen(p, a, "code:7") == [
        Refuse(RefusalCode.USAGE, "code:… applications are for send/receive only")
    ]
    assert dial(p, a, "c1", "bob", role=ACCEPT) == [
        Refuse(RefusalCode.USAGE, "only a rejoin may name the accepting end")
    ]
    assert dial(p, a, "c2", "bob", app="code:7") == [
        Refuse(RefusalCode.USAGE, "connect to a code with claim, not dial")
    ]
    # A rejoin of a code's connection the hub does not hold: the adapter checks the code.
    msg = m.Dial(rid="r", cid="c3", peer="bob", app="code:7", rejoin=True)
    assert p.dial(a, msg) == [RejoinCode("7")]
    assert not p.conns and not p.listeners


def test_the_peer_is_looked_up_only_when_needed() -> None:
    p = machine()
    a = Seat(ALICE)
    msg = m.Dial(rid="r1", cid="c1", peer="bob", app="chat")
    assert p.dial(a, msg) == [ResolvePeer("bob")]
    assert not p.conns  # nothing decided before the answer
    assert p.dial(a, msg, BOB) == [Waiting("r1", "c1")]
    assert p.held == {1: 1}


def test_a_waiting_dial_links_when_its_listener_appears() -> None:
    p = machine()
    a, b = Seat(ALICE), Seat(BOB)
    assert dial(p, a, "c1", "bob") == [Waiting("r-c1", "c1")]
    assert listen(p, b, peer="carol") == [Done("l-chat")]  # not for alice
    assert p.conns["c1"].ends[ACCEPT] is None
    assert listen(p, Seat(BOB), "other") == [Done("l-other")]
    p.unlisten(b, m.Unlisten(rid="u", app="chat"))
    acts = listen(p, b)
    conn = p.conns["c1"]
    assert acts == [Done("l-chat"), Ready(conn)]
    assert conn.ends[DIAL] is a and conn.ends[ACCEPT] is b
    assert b.ends == {"c1": ACCEPT} and a.ends == {"c1": DIAL}
    assert p.linked(conn) is False and conn.state is LinkState.LINKED
    assert not p.waiting


def test_conflicts() -> None:
    p = machine()
    _conn, a, b = linked(p)
    # The connection id belongs to alice and bob.
    assert dial(p, Seat(CAROL), "c1", "bob") == [
        Refuse(RefusalCode.CONFLICT, "connection c1 belongs to someone else")
    ]
    # Bob listens for chat on a live attachment already.
    assert listen(p, Seat(BOB)) == [
        Refuse(RefusalCode.CONFLICT, "you already listen for 'chat' elsewhere; stop that one first")
    ]
    # Alice is still on her connection to bob's chat.
    assert dial(p, a, "c2", "bob") == [
        Refuse(RefusalCode.CONFLICT, "a connection from you to bob/chat already exists")
    ]
    assert list(p.conns) == ["c1"]
    # A closed listener gives way to a new one.
    b.closed = True
    b2 = Seat(BOB)
    assert listen(p, b2) == [Done("l-chat")]
    assert p.listeners[("bob", "chat")][0] is b2 and "chat" not in b.apps
    assert p.listening == {"bob": 1}


def test_a_new_dial_replaces_a_connection_its_dialler_left() -> None:
    p = machine()
    conn, a, b = linked(p)
    assert p.detach(a, 10.0) == []
    assert conn.state is LinkState.HALF
    a2 = Seat(ALICE)
    acts = dial(p, a2, "c2", "bob")
    new = p.conns["c2"]
    assert acts == [
        Ended(conn, HangupCode.REPLACED, "replaced by a new connection", "hub"),
        Hangup(b, "c1", HangupCode.REPLACED, "replaced by a new connection", "hub"),
        Ready(new),
    ]
    assert "c1" not in p.conns and p.ended["c1"].code == HangupCode.REPLACED
    assert p.held == {1: 1} and b.ends == {"c2": ACCEPT}


def test_listen_limit() -> None:
    p = machine(max_listens=2)
    b = Seat(BOB)
    assert listen(p, b, "a") == [Done("l-a")]
    assert listen(p, b, "b") == [Done("l-b")]
    assert listen(p, b, "a") == [Done("l-a")]  # again: no new listen
    assert listen(p, b, "c") == [
        Refuse(
            RefusalCode.LIMIT_REACHED,
            "you listen for 2 applications already (the hub's limit); stop one first",
        )
    ]
    assert listen(p, Seat(ALICE), "c") == [Done("l-c")]  # per account
    p.unlisten(b, m.Unlisten(rid="u", app="a"))
    assert listen(p, b, "c") == [Done("l-c")]
    assert p.listening == {"bob": 2, "alice": 1}


def test_connection_limit() -> None:
    p = machine(max_conns=2)
    a = Seat(ALICE)
    assert dial(p, a, "c1", "bob", app="x") == [Waiting("r-c1", "c1")]
    assert dial(p, a, "c2", "bob", app="y") == [Waiting("r-c2", "c2")]
    full = [
        Refuse(
            RefusalCode.LIMIT_REACHED,
            "you have 2 relayed connections open (the hub's limit); close some first",
        )
    ]
    assert dial(p, a, "c3", "bob", app="z") == full
    assert dial(p, a, "c3", "carol", app="z", role=ACCEPT, rejoin=True) == full
    # Bob's connections are his own count.
    assert dial(p, Seat(BOB), "c4", "alice", app="z") == [Waiting("r-c4", "c4")]
    p.hangup(a, m.Hangup(cid="c1"))
    assert dial(p, a, "c3", "bob", app="z") == [Waiting("r-c3", "c3")]
    assert p.held == {1: 2, 2: 1}


def test_a_hangup_reaches_the_other_end_and_a_late_rejoin_hears_it() -> None:
    p = machine()
    conn, a, b = linked(p)
    p.detach(b, 5.0)
    acts = p.hangup(a, m.Hangup(cid="c1", code="closed", message="bye"))
    assert acts == [Ended(conn, "closed", "bye", "peer")]  # bob is away: nobody to tell
    assert conn.state is LinkState.ENDED and not a.ends
    b2 = Seat(BOB)
    assert dial(p, b2, "c1", "alice", role=ACCEPT, rejoin=True) == [
        Hangup(b2, "c1", "closed", "bye", "peer")
    ]
    # Someone else naming that id is not told how it ended.
    msg = m.Dial(rid="r", cid="c1", peer="alice", app="chat", rejoin=True)
    assert p.dial(Seat(CAROL), msg) == [ResolvePeer("alice")]
    assert p.linked(conn) is None


def test_both_ends_rejoin_after_a_restart() -> None:
    p = machine()
    a, b = Seat(ALICE), Seat(BOB)
    assert dial(p, b, "c1", "alice", role=ACCEPT, rejoin=True) == [Waiting("r-c1", "c1")]
    conn = p.conns["c1"]
    assert dial(p, a, "c1", "bob", rejoin=True) == [Ready(conn)]
    assert conn.rids == {ACCEPT: "r-c1", DIAL: "r-c1"}
    assert p.linked(conn) is True  # rejoined


def test_an_end_that_stays_away_times_out() -> None:
    p = machine()
    conn, a, b = linked(p)
    assert p.next_deadline() is None
    p.detach(b, 100.0)
    grace = p.switch.grace
    assert p.next_deadline() == 100.0 + grace
    assert p.handle_timer(100.0 + grace) == []
    assert p.handle_timer(100.0 + grace + 1) == [
        Ended(conn, HangupCode.PEER_GONE, "the other end did not come back", "hub"),
        Hangup(a, "c1", HangupCode.PEER_GONE, "the other end did not come back", "hub"),
    ]
    assert p.next_deadline() is None and not p.conns and not p.held


def test_a_returning_end_clears_its_deadline() -> None:
    p = machine()
    conn, _a, b = linked(p)
    p.detach(b, 100.0)
    b2 = Seat(BOB)
    assert dial(p, b2, "c1", "alice", role=ACCEPT, rejoin=True) == [Ready(conn)]
    assert p.linked(conn) is True
    assert p.handle_timer(100.0 + p.switch.grace + 1) == []
    assert p.next_deadline() is None and "c1" in p.conns


def test_a_dial_whose_dialler_left_before_linking_is_forgotten() -> None:
    p = machine()
    a = Seat(ALICE)
    dial(p, a, "c1", "bob")
    assert p.detach(a, 1.0) == []
    assert not p.conns and not p.held and not p.waiting and not p.pairs and not p.ended


def test_detach_stops_listens_and_offers() -> None:
    p = machine()
    b = Seat(BOB)
    listen(p, b, "x")
    listen(p, b, "y")
    p.offer(b, "o", "42", 99.0)
    p.detach(b, 1.0)
    assert not p.listeners and not p.listening and p.offers["42"].seat is None
    # An offer nobody serves is forgotten once expired.
    p.handle_timer(50.0)
    assert "42" in p.offers
    p.handle_timer(100.0)
    assert not p.offers


def test_an_unknown_role_is_a_protocol_error() -> None:
    p = machine()
    msg = m.Dial(rid="r", cid="c1", peer="bob", app="chat", role="sideways")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        p.dial(Seat(ALICE), msg)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        machine(max_conns=0)


# --- codes -------------------------------------------------------------------------


def test_a_claim_meets_its_offer() -> None:
    p = machine()
    s, r = Seat(ALICE), Seat(BOB)
    assert p.offer(s, "o1", "42", 500.0) == [Granted("o1", "42", 500.0)]
    assert p.claim_check(r, "42") == []
    acts = p.claim(r, m.Claim(rid="k1", cid="c1", nameplate="42"), ALICE, 500.0)
    conn = p.conns["c1"]
    assert acts == [Ready(conn)]
    assert conn.users == {DIAL: BOB, ACCEPT: ALICE} and conn.owner == BOB.id
    assert p.coded == {"42": conn}
    # Another receiver while bob is on it.
    assert p.claim_check(Seat(CAROL), "42") == [
        Refuse(RefusalCode.CONFLICT, "someone else is receiving with this code right now")
    ]
    # The sender's process starts again while the receiver is there: kept.
    assert p.offer(Seat(ALICE), "o2", "42", 500.0) == [Granted("o2", "42", 500.0)]
    assert "c1" in p.conns


def test_a_claim_before_the_offer_waits_and_restarts_replace() -> None:
    p = machine()
    r = Seat(BOB)
    acts = p.claim(r, m.Claim(rid="k1", cid="c1", nameplate="42"), ALICE, 500.0)
    assert acts == [Waiting("k1", "c1")]
    old = p.conns["c1"]
    # Another receiver's attachment while bob's is on it.
    assert p.claim(Seat(CAROL), m.Claim(rid="k", cid="cx", nameplate="42"), ALICE, 1.0) == [
        Refuse(RefusalCode.CONFLICT, "someone else is receiving with this code right now")
    ]
    # The receiver claims again: its old connection ends.
    acts = p.claim(r, m.Claim(rid="k2", cid="c2", nameplate="42"), ALICE, 500.0)
    restarted = "the receiver started again"
    assert acts == [
        Ended(old, HangupCode.RECEIVER_RESTARTED, restarted, "hub"),
        Hangup(r, "c1", HangupCode.RECEIVER_RESTARTED, restarted, "hub"),
        Waiting("k2", "c2"),
    ]
    new = p.conns["c2"]
    # The sender offers (again: the claim made the offer) while nobody
    # accepts: the receiver's connection cannot come back.
    s = Seat(ALICE)
    again = "the sender started again"
    assert p.offer(s, "o", "42", 500.0) == [
        Ended(new, HangupCode.SENDER_RESTARTED, again, "hub"),
        Hangup(r, "c2", HangupCode.SENDER_RESTARTED, again, "hub"),
        Granted("o", "42", 500.0),
    ]
    acts = p.claim(r, m.Claim(rid="k3", cid="c3", nameplate="42"), ALICE, 500.0)
    assert acts == [Ready(p.conns["c3"])]
    assert p.held == {BOB.id: 1} and not r.ends.keys() - {"c3"}


def test_code_rejoin_and_burn() -> None:
    p = machine()
    s, r = Seat(ALICE), Seat(BOB)
    msg = m.Dial(rid="j", cid="c1", peer="alice", app="code:42", rejoin=True)
    assert p.rejoin_code(r, msg, ALICE, BOB) == [Waiting("j", "c1")]
    conn = p.conns["c1"]
    assert conn.linked_once and conn.owner == BOB.id
    back = m.Dial(rid="j2", cid="c1", peer="bob", app="code:42", role=ACCEPT, rejoin=True)
    assert p.dial(s, back) == [Ready(conn)]
    assert p.linked(conn) is True
    p.offer(s, "o", "42", 500.0)
    assert p.detach(r, 2.0) == [Away(conn)]
    offered, acts = p.burn("42", "burned")
    assert offered is s and "42" not in s.offers
    assert acts == [
        Ended(conn, HangupCode.CODE_BURNED, "burned", "hub"),
        Hangup(s, "c1", HangupCode.CODE_BURNED, "burned", "hub"),
    ]
    assert not p.offers and not p.coded


def test_the_ended_memory_is_bounded() -> None:
    p = machine(remembered=3)
    a = Seat(ALICE)
    for i in range(10):
        dial(p, a, f"c{i}", "bob", app=f"a{i}")
        p.end(p.conns[f"c{i}"], HangupCode.KILLED, "ended by admin root", "admin")
    assert list(p.ended) == ["c7", "c8", "c9"]
    assert p.end(Pair("c9", "x", {}), "killed", "", "admin") == []  # not held: nothing
