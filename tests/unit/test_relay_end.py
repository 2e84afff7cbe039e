"""The relay endpoint machine (freight.protocol.relayend), two ends wired by
hand: no hub, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol.e2e import ACCEPT, DIAL, CodeHandshake, FlowViolation
from freight.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from freight.protocol.relayend import (
    ACK_BYTES,
    KIND_ACK,
    KIND_DATA,
    KIND_HANDSHAKE,
    EndState,
    Out,
    RelayEnd,
)

CODE = "7-crossbow-gazelle-tulip"
KiB = 1024


def handshake(role: str) -> CodeHandshake:
    return CodeHandshake(CODE, role, b"code:7")


def pair(window: int = 64 * KiB) -> tuple[RelayEnd, RelayEnd]:
    """Two ends linked and established."""
    a, b = RelayEnd("c1", DIAL, window), RelayEnd("c1", ACCEPT, window)
    to_b = a.linked(handshake(DIAL))
    to_a = b.linked(handshake(ACCEPT))
    for _ in range(4):
        nxt_a: list[Out] = []
        nxt_b: list[Out] = []
        for _, _, data in to_b:
            if b.receive_handshake(data):
                nxt_a += b.take_handshake()
                b.establish()
            else:
                nxt_a += b.take_handshake()
        for _, _, data in to_a:
            if a.receive_handshake(data):
                nxt_b += a.take_handshake()
                a.establish()
            else:
                nxt_b += a.take_handshake()
        to_a, to_b = nxt_a, nxt_b
    assert a.state is EndState.OPEN and b.state is EndState.OPEN
    return a, b


def deliver(to: RelayEnd, records: list[Out] | tuple[Out, ...]) -> list[Out]:
    back: list[Out] = []
    for kind, seq, data in records:
        back += to.receive(kind, seq, data)
    return back


def test_messages_flow_and_acks_return_credit() -> None:
    a, b = pair()
    assert a.can_send(10)
    rec = a.send(b"hello")
    assert rec[0] == KIND_DATA and rec[1] == 0
    assert deliver(b, [rec]) == []
    assert b.take() == b"hello" and b.take() is None
    assert b.ack_owed() and not b.ack_due()  # a small message's ack may wait
    assert a.unacked == 1
    assert deliver(a, [b.ack()]) == []
    assert a.unacked == 0


def test_small_messages_share_one_ack_and_a_large_one_is_acked_at_once() -> None:
    """Like TCP's delayed ack: an ack for a few small messages waits (one ack
    then covers all of them); once ACK_BYTES were taken it goes at once, and
    the end of stream is acknowledged at once."""
    a, b = pair(window=16 * 1024 * KiB)
    for n in range(100):
        deliver(b, [a.send(bytes(100))])
        assert b.take() == bytes(100)
        assert not b.ack_due(), n
    assert b.ack_owed() and a.unacked == 100
    deliver(a, [b.ack()])
    assert a.unacked == 0 and not b.ack_owed()
    deliver(b, [a.send(bytes(ACK_BYTES))])
    assert b.take() is not None and b.ack_due()
    deliver(a, [b.ack()])
    assert [k for k, _, _ in deliver(b, [a.send_eof()])] == [KIND_ACK]
    assert not b.ack_owed()


def test_a_small_window_is_acked_by_its_quarter() -> None:
    a, b = pair(window=8 * KiB)
    deliver(b, [a.send(bytes(2 * KiB))])
    assert b.take() is not None and b.ack_due()


def test_half_closes_each_way() -> None:
    a, b = pair()
    eof = a.send_eof()
    assert a.state is EndState.LOCAL_EOF and a.eof_sent
    with pytest.raises(LocalProtocolError):
        a.send(b"late")  # our side is closed
    assert a.state is EndState.ERROR
    a, b = pair()
    back = deliver(b, [a.send_eof()])
    assert b.eof_received and b.state is EndState.REMOTE_EOF
    assert [k for k, _, _ in back] == [KIND_ACK]
    deliver(a, [b.send(b"still talking")])  # the other way stays open
    assert a.take() == b"still talking"
    deliver(a, [b.send_eof()])
    assert a.state is EndState.DONE and b.state is EndState.DONE
    del eof


def test_a_record_after_the_peers_eof_is_a_protocol_error() -> None:
    a, b = pair()
    deliver(b, [a.send_eof()])
    a.state = EndState.OPEN  # a broken peer that goes on sending
    with pytest.raises(RemoteProtocolError):
        deliver(b, [a.send(b"after eof")])
    assert b.state is EndState.ERROR


def test_pause_and_resend_hold_new_records() -> None:
    a, _b = pair()
    a.pause()
    assert not a.can_send(1)
    a.resume()
    first = a.send(b"one")
    out = a.linked(None)  # relinked: resend, then an ack
    assert out[0] == first and out[-1][0] == KIND_ACK
    assert a.resending and not a.can_send(1)
    a.resent()
    assert a.can_send(1)


def test_the_window_it_grants_is_enforced() -> None:
    a, b = pair(window=4 * KiB)
    deliver(b, [a.send(b"x" * (3 * KiB))])
    with pytest.raises(FlowViolation):  # the application took nothing
        deliver(b, [a._seal("send", b"\x00" + b"y" * (2 * KiB))])
    assert b.state is EndState.ERROR and not b.inbox


def test_a_gap_is_reported_once_and_resent() -> None:
    a, b = pair()
    lost = a.send(b"lost")
    second = a.send(b"second")
    back = deliver(b, [second])
    assert len(back) == 1 and back[0][0] == KIND_ACK
    assert deliver(b, [second]) == []  # the same gap is not reported twice
    resend = deliver(a, back)
    assert resend == [lost, second] and a.resending
    a.resent()
    deliver(b, resend)
    assert b.take() == b"lost" and b.take() == b"second"


def test_a_closed_end_emits_nothing() -> None:
    a, b = pair()
    rec = a.send(b"late")
    b.close()
    assert b.closed
    assert deliver(b, [rec]) == []
    assert b.take() is None
    assert not b.can_send(1)
    assert not b.receive_handshake(b"junk")


def test_handshake_restart_mid_session_is_refused() -> None:
    _a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive_handshake(b"again")
    assert b.state is EndState.ERROR


def test_records_before_the_session_are_dropped() -> None:
    a = RelayEnd("c1", DIAL)
    assert a.receive(KIND_DATA, 0, b"x" * 32) == ()
    with pytest.raises(RemoteProtocolError):
        a.receive_handshake(b"x")  # before the link
    assert a.next_deadline() is None and a.handle_timer(0.0) == ()


def test_unknown_kind_is_an_error() -> None:
    _a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive("z", 0, b"")
    with pytest.raises(LocalProtocolError):
        b.receive(KIND_DATA, 0, b"")  # ERROR is sticky


# --- random event sequences ----------------------------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 6 * KiB)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("deliver"), st.integers(0, 3)),  # how many in flight to deliver
        st.tuples(st.just("drop"), st.just(0)),
        st.tuples(st.just("dup"), st.just(0)),
        st.tuples(st.just("ack"), st.just(0)),
        st.tuples(st.just("relink"), st.just(0)),
        st.tuples(st.just("pause"), st.booleans().map(int)),
        st.tuples(st.just("eof"), st.just(0)),
        st.tuples(st.just("close"), st.just(0)),
        st.tuples(st.just("junk"), st.binary(max_size=64).map(len)),
    ),
    max_size=80,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, st.binary(min_size=0, max_size=64))
def test_random_sequences_raise_only_protocol_errors(
    steps: list[tuple[str, int]], junk: bytes
) -> None:
    window = 8 * KiB
    a, b = pair(window)
    wire_ab: list[Out] = []  # a -> b, in flight
    wire_ba: list[Out] = []
    sent: list[bytes] = []
    got: list[bytes] = []
    try:
        for op, n in steps:
            if op == "send" and a.can_send(n + 1):
                data = bytes([len(sent) % 256]) * n
                sent.append(data)
                wire_ab.append(a.send(data))
            elif op == "take":
                data_or_none = b.take()
                if data_or_none is not None:
                    got.append(data_or_none)
                if (b.ack_due() or (n % 2 and b.ack_owed())) and not b.closed:
                    wire_ba.append(b.ack())  # an odd n: the delayed ack's time came
            elif op == "deliver":
                for _ in range(n):
                    if wire_ab:
                        wire_ba += b.receive(*wire_ab.pop(0))
                    if wire_ba:
                        out = a.receive(*wire_ba.pop(0))
                        wire_ab += out
                        if a.resending:
                            a.resent()
            elif op == "drop" and wire_ab:
                wire_ab.pop(0)
            elif op == "dup" and wire_ab:
                wire_ab.append(wire_ab[0])
            elif op == "ack" and not b.closed:
                wire_ba.append(b.ack())
            elif op == "relink" and not a.closed:
                wire_ab += a.linked(None)
                a.resent()
            elif op == "pause":
                a.pause() if n else a.resume()
            elif op == "eof" and a.state is EndState.OPEN and a.can_send(1):
                wire_ab.append(a.send_eof())
            elif op == "close":
                b.close()
            elif op == "junk":
                b.receive(KIND_DATA, n, junk)  # a forged record
            # Invariants: never more held than the window granted (one
            # record alone may exceed it), order kept, nothing after close.
            assert b.session is not None
            held = sum(len(x) for x in b.inbox)
            assert held <= window + 6 * KiB
            assert got + list(b.inbox) == sent[: len(got) + len(b.inbox)]
            if b.closed:
                assert b.receive(KIND_DATA, 0, b"") == () or b.state is EndState.ERROR
    except ProtocolError:
        assert a.state is EndState.ERROR or b.state is EndState.ERROR


def test_handshake_kind_constant() -> None:
    assert KIND_HANDSHAKE == "h"


def test_the_half_closes_are_remembered_after_the_hang_up() -> None:
    """A hang-up after the peer's end of stream must still read as that end
    (the application's recv() returns b"" rather than waiting forever)."""
    a, b = pair()
    deliver(b, [a.send_eof()])
    a.close()
    b.close()
    assert b.closed and b.eof_received and not b.eof_sent
    assert a.closed and a.eof_sent and not a.eof_received
