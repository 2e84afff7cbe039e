"""StreamSender and StreamReceiver driven against each other through bytes."""

from __future__ import annotations

import random

import blake3
import msgspec
import pytest
from protocol_samples import data_msg

from freight.protocol import (
    FrameDecoder,
    IntegrityError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    State,
    StreamReceiver,
    StreamSender,
    encode_frame,
)
from freight.protocol import messages as m
from freight.protocol.stream import (
    Aborted,
    Accepted,
    Checkpointed,
    CheckpointRequested,
    DataReceived,
    EndRequested,
    Finished,
    StreamRequested,
)

SID = "s-1"
KiB = 1024
INTERVAL = 64 * KiB  # small checkpoint interval so that tests stay quick
CHUNK = 16 * KiB

TEXT = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i for i in range(8000))
NOISE = random.Random(11).randbytes(300 * KiB)


def wire(msg: m.Message, payload: bytes = b"") -> tuple[m.Message, bytes]:
    """Carry one message through the frame codec, as the transport would."""
    dec = FrameDecoder()
    dec.feed(encode_frame(msg, payload))
    frames = list(dec)
    assert len(frames) == 1
    assert dec.buffered == 0
    return frames[0]


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class Transfer:
    """A sender and a receiver joined by a frame codec, with a fake clock."""

    def __init__(
        self,
        data: bytes,
        *,
        level: str = "none",
        interval: int = INTERVAL,
        window_intervals: int = 2,
        keepalive_seconds: float = 120.0,
    ) -> None:
        self.data = data
        self.now = 1000.0
        self.level = level
        self.sender = StreamSender(
            SID,
            name="file.bin",
            size=len(data),
            mtime=1.5e9,
            want_level=level,
            checkpoint_interval=interval,
            keepalive_seconds=keepalive_seconds,
            window_intervals=window_intervals,
        )
        self.receiver = StreamReceiver(SID, checkpoint_interval=interval)
        self.out = bytearray()
        self.codecs: list[int] = []

    def to_receiver(self, msg: m.Message, payload: bytes = b"") -> object:
        return self.receiver.receive(*wire(msg, payload))

    def to_sender(self, msg: m.Message) -> object:
        msg, payload = wire(msg)
        assert payload == b""
        return self.sender.receive(msg)

    def open(self, checkpoint: int = 0) -> Accepted:
        ev = self.to_receiver(self.sender.start(self.now))
        assert ev == StreamRequested(
            sid=SID,
            name="file.bin",
            size=len(self.data),
            mtime=1.5e9,
            want_level=self.level,
            fresh=False,
        )
        self.out = bytearray(self.data[:checkpoint])  # already on the receiver's disk
        ack = self.receiver.accept(
            checkpoint=checkpoint,
            prefix_digest=digest(self.data[:checkpoint]),
            level=self.level,
            rate=0,
        )
        accepted = self.to_sender(ack)
        assert isinstance(accepted, Accepted)
        return accepted

    def send_chunk(self, n: int = CHUNK) -> DataReceived:
        offset = self.sender.offset
        msg, payload = self.sender.data(self.data[offset : offset + n])
        msg, payload = wire(msg, payload)
        self.codecs.append(msg.codec)
        ev = self.receiver.receive(msg, payload)
        assert isinstance(ev, DataReceived)
        assert ev.offset == len(self.out)
        self.out += ev.data
        return ev

    def checkpoint(self) -> Checkpointed:
        req = self.to_receiver(self.sender.keepalive(self.now))
        assert isinstance(req, CheckpointRequested)
        # ... the application writes and fsyncs everything below req.offset ...
        ev = self.to_sender(self.receiver.durable(req.offset, rate=0, level=self.level))
        assert isinstance(ev, Checkpointed)
        return ev

    def pump(self, chunk: int = CHUNK) -> None:
        """Send everything, checkpointing whenever the sender says so."""
        while self.sender.offset < self.sender.size:
            n = min(chunk, self.sender.send_window())
            assert n > 0, "sender stalled"
            self.send_chunk(n)
            if self.sender.keepalive_due(self.now):
                self.checkpoint()

    def close(self) -> Finished:
        ev = self.to_receiver(self.sender.end(digest(self.data)))
        assert isinstance(ev, EndRequested)
        assert ev.total == len(self.data)
        ok = digest(bytes(self.out)) == ev.digest
        fin = self.to_sender(self.receiver.complete(verified=ok, digest=digest(bytes(self.out))))
        assert isinstance(fin, Finished)
        assert self.sender.state is State.DONE
        assert self.receiver.state is State.DONE
        return fin

    def run(self, chunk: int = CHUNK) -> Finished:
        self.open()
        self.pump(chunk)
        return self.close()


