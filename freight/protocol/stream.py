"""Resumable stream state machines: :class:`StreamSender`, :class:`StreamReceiver`.

Sans-I/O: messages go in through ``receive()``, events come out; methods that
act return the messages to send. Time is passed in. Each machine's legal moves
are one table, ``(state, input) -> state``; anything else raises and leaves
the machine in ``ERROR``.

Durability is explicit: the receiver only acknowledges a checkpoint when the
application calls :meth:`StreamReceiver.durable` after the bytes are on disk.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import xxhash

from .codec import Compressor, decompress
from .errors import IntegrityError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .limits import (
    CHECKPOINT_INTERVAL,
    KEEPALIVE_SECONDS,
    RECEIVER_MAX_UNACKED_INTERVALS,
    SENDER_WINDOW_INTERVALS,
)
from .messages import (
    LEVEL_NONE,
    Abort,
    Data,
    EndStream,
    EndStreamAck,
    KeepAlive,
    KeepAliveAck,
    Message,
    StartStream,
    StartStreamAck,
)


class State(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"  # StartStream sent/received, no ack yet
    STREAMING = "streaming"
    ENDING = "ending"  # EndStream sent/received, no ack yet
    DONE = "done"
    ABORTED = "aborted"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """Raw bytes made ready for the wire: the work that can run off the
    sender's event loop (compression and checksum)."""

    raw_len: int
    codec: int
    wire: bytes
    xxh: int


def prepare_chunk(raw: bytes, compressor: Compressor) -> PreparedChunk:
    codec, wire = compressor.compress(raw)
    return PreparedChunk(len(raw), codec, wire, xxhash.xxh3_64_intdigest(raw))


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """Receiver accepted the stream; send from ``checkpoint``."""

    checkpoint: int
    prefix_digest: str
    level: str
    rate: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpointed:
    """Everything below ``checkpoint`` is durable at the receiver."""

    checkpoint: int
    rate: int
    level: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    total: int
    verified: bool
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Aborted:
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRequested:
    sid: str
    name: str
    size: int
    mtime: float
    want_level: str
    fresh: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    """Raw (decompressed, checksum-verified) bytes to write at ``offset``."""

    offset: int
    data: bytes
    wire_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRequested:
    """Make everything below ``offset`` durable, then call ``durable()``."""

    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EndRequested:
    """All bytes have arrived; verify ``digest``, then call ``complete()``."""

    total: int
    digest: str


Event = (
    Accepted
    | Checkpointed
    | Finished
    | Aborted
    | StreamRequested
    | DataReceived
    | CheckpointRequested
    | EndRequested
)

S = State
_SENDER_TABLE: Final[dict[tuple[State, str], State]] = {
    (S.IDLE, "send_start"): S.STARTING,
    (S.STARTING, "recv_start_ack"): S.STREAMING,
    (S.STREAMING, "send_data"): S.STREAMING,
    (S.STREAMING, "recv_keepalive_ack"): S.STREAMING,
    (S.STREAMING, "send_end"): S.ENDING,
    (S.ENDING, "recv_keepalive_ack"): S.ENDING,
    (S.ENDING, "recv_end_ack"): S.DONE,
    (S.STARTING, "recv_abort"): S.ABORTED,
    (S.STREAMING, "recv_abort"): S.ABORTED,
    (S.ENDING, "recv_abort"): S.ABORTED,
    (S.IDLE, "send_abort"): S.ABORTED,
    (S.STARTING, "send_abort"): S.ABORTED,
    (S.STREAMING, "send_abort"): S.ABORTED,
    (S.ENDING, "send_abort"): S.ABORTED,
}

_RECEIVER_TABLE: Final[dict[tuple[State, str], State]] = {
    (S.IDLE, "recv_start"): S.STARTING,
    (S.STARTING, "send_start_ack"): S.STREAMING,
    (S.STREAMING, "recv_data"): S.STREAMING,
    (S.STREAMING, "recv_keepalive"): S.STREAMING,
    (S.STREAMING, "send_keepalive_ack"): S.STREAMING,
    (S.STREAMING, "recv_end"): S.ENDING,
    (S.ENDING, "recv_keepalive"): S.ENDING,
    (S.ENDING, "send_keepalive_ack"): S.ENDING,
    (S.ENDING, "send_end_ack"): S.DONE,
    (S.STARTING, "recv_abort"): S.ABORTED,
    (S.STREAMING, "recv_abort"): S.ABORTED,
    (S.ENDING, "recv_abort"): S.ABORTED,
    (S.STARTING, "send_abort"): S.ABORTED,
    (S.STREAMING, "send_abort"): S.ABORTED,
    (S.ENDING, "send_abort"): S.ABORTED,
}

