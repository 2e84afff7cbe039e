"""Tunnel datagrams (docs/protocol.md §19): the record framing fed bytes, and
the flow table's bounds, expiry and transitions, driven with a given clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.protocol.datagrams import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    DatagramDecoder,
    DatagramTooLarge,
    Flow,
    FlowLimits,
    FlowState,
    FlowTable,
    MalformedDatagram,
    encode,
)
from freight.protocol.errors import LocalProtocolError, RemoteProtocolError

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


# --- framing -----------------------------------------------------------------


def test_a_record_is_kind_length_payload() -> None:
    assert encode(b"hi") == b"\x00\x00\x02hi"
    assert encode(b"") == b"\x00\x00\x00"
    assert DatagramDecoder().feed(b"\x00\x00\x02hi\x00\x00\x00") == [b"hi", b""]


def test_records_split_anywhere_come_out_whole() -> None:
    wire = encode(b"abc") + encode(b"") + encode(b"x" * 300)
    for cut in range(len(wire) + 1):
        dec = DatagramDecoder()
        got = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert got == [b"abc", b"", b"x" * 300]
        assert dec.pending == 0


def test_an_unknown_kind_is_garbage_and_the_decoder_stays_failed() -> None:
    dec = DatagramDecoder()
    with pytest.raises(MalformedDatagram, match="kind 71"):
        dec.feed(b"GET / HTTP/1.1\r\n")
    assert isinstance(MalformedDatagram(), RemoteProtocolError)
    with pytest.raises(LocalProtocolError):
        dec.feed(encode(b"ok"))


def test_a_record_longer_than_the_limit_is_refused_before_its_payload() -> None:
    dec = DatagramDecoder(max_datagram=1200)
    with pytest.raises(DatagramTooLarge, match="1201 bytes"):
        dec.feed(b"\x00\x04\xb1")  # only the header: nothing is buffered for it
    assert issubclass(DatagramTooLarge, MalformedDatagram)


def test_a_stream_ending_inside_a_record_is_garbage() -> None:
    dec = DatagramDecoder()
    assert dec.feed(encode(b"hello")[:4]) == []
    with pytest.raises(MalformedDatagram, match="ended inside"):
        dec.end()
    clean = DatagramDecoder()
    clean.feed(encode(b"x"))
    clean.end()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=2000), max_size=20),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_datagrams_in_any_chunks_round_trip(datagrams: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(map(encode, datagrams))
    dec = DatagramDecoder(max_datagram=2000)
    got: list[bytes] = []
    for piece in chunks(wire, cuts):
        got += dec.feed(piece)
        assert dec.pending <= HEADER_SIZE + 2000
    assert got == datagrams
    dec.end()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4000), st.lists(st.integers(min_value=0), max_size=8))
def test_garbage_gives_datagrams_or_a_typed_error_and_stays_bounded(
    garbage: bytes, cuts: list[int]
) -> None:
    dec = DatagramDecoder(max_datagram=512)
    try:
        for piece in chunks(garbage, cuts):
            for datagram in dec.feed(piece):
                assert len(datagram) <= 512
            assert dec.pending <= HEADER_SIZE + 512
        dec.end()
    except MalformedDatagram:
        assert dec.failed


@pytest.mark.parametrize(
    ("wire", "datagrams", "error"),
    [
        ("00 00 02 68 69", [b"hi"], None),
        ("00 00 00", [b""], None),
        ("00 00 02 68 69 00 00 00", [b"hi", b""], None),
        ("00 00 02 68", [], MalformedDatagram),  # then the stream ends
        ("47 45 54 20", [], MalformedDatagram),
        ("00 ff f0", [], DatagramTooLarge),
    ],
)
def test_the_vectors_of_the_protocol_reference(
    wire: str, datagrams: list[bytes], error: type[Exception] | None
) -> None:
    """docs/protocol.md §19.5, row by row."""
    dec = DatagramDecoder()
    if error is None:
        assert dec.feed(bytes.fromhex(wire)) == datagrams
        dec.end()
        return
    with pytest.raises(error) as info:
        assert dec.feed(bytes.fromhex(wire)) == datagrams
        dec.end()
    assert type(info.value) is error


# --- flows -------------------------------------------------------------------


def test_a_new_source_opens_a_flow_and_its_queue_flows_once_open() -> None:
    table = FlowTable()
    flow, new = table.to_stream(A, b"one", 0.0)
    assert new and flow is not None and flow.state is FlowState.OPENING
    assert flow.take() == b""  # nothing leaves before the stream is open
    again, new = table.to_stream(A, b"two", 1.0)
    assert again is flow and not new
    flow.opened()
    assert flow.take() == encode(b"one") + encode(b"two")
    assert flow.take() == b"" and table.queued == 0
    assert flow.from_stream(encode(b"answer")[:2], 2.0) == []
    assert flow.from_stream(encode(b"answer")[2:], 2.0) == [b"answer"]
    c = table.counters
    assert (c.datagrams_out, c.bytes_out, c.datagrams_in, c.bytes_in) == (2, 6, 1, 6)
    assert table.counters.flows_opened == 1


def test_a_full_flow_queue_drops_and_counts() -> None:
    limits = FlowLimits(max_datagram=100, flow_queue=3 * (100 + HEADER_SIZE))
    table = FlowTable(limits)
    for _ in range(5):
        table.to_stream(A, b"d" * 100, 0.0)
    flow = table.get(A)
    assert flow is not None and flow.queued == 3 * 103
    assert table.counters.datagrams_out == 3 and table.counters.dropped_queue == 2
    table.to_stream(A, b"d" * 101, 0.0)
    assert table.counters.dropped_size == 1


def test_the_table_bounds_what_all_flows_queue() -> None:
    limits = FlowLimits(max_datagram=100, flow_queue=206, table_queue=412)
    table = FlowTable(limits)
    for i in range(4):
        for _ in range(2):
            table.to_stream(("127.0.0.1", 50000 + i), b"d" * 100, 0.0)
    assert table.queued == 412 and table.counters.dropped_queue == 4
    flow = table.get(("127.0.0.1", 50000))
    assert flow is not None
    flow.opened()
    assert len(flow.take()) == 206 and table.queued == 206
    table.remove(flow)
    assert table.queued == 206  # the other flow's records are still queued


def test_a_flood_of_sources_is_bounded_by_flows_and_by_opening() -> None:
    table = FlowTable(FlowLimits(max_flows=10, max_opening=4))
    for port in range(100):
        table.to_stream(("10.0.0.1", port), b"x", 0.0)
    assert len(table) == 4 and table.counters.flows_refused == 96
    for flow in table.flows():
        flow.opened()
    for port in range(100, 200):
        table.to_stream(("10.0.0.1", port), b"x", 0.0)
    assert len(table) == 8 and table.opening() == 4
    for flow in table.flows():
        if flow.state is FlowState.OPENING:
            flow.opened()
    for port in range(200, 300):
        table.to_stream(("10.0.0.1", port), b"x", 0.0)
    assert len(table) == 10


def test_idle_flows_expire_at_their_deadline() -> None:
    table = FlowTable(FlowLimits(idle_timeout=30.0))
    assert table.next_deadline() is None
    a, _ = table.to_stream(A, b"x", 0.0)
    b, _ = table.to_stream(B, b"x", 10.0)
    assert a is not None and b is not None
    a.opened()
    b.opened()
    assert table.next_deadline() == 30.0
    a.from_stream(encode(b"reply"), 20.0)  # an answer keeps a flow alive too
    assert table.next_deadline() == 40.0
    assert table.expire(39.9) == []
    assert table.expire(40.0) == [b] and b.state is FlowState.CLOSED
    assert table.expire(50.0) == [a] and len(table) == 0
    assert table.counters.flows_expired == 2
    fresh, new = table.to_stream(B, b"again", 60.0)
    assert new and fresh is not None and fresh is not b


def test_a_failed_flow_holds_its_source_then_lets_it_try_again() -> None:
    table = FlowTable(FlowLimits(failed_hold=5.0))
    flow, _ = table.to_stream(A, b"x", 0.0)
    assert flow is not None
    flow.failed(1.0, "refused by the agent")
    assert table.queued == 0 and flow.error == "refused by the agent"
    assert table.to_stream(A, b"y", 2.0) == (None, False)
    assert table.counters.dropped_closed == 1
    assert table.next_deadline() == 6.0
    assert table.expire(6.0) == [flow]
    retry, new = table.to_stream(A, b"z", 6.5)
    assert new and retry is not None


def test_garbage_from_the_stream_fails_the_flow() -> None:
    table = FlowTable()
    flow, _ = table.to_stream(A, b"x", 0.0)
    assert flow is not None
    flow.opened()
    with pytest.raises(MalformedDatagram):
        flow.from_stream(b"\xff\xff\xff\xff", 1.0)
    assert flow.state is FlowState.FAILED and table.counters.flows_failed == 1
    assert "kind 255" in flow.error


def test_the_far_end_closing_ends_the_flow() -> None:
    flow = Flow.open_to(("127.0.0.1", 53), FlowLimits(), 0.0)
    assert flow.to_stream(b"answer", 1.0)
    assert flow.take() == encode(b"answer")
    flow.ended()
    assert flow.state is FlowState.CLOSED
    assert not flow.to_stream(b"late", 2.0) and flow.counters.dropped_closed == 1
    assert flow.from_stream(encode(b"late"), 2.0) == []


def test_a_transition_not_in_the_table_is_our_bug_and_sticks() -> None:
    flow = Flow(1, A, FlowLimits(), 0.0)
    with pytest.raises(LocalProtocolError, match="'from_stream' in state opening"):
        flow.from_stream(b"", 0.0)
    assert flow.state is FlowState.ERROR
    with pytest.raises(LocalProtocolError):
        flow.opened()
    twice = Flow(2, A, FlowLimits(), 0.0)
    twice.opened()
    with pytest.raises(LocalProtocolError):
        twice.opened()


def test_closing_the_table_closes_every_flow() -> None:
    table = FlowTable()
    for port in range(5):
        table.to_stream(("127.0.0.1", port), b"q", 0.0)
    gone = table.close()
    assert len(gone) == 5 and all(f.state is FlowState.CLOSED for f in gone)
    assert len(table) == 0 and table.queued == 0


def test_limits_check_themselves() -> None:
    with pytest.raises(ValueError):
        FlowLimits(idle_timeout=0)
    with pytest.raises(ValueError):
        FlowLimits(max_datagram=MAX_DATAGRAM + 1)
    with pytest.raises(ValueError):
        FlowLimits(flow_queue=10)
    with pytest.raises(ValueError):
        FlowLimits(table_queue=FlowLimits().flow_queue - 1)


ops = st.lists(
    st.tuples(
        st.sampled_from(["dgram", "open", "take", "reply", "fail", "tick"]),
        st.integers(min_value=0, max_value=7),
        st.integers(min_value=0, max_value=300),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_any_sequence_keeps_every_bound(steps: list[tuple[str, int, int]]) -> None:
    limits = FlowLimits(
        idle_timeout=10.0,
        max_flows=5,
        max_opening=3,
        max_datagram=200,
        flow_queue=600,
        table_queue=1500,
        failed_hold=2.0,
    )
    table = FlowTable(limits)
    now = 0.0
    for op, who, size in steps:
        source = ("127.0.0.1", who)
        flow = table.get(source)
        if op == "dgram":
            table.to_stream(source, b"d" * size, now)
        elif op == "tick":
            now += size / 20
            for gone in table.expire(now):
                assert gone.state is FlowState.CLOSED
            assert all(f.deadline() > now for f in table.flows())
        elif flow is None:
            continue
        elif op == "open" and flow.state is FlowState.OPENING:
            flow.opened()
        elif op == "take":
            flow.take()
        elif op == "reply" and flow.state is FlowState.OPEN:
            assert flow.from_stream(encode(b"r" * min(size, 200)), now) == [b"r" * min(size, 200)]
        elif op == "fail" and flow.state in (FlowState.OPENING, FlowState.OPEN):
            flow.failed(now)
        flows = table.flows()
        assert len(flows) <= limits.max_flows
        assert table.opening() <= limits.max_opening
        assert all(f.queued <= limits.flow_queue for f in flows)
        assert sum(f.queued for f in flows) == table.queued <= limits.table_queue
