"""The HTTP attachment's reliability layer (freight.protocol.attach), fed
bytes and events without any I/O: both halves, cut responses, repeated and
late requests, replay, bounds; and hypothesis driving the two halves over a
lossy model of the requests between them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol import messages as m
from freight.protocol.attach import (
    ACK_BYTES,
    ACK_DELAY,
    PING_FRAME,
    AttachError,
    AttachState,
    BodyFrames,
    ClientAttachment,
    HubAttachment,
    Inflow,
    Outbox,
)
from freight.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from freight.protocol.frames import FrameDecoder, encode_frame, encode_header


def ka(i: int) -> m.KeepAlive:
    return m.KeepAlive(sid="s", offset=i)


def frames_of(data: bytes) -> list[m.AnyMessage]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [msg for msg, _ in decoder]


def hub(**kw: float) -> HubAttachment:
    return HubAttachment(0.0, keepalive=kw.get("keepalive", 25.0), grace=kw.get("grace", 60.0))


def client(now: float = 0.0) -> ClientAttachment:
    return ClientAttachment(now, keepalive=25.0)


def drain_down(h: HubAttachment, response: int, now: float = 0.0) -> bytes:
    """Everything ``response`` writes until it would wait (or ends)."""
    out = b""
    while (frame := h.down_next(response, now)) is not None and frame != h.END:
        out += frame
    return out


def post(h: HubAttachment, seq: int | None, body: bytes) -> None:
    """An up POST delivered whole (the inbox is drained by the caller)."""
    ident = h.up_begin(seq)
    frames = BodyFrames()
    for frame in frames.feed(body):
        if h.up_fresh(ident):
            h.up_deliver(ident, frame)
        else:
            h.up_skip(ident)
    frames.finish()


def inbox(h: HubAttachment) -> list[m.AnyMessage]:
    out = []
    while (frame := h.recv()) is not None:
        out.append(frame[0])
    return out


# --- pieces ---------------------------------------------------------------------------


def test_outbox_releases_up_to_an_ack_ignores_stale_ones_and_refuses_the_future() -> None:
    out: Outbox[bytes] = Outbox(high=100, low=40)
    for i in range(5):
        out.push(bytes([i]) * 30, 30)
    assert out.bytes.full and out.end == 5
    assert out.release(2) == 2 and out.base == 2 and out.bytes.held == 90
    assert out.bytes.full, "still above the low water mark"
    assert out.release(1) == 0, "a late (stale) ack changes nothing"
    assert out.release(4) == 2 and not out.bytes.full
    with pytest.raises(AttachError):
        out.release(6)
    assert out.get(4) == bytes([4]) * 30


def test_outbox_head_takes_at_least_one_frame_and_stops_at_the_cap() -> None:
    out: Outbox[bytes] = Outbox(high=1 << 20)
    for n in (10, 50, 10, 10):
        out.push(b"x" * n, n)
    assert out.head(5) == (10, [b"x" * 10])
    assert out.head(60) == (60, [b"x" * 10, b"x" * 50])
    assert out.head(1000)[0] == 80


def test_inflow_skips_repeats_refuses_gaps_and_drops_a_superseded_body() -> None:
    inflow = Inflow()
    body = inflow.begin(0)
    for _ in range(3):
        assert inflow.fresh(body)
        inflow.took(body, True)
    again = inflow.begin(1)  # a retry repeating frames 1 and 2
    assert not inflow.fresh(body), "the older body is superseded"
    for _ in range(2):
        assert not inflow.fresh(again)
        inflow.took(again, False)
    assert inflow.fresh(again) and inflow.next == 3
    with pytest.raises(AttachError, match=r"3\.\.4 never arrived"):
        inflow.begin(5)


# --- the hub's half -----------------------------------------------------------------------


def test_hub_replays_what_was_not_acknowledged_on_a_new_down_response() -> None:
    h = hub()
    for i in range(4):
        h.send(encode_frame(ka(i)))
    first = h.down_open(0, 0.0)
    assert h.state is AttachState.STREAMING
    assert frames_of(drain_down(h, first)) == [m.Ping(), ka(0), ka(1), ka(2), ka(3)]
    second = h.down_open(2, 1.0)  # the client took two whole frames
    assert h.down_next(first, 1.0) == h.END, "the older response is superseded"
    assert frames_of(drain_down(h, second)) == [m.Ping(), ka(2), ka(3)]
    assert h.out.base == 2 and len(h.out) == 2


def test_hub_without_acks_counts_frames_written_as_delivered() -> None:
    h = hub()
    h.send(encode_frame(ka(0)))
    response = h.down_open(None, 0.0)
    assert frames_of(drain_down(h, response)) == [m.Ping(), ka(0)]
    assert len(h.out) == 0 and h.out.base == 1


def test_hub_refuses_an_ack_of_frames_it_never_sent_and_stays_failed() -> None:
    h = hub()
    h.send(encode_frame(ka(0)))
    with pytest.raises(AttachError):
        h.acknowledge(2)
    assert h.state is AttachState.ERROR and h.closed
    with pytest.raises(AttachError):
        h.send(encode_frame(ka(1)))


def test_hub_window_is_bounded_in_bytes_with_water_marks() -> None:
    h = HubAttachment(0.0, keepalive=25.0, grace=60.0, window=1000)
    frame = encode_frame(m.Data(sid="s", seq=0, offset=0, raw=300, len=300), b"d" * 300)
    while not h.window_full:
        h.send(frame)
    sent = h.out.end
    h.acknowledge(1)
    assert h.window_full, "not below the low water mark yet"
    h.acknowledge(sent)
    assert not h.window_full


def test_hub_skips_frames_of_a_retried_post_and_refuses_a_gap() -> None:
    h = hub()
    body = b"".join(encode_frame(ka(i)) for i in range(3))
    post(h, 0, body[: len(encode_frame(ka(0))) * 2])
    post(h, 0, body)  # the retry repeats frames 0 and 1
    assert inbox(h) == [ka(0), ka(1), ka(2)]
    post(h, None, encode_frame(ka(3)))  # no seq: follows the last frames
    assert inbox(h) == [ka(3)]
    with pytest.raises(AttachError):
        h.up_begin(9)
    assert h.state is AttachState.ERROR


def test_hub_inbox_is_bounded_in_frames_and_bytes() -> None:
    h = HubAttachment(0.0, keepalive=25.0, grace=60.0, inbox_frames=3, inbox_bytes=500)
    ident = h.up_begin(0)
    payload = b"p" * 200
    for i in range(3):
        assert not h.inbox_full
        h.up_deliver(ident, (m.Data(sid="s", seq=i, offset=0, raw=200, len=200), payload))
    assert h.inbox_full and h.inbox_bytes == 600
    h.recv()
    assert not h.inbox_full


def test_hub_pings_after_keepalive_and_ends_after_grace() -> None:
    h = hub(keepalive=5.0, grace=30.0)
    assert h.next_deadline() == 30.0
    response = h.down_open(0, 1.0)
    assert h.down_next(response, 1.0) == PING_FRAME
    assert h.down_next(response, 1.0) is None
    assert h.next_deadline() == 6.0
    assert not h.handle_timer(5.9)
    assert h.handle_timer(6.0)
    assert h.next_deadline() is None, "the Ping is due: no timer until it is written"
    assert h.down_next(response, 6.1) == PING_FRAME
    h.down_close(response, 7.0)
    assert h.state is AttachState.IDLE and h.next_deadline() == 37.0
    assert h.handle_timer(37.0) and h.closed and "client gone" in h.reason
    assert h.next_deadline() is None


def test_hub_closed_flushes_what_was_sent_then_ends_responses() -> None:
    h = hub()
    response = h.down_open(0, 0.0)
    drain_down(h, response)
    h.send(encode_frame(ka(0)))
    h.close("the hub closed the channel")
    assert frames_of(drain_down(h, response)) == [ka(0)]
    assert h.down_next(response, 0.0) == h.END
    with pytest.raises(LocalProtocolError):
        h.send(encode_frame(ka(1)))


def test_hub_hands_out_frames_received_before_it_closed() -> None:
    h = hub()
    post(h, 0, encode_frame(ka(0)))
    h.close("done")
    assert inbox(h) == [ka(0)]


# --- the client's half -----------------------------------------------------------------------


def test_client_posts_from_the_first_frame_not_taken_and_shrinks_batches_on_failure() -> None:
    c = client()
    frames = [m.Data(sid="s", seq=i, offset=0, raw=40_000, len=40_000) for i in range(200)]
    for f in frames:
        c.send(encode_header(f), b"x" * 40_000)
    batch = c.up_batch()
    assert batch is not None
    seq, count, _ = batch
    assert seq == 0 and 1 < count < 200
    c.up_failed()
    retry = c.up_batch()
    assert retry is not None and retry[0] == 0 and retry[1] < count
    c.up_done(retry[0], retry[1])
    after = c.up_batch()
    assert after is not None and after[0] == retry[1]
    assert frames_of(after[2])[0] == frames[retry[1]]


def test_client_send_queue_is_bounded_in_bytes() -> None:
    c = ClientAttachment(0.0, keepalive=25.0, queue_bytes=10_000)
    while not c.queue_full:
        c.send(encode_header(ka(0)), b"")
    batch = c.up_batch()
    assert batch is not None
    c.up_done(batch[0], batch[1])
    assert not c.queue_full


def test_client_cut_response_replays_a_partial_frame_whole() -> None:
    c = client()
    stream = PING_FRAME + encode_frame(ka(0)) + encode_frame(ka(1))
    assert c.down_open(0.0) == 0
    c.down_data(stream[: len(stream) - 3], 0.1)  # cut inside frame 1
    assert c.next_frame(0.1) == (ka(0), b"")
    assert c.next_frame(0.1) is None
    c.down_end()
    assert c.state is AttachState.IDLE
    assert c.down_open(0.2) == 1, "the next GET acknowledges frame 0"
    c.down_data(PING_FRAME + encode_frame(ka(1)), 0.3)
    assert c.next_frame(0.3) == (ka(1), b"")
    assert c.pings == 2


def test_client_ack_is_due_after_a_delay_or_a_megabyte() -> None:
    c = client()
    c.down_open(0.0)
    assert c.next_deadline() is None
    c.down_data(encode_frame(ka(0)), 1.0)
    c.next_frame(1.0)
    assert c.next_deadline() == 1.0 + ACK_DELAY
    assert not c.handle_timer(1.0) and c.handle_timer(1.0 + ACK_DELAY)
    assert c.take_ack() == 1 and c.next_deadline() is None
    big = m.Data(sid="s", seq=0, offset=0, raw=ACK_BYTES, len=ACK_BYTES)
    c.down_data(encode_frame(big, b"b" * ACK_BYTES), 2.0)
    c.next_frame(2.0)
    assert c.handle_timer(2.0), "a megabyte unacknowledged: an ack at once"


def test_client_stall_deadline_follows_the_last_byte() -> None:
    c = client()
    c.down_open(10.0)
    assert c.stall_deadline() == 10.0 + 2 * 25.0 + 10
    c.down_data(PING_FRAME, 30.0)
    assert c.stall_deadline() == 30.0 + 60.0


def test_client_garbage_on_the_down_stream_fails_it_for_good() -> None:
    c = client()
    c.down_open(0.0)
    with pytest.raises(RemoteProtocolError):
        c.down_data(b"\x00\x00\x00\x05nojs!", 0.0)
        c.next_frame(0.0)
    assert c.state is AttachState.ERROR
    with pytest.raises(RemoteProtocolError):
        c.take_ack()


def test_client_input_outside_the_table_is_a_sticky_error() -> None:
    c = client()
    with pytest.raises(LocalProtocolError):
        c.down_data(b"", 0.0)  # no down response is open
    assert c.state is AttachState.ERROR
    with pytest.raises(LocalProtocolError):
        c.send(b"", b"")


def test_client_closing_still_posts_then_ends() -> None:
    c = client()
    c.send(encode_header(ka(0)), b"")
    c.close()
    assert c.state is AttachState.CLOSING
    with pytest.raises(LocalProtocolError):
        c.send(encode_header(ka(1)), b"")
    c2 = client()
    c2.send(encode_header(ka(0)), b"")
    c2.close()
    batch = c2.up_batch()
    assert batch is not None
    c2.up_done(batch[0], batch[1])
    c2.end()
    assert c2.state is AttachState.CLOSED


def test_body_frames_tells_a_body_cut_inside_a_frame() -> None:
    frames = BodyFrames()
    whole = encode_frame(ka(0))
    assert [f[0] for f in frames.feed(whole + whole[:6])] == [ka(0)]
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        frames.finish()


# --- both halves over a lossy model -------------------------------------------------------------


class Link:
    """A client and a hub half joined by a model of HTTP that cuts bodies
    and responses anywhere, loses answers, repeats POSTs and delivers acks
    late. Nothing but the machines decides what is delivered."""

    def __init__(self) -> None:
        self.now = 0.0
        self.client = ClientAttachment(0.0, keepalive=25.0)
        self.hub = HubAttachment(0.0, keepalive=25.0, grace=1e9, window=1 << 30)
        self.up_sent: list[m.AnyMessage] = []
        self.down_sent: list[m.AnyMessage] = []
        self.up_got: list[m.AnyMessage] = []
        self.down_got: list[m.AnyMessage] = []
        self.response = 0
        self.late_acks: list[int] = []

    def client_send(self) -> None:
        msg = ka(len(self.up_sent))
        self.up_sent.append(msg)
        self.client.send(encode_header(msg), b"")

    def hub_send(self) -> None:
        msg = ka(len(self.down_sent))
        self.down_sent.append(msg)
        self.hub.send(encode_frame(msg))

    def post(self, cut: int | None, answered: bool) -> None:
        """The next frame POST: the hub reads ``cut`` bytes of it (all if
        None); the client hears the answer only if ``answered``."""
        ack = self.client.take_ack()
        batch = self.client.up_batch()
        self.deliver_ack(ack)
        if batch is None:
            return
        seq, count, body = batch
        whole = cut is None or cut >= len(body)
        part = body if cut is None else body[:cut]
        ident = self.hub.up_begin(seq)
        frames = BodyFrames()
        for frame in frames.feed(part):
            if self.hub.up_fresh(ident):
                self.hub.up_deliver(ident, frame)
            else:
                self.hub.up_skip(ident)
        if whole:
            frames.finish()
        while (frame := self.hub.recv()) is not None:
            self.up_got.append(frame[0])
        if whole and answered:
            self.client.up_done(seq, count)
        else:
            self.client.up_failed()

    def deliver_ack(self, ack: int, late: bool = False) -> None:
        if late:
            self.late_acks.append(ack)
        else:
            self.hub.acknowledge(ack)

    def ack_only(self, late: bool) -> None:
        self.deliver_ack(self.client.take_ack(), late)

    def old_ack_arrives(self) -> None:
        if self.late_acks:
            self.hub.acknowledge(self.late_acks.pop(0))

    def get(self, cut: int | None) -> None:
        """A down GET whose response is cut after ``cut`` bytes (None: it
        carries everything sent so far and ends cleanly)."""
        ack = self.client.down_open(self.now)
        self.hub.acknowledge(ack)
        response = self.hub.down_open(ack, self.now)
        data = drain_down(self.hub, response, self.now)
        self.client.down_data(data if cut is None else data[:cut], self.now)
        while (frame := self.client.next_frame(self.now)) is not None:
            self.down_got.append(frame[0])
        self.client.down_end()
        self.hub.down_close(response, self.now)

    def check(self) -> None:
        assert self.up_got == self.up_sent[: len(self.up_got)]
        assert self.down_got == self.down_sent[: len(self.down_got)]


OPS = st.one_of(
    st.tuples(st.just("client_send")),
    st.tuples(st.just("hub_send")),
    st.tuples(st.just("post"), st.none() | st.integers(0, 300), st.booleans()),
    st.tuples(st.just("get"), st.none() | st.integers(0, 300)),
    st.tuples(st.just("ack_only"), st.booleans()),
    st.tuples(st.just("old_ack_arrives")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=80))
def test_lossy_requests_deliver_every_frame_exactly_once_in_order(ops: list[tuple]) -> None:
    link = Link()
    for op, *args in ops:
        getattr(link, op)(*args)
        link.check()
    # Then the network behaves: everything sent arrives, once, in order.
    while link.client.up_batch() is not None:
        link.post(None, True)
    link.get(None)
    assert link.up_got == link.up_sent
    assert link.down_got == link.down_sent


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["send", "close", "recv", "down_end"])),
        st.tuples(st.just("ack"), st.integers(-1, 20)),
        st.tuples(st.just("down_open"), st.none() | st.integers(0, 20)),
        st.tuples(st.just("down_next"), st.integers(0, 5)),
        st.tuples(st.just("down_close"), st.integers(0, 5)),
        st.tuples(st.just("up"), st.none() | st.integers(0, 20), st.binary(max_size=64)),
        st.tuples(st.just("timer"), st.floats(0, 200)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_hub_half_raises_only_protocol_errors(events: list[tuple]) -> None:
    h = hub(keepalive=5.0, grace=50.0)
    for name, *args in events:
        try:
            if name == "send":
                h.send(encode_frame(ka(0)))
            elif name == "close":
                h.close("closed")
            elif name == "recv":
                h.recv()
            elif name == "down_end":
                h.down_end()
            elif name == "ack":
                h.acknowledge(max(0, args[0]))
            elif name == "down_open":
                h.down_open(args[0], 0.0)
            elif name == "down_next":
                h.down_next(args[0], 0.0)
            elif name == "down_close":
                h.down_close(args[0], 0.0)
            elif name == "up":
                post(h, args[0], args[1])
            else:
                h.handle_timer(args[0])
        except ProtocolError:
            pass
        if h.error is not None:
            assert h.state is AttachState.ERROR


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(
                    ["send", "up_batch", "up_failed", "take_ack", "down_open", "down_end"]
                )
            ),
            st.tuples(st.sampled_from(["close", "end", "next_frame"])),
            st.tuples(st.just("down_data"), st.binary(max_size=64)),
            st.tuples(st.just("up_done"), st.integers(0, 5), st.integers(0, 5)),
            st.tuples(st.just("timer"), st.floats(0, 200)),
        ),
        max_size=40,
    )
)
def test_client_half_raises_only_protocol_errors(events: list[tuple]) -> None:
    c = client()
    for name, *args in events:
        try:
            if name == "send":
                c.send(encode_header(ka(0)), b"")
            elif name == "down_data":
                c.down_data(args[0], 0.0)
            elif name == "up_done":
                c.up_done(args[0], args[1])
            elif name == "timer":
                c.handle_timer(args[0])
            elif name in ("down_open", "next_frame"):
                getattr(c, name)(0.0)
            else:
                getattr(c, name)()
        except ProtocolError:
            pass
        if c.error is not None:
            assert c.state is AttachState.ERROR