_INPUT_NAMES: Final[dict[type[Message], str]] = {
    StartStream: "recv_start",
    StartStreamAck: "recv_start_ack",
    Data: "recv_data",
    KeepAlive: "recv_keepalive",
    KeepAliveAck: "recv_keepalive_ack",
    EndStream: "recv_end",
    EndStreamAck: "recv_end_ack",
    Abort: "recv_abort",
}


class _Machine:
    _table: dict[tuple[State, str], State]

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.state = State.IDLE

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sid={self.sid} state={self.state.value}>"

    def _move(self, action: str, *, remote: bool) -> None:
        nxt = self._table.get((self.state, action))
        if nxt is None:
            was = self.state
            self.state = State.ERROR
            cls = RemoteProtocolError if remote else LocalProtocolError
            raise cls(f"{action} not allowed in state {was.value} (stream {self.sid})")
        self.state = nxt

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self.state = State.ERROR
        return exc

    def _check_sid(self, msg: Message) -> None:
        sid = getattr(msg, "sid", None)
        if sid != self.sid:
            raise self._fail(RemoteProtocolError(f"message for stream {sid} sent to {self.sid}"))

    @property
    def finished(self) -> bool:
        return self.state in (State.DONE, State.ABORTED, State.ERROR)

    def abort(self, code: str, message: str = "") -> Abort:
        """Give up on the stream; returns the Abort to send."""
        if self.finished:
            self.state = State.ABORTED
        else:
            self._move("send_abort", remote=False)
        return Abort(sid=self.sid, code=code, message=message[:4000])