# --- whole transfers ----------------------------------------------------------------


def test_empty_stream() -> None:
    t = Transfer(b"")
    t.open()
    assert t.sender.send_window() == 0
    assert not t.sender.keepalive_due(t.now)
    fin = t.close()
    assert fin == Finished(total=0, verified=True, digest=digest(b""))
    assert t.codecs == []


def test_one_byte_stream() -> None:
    t = Transfer(b"x")
    assert t.run() == Finished(total=1, verified=True, digest=digest(b"x"))
    assert t.out == b"x"
    assert t.sender.checkpoint == t.receiver.checkpoint == 1


@pytest.mark.parametrize("level", ["none", "fast", "max"])
@pytest.mark.parametrize("kind", ["text", "noise"])
def test_multi_chunk_stream(level: str, kind: str) -> None:
    data = {"text": TEXT, "noise": NOISE}[kind]
    t = Transfer(data, level=level)
    fin = t.run()
    assert fin.verified
    assert t.out == data
    assert len(t.codecs) == -(-len(data) // CHUNK)
    if kind == "text" and level != "none":
        assert set(t.codecs) == {m.CODEC_ZSTD}
        assert t.sender.wire_bytes < len(data) // 2
    else:
        assert set(t.codecs) == {m.CODEC_NONE}
        assert t.sender.wire_bytes == len(data)


def test_large_chunks_of_noise_go_raw() -> None:
    t = Transfer(NOISE, level="max", interval=256 * KiB)
    t.run(chunk=200 * KiB)  # big enough for the compressor's probe
    assert t.out == NOISE
    assert set(t.codecs) == {m.CODEC_NONE}


def test_each_frame_compressed_on_its_own_merits() -> None:
    data = TEXT[: 2 * CHUNK] + NOISE[: 2 * CHUNK] + TEXT[: 2 * CHUNK]
    t = Transfer(data, level="fast")
    t.run()
    assert t.out == data
    assert t.codecs == [1, 1, 0, 0, 1, 1]


def test_receiver_reports_a_digest_mismatch() -> None:
    t = Transfer(TEXT[:1000])
    t.open()
    t.send_chunk(1000)  # no checkpoint before the end
    t.to_receiver(t.sender.end(digest(b"something else")))
    fin = t.to_sender(t.receiver.complete(verified=False, digest=digest(TEXT[:1000])))
    assert fin == Finished(total=1000, verified=False, digest=digest(TEXT[:1000]))
    # A failed verification confirms nothing.
    assert t.sender.checkpoint == t.receiver.checkpoint == 0


# --- checkpoints and the send window ---------------------------------------------------


def test_keepalive_is_due_every_checkpoint_interval() -> None:
    t = Transfer(TEXT)
    t.open()
    due_at = []
    while t.sender.offset < 4 * INTERVAL:
        t.send_chunk()
        if t.sender.keepalive_due(t.now):
            due_at.append(t.sender.offset)
            t.checkpoint()
    assert due_at == [INTERVAL, 2 * INTERVAL, 3 * INTERVAL, 4 * INTERVAL]


def test_keepalive_is_due_when_all_bytes_are_sent() -> None:
    t = Transfer(TEXT[:1000])
    t.open()
    assert not t.sender.keepalive_due(t.now)
    t.send_chunk(1000)
    assert t.sender.keepalive_due(t.now)
    assert t.checkpoint().checkpoint == 1000
    assert not t.sender.keepalive_due(t.now)


def test_receiver_only_acknowledges_after_durable() -> None:
    t = Transfer(TEXT)
    t.open()
    for _ in range(INTERVAL // CHUNK):
        t.send_chunk()
    keepalive = t.sender.keepalive(t.now)
    assert keepalive.offset == INTERVAL
    req = t.to_receiver(keepalive)
    assert req == CheckpointRequested(offset=INTERVAL)
    # Nothing is acknowledged yet: neither side has moved its checkpoint.
    assert t.receiver.checkpoint == 0
    assert t.sender.checkpoint == 0
    ack = t.receiver.durable(INTERVAL, rate=0, level="none")
    assert ack == m.KeepAliveAck(sid=SID, checkpoint=INTERVAL, rate=0, level="none")
    assert t.receiver.checkpoint == INTERVAL
    assert t.to_sender(ack) == Checkpointed(checkpoint=INTERVAL, rate=0, level="none")
    assert t.sender.checkpoint == INTERVAL


def test_send_window_stops_at_checkpoint_plus_window_and_reopens_after_ack() -> None:
    t = Transfer(TEXT, window_intervals=2)
    t.open()
    window = 2 * INTERVAL
    assert t.sender.send_window() == window
    while t.sender.send_window():
        t.send_chunk(min(CHUNK, t.sender.send_window()))
    assert t.sender.offset == window
    with pytest.raises(LocalProtocolError):
        t.sender.data(TEXT[window : window + 1])
    assert t.sender.state is State.ERROR


def test_send_window_reopens_after_ack() -> None:
    t = Transfer(TEXT, window_intervals=2)
    t.open()
    while t.sender.send_window():
        t.send_chunk(min(CHUNK, t.sender.send_window()))
    req = t.to_receiver(t.sender.keepalive(t.now))
    assert t.sender.send_window() == 0  # still closed until the ack arrives
    t.to_sender(t.receiver.durable(INTERVAL, rate=0, level="none"))  # only part is durable
    assert t.sender.send_window() == INTERVAL
    t.to_sender(t.receiver.durable(req.offset, rate=0, level="none"))
    assert t.sender.send_window() == 2 * INTERVAL


def test_send_window_is_limited_by_the_stream_size() -> None:
    t = Transfer(TEXT[:1000])
    t.open()
    assert t.sender.send_window() == 1000
    t.send_chunk(600)
    assert t.sender.send_window() == 400


def test_receiver_refuses_a_sender_that_ignores_the_window() -> None:
    t = Transfer(TEXT, window_intervals=10)  # receiver allows 4 intervals unacknowledged
    t.open()
    for _ in range(4 * INTERVAL // CHUNK):
        t.send_chunk()
    msg, payload = t.sender.data(TEXT[t.sender.offset : t.sender.offset + 1])
    with pytest.raises(RemoteProtocolError):
        t.to_receiver(msg, payload)
    assert t.receiver.state is State.ERROR


# --- resume ---------------------------------------------------------------------------


def test_resume_from_a_checkpoint() -> None:
    first = Transfer(TEXT)
    first.open()
    while first.sender.checkpoint < 2 * INTERVAL:
        first.send_chunk()
        if first.sender.keepalive_due(first.now):
            first.checkpoint()
    first.send_chunk()  # sent but never made durable; the connection drops here
    durable = first.receiver.checkpoint
    assert durable == 2 * INTERVAL

    second = Transfer(TEXT)
    accepted = second.open(checkpoint=durable)
    assert accepted.checkpoint == durable
    assert accepted.prefix_digest == digest(TEXT[:durable])
    assert second.sender.offset == second.sender.checkpoint == durable
    assert second.sender.send_window() == 2 * INTERVAL

    msg, payload = second.sender.data(TEXT[durable : durable + CHUNK])
    assert (msg.offset, msg.seq) == (durable, 0)
    ev = second.to_receiver(msg, payload)
    assert ev == DataReceived(
        offset=durable, data=TEXT[durable : durable + CHUNK], wire_bytes=CHUNK
    )
    second.out += ev.data
    second.pump()
    assert second.close().verified
    assert second.out == TEXT


def test_resume_at_the_very_end() -> None:
    t = Transfer(TEXT[:1000])
    t.open(checkpoint=1000)
    assert t.sender.send_window() == 0
    assert t.close().verified


def test_sender_refuses_a_checkpoint_beyond_the_stream() -> None:
    t = Transfer(TEXT[:1000])
    t.to_receiver(t.sender.start(t.now))
    bogus = m.StartStreamAck(sid=SID, level="none", rate=0, checkpoint=1001)
    with pytest.raises(RemoteProtocolError):
        t.to_sender(bogus)
    assert t.sender.state is State.ERROR


def test_receiver_cannot_accept_beyond_the_stream() -> None:
    t = Transfer(TEXT[:1000])
    t.to_receiver(t.sender.start(t.now))
    with pytest.raises(LocalProtocolError):
        t.receiver.accept(checkpoint=1001, prefix_digest="", level="none", rate=0)
    assert t.receiver.state is State.ERROR


# --- time -------------------------------------------------------------------------------


def test_keepalive_due_after_keepalive_seconds() -> None:
    t = Transfer(TEXT, keepalive_seconds=120.0)
    t.open()  # started at t.now == 1000
    t.send_chunk(100)
    assert t.sender.next_deadline() == 1120.0
    assert not t.sender.keepalive_due(1119.9)
    assert t.sender.keepalive_due(1120.0)
    t.now = 1125.0
    t.checkpoint()
    assert t.sender.next_deadline() == 1245.0
    assert not t.sender.keepalive_due(1244.0)
    assert t.sender.keepalive_due(1245.0)


def test_no_keepalive_before_the_stream_is_accepted() -> None:
    t = Transfer(TEXT)
    t.sender.start(t.now)
    assert not t.sender.keepalive_due(t.now + 10_000)


def test_keepalive_while_waiting_for_the_end_ack_is_accepted() -> None:
    t = Transfer(TEXT[:1000], keepalive_seconds=120.0)
    t.open()
    t.pump()
    t.to_receiver(t.sender.end(digest(TEXT[:1000])))
    # The receiver takes a while to verify the digest of a big file.
    later = t.now + 300.0
    assert t.sender.keepalive_due(later)
    req = t.to_receiver(t.sender.keepalive(later))
    assert req == CheckpointRequested(offset=1000)
    ack = t.receiver.durable(req.offset, rate=0, level="none")
    assert t.to_sender(ack) == Checkpointed(checkpoint=1000, rate=0, level="none")
    assert not t.sender.keepalive_due(later)
    fin = t.to_sender(t.receiver.complete(verified=True, digest=digest(TEXT[:1000])))
    assert fin.verified
    assert t.sender.state is t.receiver.state is State.DONE


# --- integrity and protocol violations ---------------------------------------------------


def flip(payload: bytes, index: int) -> bytes:
    bad = bytearray(payload)
    bad[index] ^= 0x40
    return bytes(bad)


@pytest.mark.parametrize("level", ["none", "fast"])
@pytest.mark.parametrize("where", [0.0, 0.5, 1.0], ids=["first", "middle", "last"])
def test_tampered_payload_is_an_integrity_error(level: str, where: float) -> None:
    t = Transfer(TEXT, level=level)
    t.open()
    t.send_chunk()
    msg, payload = t.sender.data(TEXT[CHUNK : 2 * CHUNK])
    frame = bytearray(encode_frame(msg, payload))
    frame[len(frame) - len(payload) :] = flip(payload, round(where * (len(payload) - 1)))
    dec = FrameDecoder()
    dec.feed(frame)
    with pytest.raises(IntegrityError):
        t.receiver.receive(*dec.next_frame())
    assert t.receiver.state is State.ERROR


def test_wrong_checksum_is_an_integrity_error() -> None:
    t = Transfer(TEXT)
    t.open()
    msg, payload = t.sender.data(TEXT[:CHUNK])
    with pytest.raises(IntegrityError):
        t.to_receiver(msgspec.structs.replace(msg, xxh=msg.xxh ^ 1), payload)
    assert t.receiver.state is State.ERROR


def test_payload_shorter_than_header_says_is_refused() -> None:
    t = Transfer(TEXT)
    t.open()
    msg, payload = t.sender.data(TEXT[:CHUNK])
    with pytest.raises(RemoteProtocolError):
        t.receiver.receive(msg, payload[:-1])
    assert t.receiver.state is State.ERROR


def opened(data: bytes = TEXT) -> Transfer:
    t = Transfer(data)
    t.open()
    t.send_chunk()
    return t


def next_data(t: Transfer, n: int = CHUNK) -> tuple[m.Data, bytes]:
    return t.sender.data(t.data[t.sender.offset : t.sender.offset + n])


def tweaked(**changes: object):  # type: ignore[no-untyped-def]
    """The sender's next honest Data frame, with some fields changed."""

    def make(t: Transfer) -> tuple[m.Message, bytes]:
        msg, payload = next_data(t)
        return msgspec.structs.replace(msg, **changes), payload

    return make


# Each is sent to a receiver that has accepted the stream and received one chunk.
VIOLATIONS = {
    "wrong offset": tweaked(offset=CHUNK + 1),
    "offset from the past": tweaked(offset=0),
    "wrong seq": tweaked(seq=6),
    "repeated seq": tweaked(seq=0),
    "other stream": tweaked(sid="s-2"),
    "zero raw bytes": lambda t: (
        m.Data(sid=SID, seq=1, offset=CHUNK, raw=0, xxh=0, len=0),
        b"",
    ),
    "keepalive beyond received": lambda t: (m.KeepAlive(sid=SID, offset=CHUNK + 1), b""),
    "end before all bytes": lambda t: (
        m.EndStream(sid=SID, total=len(TEXT), digest=digest(TEXT)),
        b"",
    ),
    "second start": lambda t: (m.StartStream(sid=SID, name="file.bin", size=len(TEXT)), b""),
    "start ack to receiver": lambda t: (
        m.StartStreamAck(sid=SID, level="none", rate=0, checkpoint=0),
        b"",
    ),
    "keepalive ack to receiver": lambda t: (
        m.KeepAliveAck(sid=SID, checkpoint=0, rate=0, level="none"),
        b"",
    ),
    "end ack to receiver": lambda t: (m.EndStreamAck(sid=SID, total=1, verified=True), b""),
    "not a stream message": lambda t: (m.Hello(version=1), b""),
    "error frame": lambda t: (m.Error(code="x", message="y", sid=SID), b""),
}


@pytest.mark.parametrize("make", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_receiver_refuses_protocol_violations(make) -> None:  # type: ignore[no-untyped-def]
    t = opened()
    msg, payload = make(t)
    with pytest.raises(RemoteProtocolError):
        t.to_receiver(msg, payload)
    assert t.receiver.state is State.ERROR
    # The machine stays broken: even a good message is refused now.
    with pytest.raises(RemoteProtocolError):
        t.to_receiver(m.KeepAlive(sid=SID, offset=0))


def test_data_past_the_declared_size_is_refused() -> None:
    t = Transfer(TEXT[:1000])
    t.open()
    t.send_chunk(600)
    # An honest-looking frame (right offset, seq and checksum) one byte too long.
    with pytest.raises(RemoteProtocolError):
        t.to_receiver(*data_msg(TEXT[600:1001], offset=600, seq=1))
    assert t.receiver.state is State.ERROR


def test_data_before_start_ack_is_refused() -> None:
    t = Transfer(TEXT)
    t.to_receiver(t.sender.start(t.now))
    msg, payload = m.Data(sid=SID, seq=0, offset=0, raw=1, len=1), b"x"
    with pytest.raises(RemoteProtocolError):
        t.to_receiver(msg, payload)
    assert t.receiver.state is State.ERROR


def test_data_before_start_is_refused() -> None:
    receiver = StreamReceiver(SID)
    with pytest.raises(RemoteProtocolError):
        receiver.receive(*wire(m.Data(sid=SID, seq=0, offset=0, raw=1, len=1), b"x"))
    assert receiver.state is State.ERROR


SENDER_VIOLATIONS = {
    "start to sender": m.StartStream(sid=SID, name="f", size=1),
    "data to sender": m.Data(sid=SID, seq=0, offset=0, raw=0),
    "keepalive to sender": m.KeepAlive(sid=SID, offset=0),
    "end to sender": m.EndStream(sid=SID, total=0, digest=""),
    "second start ack": m.StartStreamAck(sid=SID, level="none", rate=0, checkpoint=0),
    "ack beyond sent": m.KeepAliveAck(sid=SID, checkpoint=CHUNK + 1, rate=0, level="none"),
    "end ack before end": m.EndStreamAck(sid=SID, total=len(TEXT), verified=True),
    "other stream": m.KeepAliveAck(sid="s-2", checkpoint=0, rate=0, level="none"),
    "not a stream message": m.Welcome(version=1),
}


@pytest.mark.parametrize("msg", SENDER_VIOLATIONS.values(), ids=SENDER_VIOLATIONS.keys())
def test_sender_refuses_protocol_violations(msg: m.Message) -> None:
    t = opened()
    with pytest.raises(RemoteProtocolError):
        t.to_sender(msg)
    assert t.sender.state is State.ERROR


def test_sender_refuses_an_ack_that_goes_backwards() -> None:
    t = opened()
    t.checkpoint()
    with pytest.raises(RemoteProtocolError):
        t.to_sender(m.KeepAliveAck(sid=SID, checkpoint=CHUNK - 1, rate=0, level="none"))
    assert t.sender.state is State.ERROR


def test_sender_refuses_an_end_ack_for_another_total() -> None:
    t = Transfer(TEXT[:1000])
    t.open()
    t.pump()
    t.to_receiver(t.sender.end(digest(TEXT[:1000])))
    with pytest.raises(RemoteProtocolError):
        t.to_sender(m.EndStreamAck(sid=SID, total=999, verified=True))
    assert t.sender.state is State.ERROR


LOCAL_MISUSE = {
    "data before start": lambda t: t.sender.data(b"x"),
    "keepalive before start": lambda t: t.sender.keepalive(t.now),
    "end before start": lambda t: t.sender.end(""),
    "start twice": lambda t: (t.sender.start(t.now), t.sender.start(t.now)),
    "end before all bytes": lambda t: (t.open(), t.sender.end("")),
    "empty chunk": lambda t: (t.open(), t.sender.data(b"")),
    "accept before start": lambda t: t.receiver.accept(
        checkpoint=0, prefix_digest="", level="none", rate=0
    ),
    "accept twice": lambda t: (
        t.open(),
        t.receiver.accept(checkpoint=0, prefix_digest="", level="none", rate=0),
    ),
    "durable beyond received": lambda t: (t.open(), t.receiver.durable(1, rate=0, level="none")),
    "complete before end": lambda t: (t.open(), t.receiver.complete(verified=True, digest="")),
}


@pytest.mark.parametrize("misuse", LOCAL_MISUSE.values(), ids=LOCAL_MISUSE.keys())
def test_local_misuse_is_a_local_protocol_error(misuse) -> None:  # type: ignore[no-untyped-def]
    t = Transfer(TEXT)
    with pytest.raises(LocalProtocolError):
        misuse(t)
    assert State.ERROR in (t.sender.state, t.receiver.state)


# --- abort -----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["starting", "streaming", "ending"])
def test_sender_aborts(when: str) -> None:
    t = Transfer(TEXT[:1000])
    t.to_receiver(t.sender.start(t.now))
    if when != "starting":
        t.to_sender(t.receiver.accept(checkpoint=0, prefix_digest="", level="none", rate=0))
        t.send_chunk(100)
    if when == "ending":
        t.pump()
        t.to_receiver(t.sender.end(digest(TEXT[:1000])))
    abort = t.sender.abort("source_changed", "the file changed while it was sent")
    assert t.sender.state is State.ABORTED
    ev = t.to_receiver(abort)
    assert ev == Aborted(code="source_changed", message="the file changed while it was sent")
    assert t.receiver.state is State.ABORTED
    assert t.receiver.finished and t.sender.finished


@pytest.mark.parametrize("when", ["starting", "streaming", "ending"])
def test_receiver_aborts(when: str) -> None:
    t = Transfer(TEXT[:1000])
    t.to_receiver(t.sender.start(t.now))
    if when != "starting":
        t.to_sender(t.receiver.accept(checkpoint=0, prefix_digest="", level="none", rate=0))
        t.send_chunk(100)
    if when == "ending":
        t.pump()
        t.to_receiver(t.sender.end(digest(TEXT[:1000])))
    ev = t.to_sender(t.receiver.abort("disk_full"))
    assert ev == Aborted(code="disk_full", message="")
    assert t.receiver.state is State.ABORTED
    assert t.sender.state is State.ABORTED


def test_sender_may_abort_before_starting() -> None:
    sender = StreamSender(SID, name="f", size=1)
    assert sender.abort("cancelled") == m.Abort(sid=SID, code="cancelled")
    assert sender.state is State.ABORTED


def test_nothing_is_accepted_after_an_abort() -> None:
    t = opened()
    t.to_receiver(t.sender.abort("cancelled"))
    with pytest.raises(ProtocolError):
        t.sender.data(b"x")
    with pytest.raises(RemoteProtocolError):
        t.to_receiver(m.Data(sid=SID, seq=1, offset=CHUNK, raw=1, len=1), b"x")
    assert t.receiver.state is State.ERROR


def test_abort_message_is_a_valid_frame_even_with_a_long_message() -> None:
    t = opened()
    abort = t.sender.abort("cancelled", "x" * 10_000)
    assert wire(abort)[0] == abort


# --- retuning ----------------------------------------------------------------------------


def test_keepalive_ack_retunes_rate_and_level() -> None:
    t = Transfer(TEXT, level="none")
    t.open()
    t.send_chunk()
    assert t.codecs[-1] == m.CODEC_NONE
    t.to_receiver(t.sender.keepalive(t.now))
    ev = t.to_sender(t.receiver.durable(CHUNK, rate=5_000_000, level="fast"))
    assert ev == Checkpointed(checkpoint=CHUNK, rate=5_000_000, level="fast")
    assert (t.sender.rate, t.sender.level) == (5_000_000, "fast")
    t.send_chunk()
    assert t.codecs[-1] == m.CODEC_ZSTD
    t.to_receiver(t.sender.keepalive(t.now))
    t.to_sender(t.receiver.durable(2 * CHUNK, rate=0, level="none"))
    t.send_chunk()
    assert t.codecs[-1] == m.CODEC_NONE
    assert t.out == TEXT[: 3 * CHUNK]


def test_start_ack_sets_rate_and_level() -> None:
    sender = StreamSender(SID, name="f", size=10, want_level="max")
    sender.start(0.0)
    ev = sender.receive(m.StartStreamAck(sid=SID, level="fast", rate=123, checkpoint=0))
    assert ev == Accepted(checkpoint=0, prefix_digest="", level="fast", rate=123)
    assert (sender.rate, sender.level) == (123, "fast")


def test_forged_zstd_frame_is_an_integrity_error() -> None:
    t = Transfer(TEXT)
    t.open()
    forged = b"\x28\xb5\x2f\xfd\xe0" + (2**62).to_bytes(8, "little") + b"\x01\x00\x00"
    msg = m.Data(sid=SID, seq=0, offset=0, raw=100, codec=m.CODEC_ZSTD, len=len(forged))
    with pytest.raises(IntegrityError):
        t.to_receiver(msg, forged)
    assert t.receiver.state is State.ERROR
