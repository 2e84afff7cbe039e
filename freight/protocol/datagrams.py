"""Tunnel datagrams, sans-I/O (docs/protocol.md §19).

A UDP tunnel carries datagrams over a reliable, ordered byte stream (one
end-to-end encrypted tunnel stream per flow). Each datagram is one record::

    kind (u8, 0 = datagram) | length (u16, big-endian) | payload (length bytes)

:class:`DatagramDecoder` turns stream bytes back into datagrams; a record
with another kind, or longer than the receiver's ``max_datagram``, raises
:class:`MalformedDatagram` / :class:`DatagramTooLarge` and the decoder stays
failed. It buffers at most one partial record.

A *flow* is what NAT tables call a UDP "connection": the datagrams of one
source address (and their answers). :class:`FlowTable` keys flows by source
address, bounds how many exist and how many are being opened at once, and
expires them after ``idle_timeout`` seconds without a datagram in either
direction. Datagrams for the stream wait in a bounded queue per flow (and
one bound for the whole table); beyond it they are dropped and counted,
as a full socket buffer drops them. A flow whose stream failed holds its
source for ``failed_hold`` seconds, dropping its datagrams, so a source
cannot make the tunnel open a stream per datagram. Time is passed in.

Flow states (``(state, input) -> state``; anything else raises
:class:`~freight.protocol.errors.LocalProtocolError` and leaves ``ERROR``):

=========  ===========  =========  ========================================
state      input        next       meaning
=========  ===========  =========  ========================================
OPENING    to_stream    OPENING    queued until the stream is open
OPENING    opened       OPEN       the stream is open: the queue may flow
OPEN       to_stream    OPEN       a datagram from the local side, queued
OPEN       from_stream  OPEN       records from the stream, decoded
OPENING    failed       FAILED     the stream could not be opened
OPEN       failed       FAILED     the stream broke or sent garbage
OPEN       ended        CLOSED     the far end closed the stream
any        expire       CLOSED     idle too long (FAILED: hold is over)
any        close        CLOSED     closed by the tunnel
CLOSED     to_stream,   CLOSED     late datagrams are dropped
           from_stream
=========  ===========  =========  ========================================
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from .errors import LocalProtocolError, RemoteProtocolError

KIND_DATAGRAM: Final = 0
HEADER: Final = struct.Struct(">BH")
HEADER_SIZE: Final = HEADER.size
MAX_DATAGRAM: Final = 65507  # the largest UDP payload over IPv4
IDLE_TIMEOUT: Final = 60.0
MAX_FLOWS: Final = 1024
MAX_OPENING: Final = 32
FLOW_QUEUE: Final = 4 * 1024 * 1024  # bytes waiting for one flow's stream (130 ms at 30 MB/s)
TABLE_QUEUE: Final = 16 * 1024 * 1024  # bytes waiting in all of a table's flows
FAILED_HOLD: Final = 5.0

# A source address as the socket layer gives it: (host, port) for IPv4,
# (host, port, flowinfo, scope_id) for IPv6. The machine only compares them.
Address: TypeAlias = tuple[Any, ...]


class MalformedDatagram(RemoteProtocolError):
    """The far end of a UDP tunnel sent bytes that are not datagram records."""

    code = "malformed_datagram"
    hint = "the far end of the UDP tunnel is not a Freight datagram peer; the flow was closed"


class DatagramTooLarge(MalformedDatagram):
    """A datagram record is longer than this end accepts."""

    code = "datagram_too_large"
    hint = "datagrams through a UDP tunnel are at most 65,507 bytes; the flow was closed"


def encode(datagram: bytes) -> bytes:
    """One datagram as a record (``len(datagram)`` must fit in a u16)."""
    if len(datagram) > 0xFFFF:
        raise LocalProtocolError(f"a datagram of {len(datagram)} bytes does not fit a record")
    return HEADER.pack(KIND_DATAGRAM, len(datagram)) + datagram


class DatagramDecoder:
    """Bytes of a tunnel stream in, datagrams out."""

    def __init__(self, max_datagram: int = MAX_DATAGRAM) -> None:
        if not 0 < max_datagram <= 0xFFFF:
            raise ValueError("max_datagram must be 1..65535")
        self.max_datagram = max_datagram
        self._buf = bytearray()
        self.failed = False

    def __repr__(self) -> str:
        state = "failed" if self.failed else f"pending={len(self._buf)}"
        return f"<DatagramDecoder {state}>"

    @property
    def pending(self) -> int:
        """Bytes of a partial record held (at most a header and ``max_datagram``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The datagrams ``data`` completes, in order."""
        if self.failed:
            raise LocalProtocolError("the datagram decoder failed before; close the flow")
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        out: list[bytes] = []
        pos, end = 0, len(view)
        unpack, limit = HEADER.unpack_from, self.max_datagram
        while end - pos >= HEADER_SIZE:
            kind, length = unpack(view, pos)
            if kind != KIND_DATAGRAM:
                self.failed = True
                raise MalformedDatagram(f"unknown datagram record kind {kind}")
            if length > limit:
                self.failed = True
                raise DatagramTooLarge(
                    f"a datagram record of {length} bytes (this end takes at most {limit})"
                )
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            out.append(bytes(view[pos + HEADER_SIZE : stop]))
            pos = stop
        if buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
        return out

    def end(self) -> None:
        """The stream ended: a partial record left over is an error."""
        if self._buf and not self.failed:
            self.failed = True
            raise MalformedDatagram(
                f"the tunnel stream ended inside a datagram record ({len(self._buf)} bytes)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowLimits:
    """The bounds of one tunnel's flows (the module constants by default)."""

    idle_timeout: float = IDLE_TIMEOUT
    max_flows: int = MAX_FLOWS
    max_opening: int = MAX_OPENING
    max_datagram: int = MAX_DATAGRAM
    flow_queue: int = FLOW_QUEUE
    table_queue: int = TABLE_QUEUE
    failed_hold: float = FAILED_HOLD

    def __post_init__(self) -> None:
        if not self.idle_timeout > 0 or not self.failed_hold >= 0:
            raise ValueError("idle_timeout must be > 0 and failed_hold >= 0")
        if self.max_flows < 1 or self.max_opening < 1:
            raise ValueError("max_flows and max_opening must be >= 1")
        if not 0 < self.max_datagram <= MAX_DATAGRAM:
            raise ValueError(f"max_datagram must be 1..{MAX_DATAGRAM}")
        if self.flow_queue < self.max_datagram + HEADER_SIZE:
            raise ValueError("flow_queue must hold at least one datagram")
        if self.table_queue < self.flow_queue:
            raise ValueError("table_queue must be >= flow_queue")


@dataclass(slots=True)
class Counters:
    """What a table (or one flow) has done, for stats and /metrics."""

    datagrams_out: int = 0  # to the stream (from the local side)
    bytes_out: int = 0
    datagrams_in: int = 0  # from the stream (to the local side)
    bytes_in: int = 0
    dropped_queue: int = 0  # the flow's or the table's queue was full
    dropped_size: int = 0  # larger than max_datagram
    dropped_closed: int = 0  # arrived for a closed or failed flow
    flows_opened: int = 0
    flows_refused: int = 0  # new sources refused: table full or too many opening
    flows_expired: int = 0
    flows_failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class FlowState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"
    ERROR = "error"


S = FlowState
_TABLE: Final[dict[str, dict[FlowState, FlowState]]] = {
    "to_stream": {S.OPENING: S.OPENING, S.OPEN: S.OPEN, S.CLOSED: S.CLOSED},
    "from_stream": {S.OPEN: S.OPEN, S.CLOSED: S.CLOSED},
    "opened": {S.OPENING: S.OPEN},
    "failed": {S.OPENING: S.FAILED, S.OPEN: S.FAILED},
    "ended": {S.OPEN: S.CLOSED},
    "expire": {S.OPENING: S.CLOSED, S.OPEN: S.CLOSED, S.FAILED: S.CLOSED},
    "close": {s: S.CLOSED for s in FlowState if s is not S.ERROR},
}
# Per-datagram checks compare identities: an enum's hash is Python code, so
# the table is looked up only off the common path.
_OPEN: Final = S.OPEN
_OPENING: Final = S.OPENING


@dataclass(slots=True)
class _Queue:
    """Bytes queued in a table's flows altogether."""

    limit: int
    size: int = 0


class Flow:
    """One source address's datagrams and the stream that carries them."""

    def __init__(
        self,
        fid: int,
        source: Address,
        limits: FlowLimits,
        now: float,
        *,
        counters: Counters | None = None,
        shared: _Queue | None = None,
        state: FlowState = FlowState.OPENING,
    ) -> None:
        self.id = fid
        self.source = source
        self.limits = limits
        self.state = state
        self.last = now  # the last datagram, either way
        self.error = ""  # why it failed, for the log
        self.counters = counters if counters is not None else Counters()
        self._shared = shared if shared is not None else _Queue(limits.table_queue)
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._decoder = DatagramDecoder(limits.max_datagram)

    @classmethod
    def open_to(cls, target: Address, limits: FlowLimits, now: float) -> Flow:
        """The far side's one flow: its stream is already open."""
        return cls(0, target, limits, now, state=FlowState.OPEN)

    def __repr__(self) -> str:
        return f"<Flow {self.id} {self.source!r} {self.state.value} queued={self._queued}>"

    def _step(self, event: str) -> None:
        nxt = _TABLE[event].get(self.state)
        if nxt is None:
            was, self.state = self.state, FlowState.ERROR
            raise LocalProtocolError(f"datagram flow {self.id}: {event!r} in state {was.value}")
        self.state = nxt

    @property
    def queued(self) -> int:
        """Bytes of records waiting for the stream."""
        return self._queued

    def deadline(self) -> float:
        """When the flow expires unless a datagram comes first."""
        if self.state is FlowState.FAILED:
            return self.last + self.limits.failed_hold
        return self.last + self.limits.idle_timeout

    def to_stream(self, datagram: bytes, now: float) -> bool:
        """A datagram for the far end; False when it was dropped."""
        state = self.state
        c, n = self.counters, len(datagram)
        if state is not _OPEN and state is not _OPENING:
            self._step("to_stream")  # CLOSED stays CLOSED; anything else raises
            c.dropped_closed += 1
            return False
        if n > self.limits.max_datagram:
            c.dropped_size += 1
            return False
        size = n + HEADER_SIZE
        shared = self._shared
        if self._queued + size > self.limits.flow_queue or shared.size + size > shared.limit:
            c.dropped_queue += 1
            return False
        self._queue.append(HEADER.pack(KIND_DATAGRAM, n))
        self._queue.append(datagram)
        self._queued += size
        shared.size += size
        self.last = now
        c.datagrams_out += 1
        c.bytes_out += n
        return True

    def take(self) -> bytes:
        """Every queued record, for one write to the stream (b"" if none)."""
        if self.state is not FlowState.OPEN or not self._queue:
            return b""
        data = b"".join(self._queue)
        self._queue.clear()
        self._shared.size -= self._queued
        self._queued = 0
        return data

    def from_stream(self, data: bytes, now: float) -> list[bytes]:
        """Stream bytes in, the datagrams they complete out. Garbage fails
        the flow and raises :class:`MalformedDatagram`."""
        if self.state is not _OPEN:
            self._step("from_stream")  # CLOSED stays CLOSED; anything else raises
            return []
        try:
            out = self._decoder.feed(data)
        except MalformedDatagram as exc:
            self.failed(now, str(exc))
            raise
        if out:
            self.last = now
            c = self.counters
            c.datagrams_in += len(out)
            c.bytes_in += sum(map(len, out))
        return out

    def opened(self) -> None:
        self._step("opened")

    def failed(self, now: float, why: str = "") -> None:
        """The stream failed; the source is held for ``failed_hold``."""
        self._step("failed")
        self.last = now
        self.error = why
        self.counters.flows_failed += 1
        self._drop_queue()

    def ended(self) -> None:
        """The far end closed the stream; a partial record left is garbage."""
        self._step("ended")
        self._drop_queue()
        self._decoder.end()

    def expire(self) -> None:
        self._step("expire")
        self._drop_queue()

    def close(self) -> None:
        self._step("close")
        self._drop_queue()

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._shared.size -= self._queued
        self._queued = 0


class FlowTable:
    """The flows of one tunnel, keyed by source address."""

    def __init__(self, limits: FlowLimits | None = None) -> None:
        self.limits = limits if limits is not None else FlowLimits()
        self.counters = Counters()
        self._flows: dict[Address, Flow] = {}
        self._queue = _Queue(self.limits.table_queue)
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._flows)

    def __repr__(self) -> str:
        return f"<FlowTable flows={len(self._flows)} queued={self._queue.size}>"

    @property
    def queued(self) -> int:
        return self._queue.size

    def get(self, source: Address) -> Flow | None:
        return self._flows.get(source)

    def flows(self) -> list[Flow]:
        return list(self._flows.values())

    def opening(self) -> int:
        return sum(1 for f in self._flows.values() if f.state is FlowState.OPENING)

    def to_stream(self, source: Address, datagram: bytes, now: float) -> tuple[Flow | None, bool]:
        """A datagram from ``source``: ``(flow, new)``. ``new`` means the
        caller opens a stream for the flow; ``(None, False)`` means the
        datagram was refused (counted) and no flow exists for it."""
        flow = self._flows.get(source)
        if flow is not None:
            state = flow.state
            if state is _OPEN or state is _OPENING:
                flow.to_stream(datagram, now)
                return flow, False
            self.counters.dropped_closed += 1  # FAILED: held until its deadline
            return None, False
        limits = self.limits
        if len(self._flows) >= limits.max_flows or self.opening() >= limits.max_opening:
            self.counters.flows_refused += 1
            return None, False
        if len(datagram) > limits.max_datagram:
            self.counters.dropped_size += 1
            return None, False
        flow = Flow(self._next_id, source, limits, now, counters=self.counters, shared=self._queue)
        self._next_id += 1
        self._flows[source] = flow
        self.counters.flows_opened += 1
        flow.to_stream(datagram, now)
        return flow, True

    def remove(self, flow: Flow) -> None:
        """Forget a flow (closing it first if it is not closed)."""
        if flow.state is not FlowState.CLOSED and flow.state is not FlowState.ERROR:
            flow.close()
        if self._flows.get(flow.source) is flow:
            del self._flows[flow.source]

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (None: no flows)."""
        return min((f.deadline() for f in self._flows.values()), default=None)

    def expire(self, now: float) -> list[Flow]:
        """Close and forget the flows whose deadline passed; returns them
        (their streams are for the caller to close)."""
        gone = [f for f in self._flows.values() if f.deadline() <= now]
        for flow in gone:
            if flow.state is not FlowState.FAILED:
                self.counters.flows_expired += 1
            flow.expire()
            del self._flows[flow.source]
        return gone

    def close(self) -> list[Flow]:
        """Close every flow (the tunnel ends); returns them."""
        gone = list(self._flows.values())
        for flow in gone:
            if flow.state is not FlowState.ERROR:
                flow.close()
        self._flows.clear()
        return gone