class StreamSender(_Machine):
    """The side that has the bytes.

    Typical use: ``start()`` → send; on :class:`Accepted`, verify
    ``prefix_digest``, then loop ``send_window()``/``data()``; when the source
    is exhausted ``end(digest)``; wait for :class:`Finished`.
    """

    _table = _SENDER_TABLE

    def __init__(
        self,
        sid: str,
        *,
        name: str,
        size: int,
        mtime: float = 0.0,
        want_level: str = LEVEL_NONE,
        fresh: bool = False,
        checkpoint_interval: int = CHECKPOINT_INTERVAL,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        window_intervals: int = SENDER_WINDOW_INTERVALS,
    ) -> None:
        super().__init__(sid)
        self.name = name
        self.size = size
        self.mtime = mtime
        self.want_level = want_level
        self.fresh = fresh
        self.checkpoint_interval = checkpoint_interval
        self.keepalive_seconds = keepalive_seconds
        self.window_intervals = window_intervals
        self.window = checkpoint_interval * window_intervals
        self.offset = 0  # next byte to send
        self.checkpoint = 0  # durable at the receiver
        self.rate = 0
        self.level = LEVEL_NONE
        self.wire_bytes = 0  # bytes of payload put on the wire, all attempts
        self._seq = 0
        self._last_keepalive_offset = 0
        self._last_keepalive_time = 0.0
        self._compressor = Compressor(LEVEL_NONE)

    def start(self, now: float) -> StartStream:
        self._move("send_start", remote=False)
        self._last_keepalive_time = now
        return StartStream(
            sid=self.sid,
            name=self.name,
            size=self.size,
            mtime=self.mtime,
            want_level=self.want_level,
            fresh=self.fresh,
            interval=self.checkpoint_interval,
        )

    def receive(self, msg: Message) -> Event | None:
        self._check_sid(msg)
        action = _INPUT_NAMES.get(type(msg))
        if action is None:
            raise self._fail(RemoteProtocolError(f"{type(msg).__name__} is not for a sender"))
        self._move(action, remote=True)
        if isinstance(msg, StartStreamAck):
            if msg.checkpoint > self.size:
                raise self._fail(RemoteProtocolError("checkpoint beyond the end of the stream"))
            self.offset = self.checkpoint = self._last_keepalive_offset = msg.checkpoint
            if msg.interval:  # the receiver decides how often it makes bytes durable
                self.checkpoint_interval = msg.interval
                self.window = msg.interval * self.window_intervals
            self._retune(msg.rate, msg.level)
            return Accepted(
                checkpoint=msg.checkpoint,
                prefix_digest=msg.prefix_digest,
                level=msg.level,
                rate=msg.rate,
            )
        if isinstance(msg, KeepAliveAck):
            if not self.checkpoint <= msg.checkpoint <= self.offset:
                raise self._fail(RemoteProtocolError("checkpoint outside what was sent"))
            self.checkpoint = msg.checkpoint
            self._retune(msg.rate, msg.level)
            return Checkpointed(checkpoint=msg.checkpoint, rate=msg.rate, level=msg.level)
        if isinstance(msg, EndStreamAck):
            if msg.total != self.size:
                raise self._fail(RemoteProtocolError("receiver reports a different total"))
            if msg.verified:
                self.checkpoint = msg.total
            return Finished(total=msg.total, verified=msg.verified, digest=msg.digest)
        assert isinstance(msg, Abort)
        return Aborted(code=msg.code, message=msg.message)

    def _retune(self, rate: int, level: str) -> None:
        self.rate = rate
        if level != self.level:
            self.level = level
            self._compressor = Compressor(level)

    def send_window(self) -> int:
        """How many more bytes may be sent before waiting for a checkpoint."""
        if self.state is not State.STREAMING:
            return 0
        return max(0, min(self.size - self.offset, self.checkpoint + self.window - self.offset))

    def data(self, raw: bytes) -> tuple[Data, bytes]:
        """Frame the next ``raw`` bytes of the source (at ``self.offset``),
        compressed at the stream's current level."""
        codec, wire = self._compressor.compress(raw)
        return self.prepared(PreparedChunk(len(raw), codec, wire, xxhash.xxh3_64_intdigest(raw)))

    def prepared(self, chunk: PreparedChunk) -> tuple[Data, bytes]:
        """Frame a chunk that was compressed and checksummed elsewhere (by
        :func:`prepare_chunk`, e.g. in a worker thread ahead of sending)."""
        if chunk.raw_len == 0 or chunk.raw_len > self.send_window():
            raise self._fail(LocalProtocolError("chunk empty or beyond the send window"))
        self._move("send_data", remote=False)
        msg = Data(
            sid=self.sid,
            seq=self._seq,
            offset=self.offset,
            raw=chunk.raw_len,
            codec=chunk.codec,
            xxh=chunk.xxh,
            len=len(chunk.wire),
        )
        self._seq += 1
        self.offset += chunk.raw_len
        self.wire_bytes += len(chunk.wire)
        return msg, chunk.wire

    def keepalive_due(self, now: float) -> bool:
        if self.state not in (State.STREAMING, State.ENDING):
            return False
        if self.offset - self._last_keepalive_offset >= self.checkpoint_interval:
            return True
        if self.offset == self.size and self._last_keepalive_offset < self.offset:
            return True
        return now - self._last_keepalive_time >= self.keepalive_seconds

    def next_deadline(self) -> float:
        """When a time-based KeepAlive is due (for the adapter's timer)."""
        return self._last_keepalive_time + self.keepalive_seconds

    def keepalive(self, now: float) -> KeepAlive:
        if self.state not in (State.STREAMING, State.ENDING):
            raise self._fail(LocalProtocolError(f"keepalive in state {self.state.value}"))
        self._last_keepalive_offset = self.offset
        self._last_keepalive_time = now
        return KeepAlive(sid=self.sid, offset=self.offset)

    def end(self, digest: str) -> EndStream:
        if self.offset != self.size:
            raise self._fail(LocalProtocolError(f"end at {self.offset} of {self.size} bytes"))
        self._move("send_end", remote=False)
        return EndStream(sid=self.sid, total=self.size, digest=digest)


class StreamReceiver(_Machine):
    """The side that writes the bytes and decides rate and level."""

    _table = _RECEIVER_TABLE

    def __init__(
        self,
        sid: str,
        *,
        checkpoint_interval: int = CHECKPOINT_INTERVAL,
        max_unacked_intervals: int = RECEIVER_MAX_UNACKED_INTERVALS,
    ) -> None:
        super().__init__(sid)
        self.size = 0
        self.received = 0  # next expected offset
        self.checkpoint = 0
        self.checkpoint_interval = checkpoint_interval
        self.max_unacked_intervals = max_unacked_intervals
        self.max_unacked = checkpoint_interval * max_unacked_intervals
        self._expect_seq: int | None = None

    def receive(self, msg: Message, payload: bytes = b"") -> Event | None:
        self._check_sid(msg)
        action = _INPUT_NAMES.get(type(msg))
        if action is None:
            raise self._fail(RemoteProtocolError(f"{type(msg).__name__} is not for a receiver"))
        self._move(action, remote=True)
        if isinstance(msg, StartStream):
            self.size = msg.size
            if msg.interval:
                self.checkpoint_interval = min(self.checkpoint_interval, msg.interval)
                self.max_unacked = self.checkpoint_interval * self.max_unacked_intervals
            return StreamRequested(
                sid=msg.sid,
                name=msg.name,
                size=msg.size,
                mtime=msg.mtime,
                want_level=msg.want_level,
                fresh=msg.fresh,
            )
        if isinstance(msg, Data):
            return self._data(msg, payload)
        if isinstance(msg, KeepAlive):
            if not self.checkpoint <= msg.offset <= self.received:
                raise self._fail(RemoteProtocolError("keepalive offset outside received data"))
            return CheckpointRequested(offset=msg.offset)
        if isinstance(msg, EndStream):
            if msg.total != self.size or self.received != self.size:
                raise self._fail(
                    RemoteProtocolError(
                        f"stream ended at {self.received} of {self.size} bytes (claims {msg.total})"
                    )
                )
            return EndRequested(total=msg.total, digest=msg.digest)
        assert isinstance(msg, Abort)
        return Aborted(code=msg.code, message=msg.message)

    def _data(self, msg: Data, payload: bytes) -> DataReceived:
        if len(payload) != msg.len:
            raise self._fail(RemoteProtocolError("payload length differs from header"))
        if msg.offset != self.received:
            raise self._fail(
                RemoteProtocolError(f"data at offset {msg.offset}, expected {self.received}")
            )
        if self._expect_seq is not None and msg.seq != self._expect_seq:
            raise self._fail(
                RemoteProtocolError(f"data seq {msg.seq}, expected {self._expect_seq}")
            )
        if msg.raw == 0 or msg.offset + msg.raw > self.size:
            raise self._fail(RemoteProtocolError("data runs past the declared stream size"))
        if self.received + msg.raw - self.checkpoint > self.max_unacked:
            raise self._fail(RemoteProtocolError("sender ignored the checkpoint window"))
        try:
            raw = decompress(msg.codec, payload, msg.raw)
        except IntegrityError as exc:
            raise self._fail(exc) from None
        if xxhash.xxh3_64_intdigest(raw) != msg.xxh:
            raise self._fail(
                IntegrityError(f"checksum mismatch in frame {msg.seq} at {msg.offset}")
            )
        self._expect_seq = msg.seq + 1
        self.received += msg.raw
        return DataReceived(offset=msg.offset, data=raw, wire_bytes=msg.len)

    def accept(
        self, *, checkpoint: int, prefix_digest: str, level: str, rate: int
    ) -> StartStreamAck:
        if checkpoint > self.size:
            raise self._fail(LocalProtocolError("checkpoint beyond the stream size"))
        self._move("send_start_ack", remote=False)
        self.received = self.checkpoint = checkpoint
        return StartStreamAck(
            sid=self.sid,
            level=level,
            rate=rate,
            checkpoint=checkpoint,
            prefix_digest=prefix_digest,
            interval=self.checkpoint_interval,
        )

    def durable(self, offset: int, *, rate: int, level: str) -> KeepAliveAck:
        """The application made everything below ``offset`` durable."""
        if not self.checkpoint <= offset <= self.received:
            raise self._fail(LocalProtocolError("durable offset outside received data"))
        self._move("send_keepalive_ack", remote=False)
        self.checkpoint = offset
        return KeepAliveAck(sid=self.sid, checkpoint=offset, rate=rate, level=level)

    def complete(self, *, verified: bool, digest: str) -> EndStreamAck:
        self._move("send_end_ack", remote=False)
        if verified:
            self.checkpoint = self.size
        return EndStreamAck(sid=self.sid, total=self.size, verified=verified, digest=digest)
