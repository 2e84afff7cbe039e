"""The bandwidth probe, without I/O (docs/protocol.md "20. Bandwidth probe").

A probe measures one direction of one path by a *train*: back-to-back
sealed records (``ProbeData``) sent for a while, whose arrivals the receiver
timestamps with its own clock. Only the receiver's clock is used, so the
two clocks never need to agree; a round trip is timed by the sender alone
(``Probe(op="ping")`` and its answer).

- :class:`TrainReceiver` timestamps one train's arrivals into a bounded list
  of samples ``(microseconds since the first record, bytes by then)``.
- :class:`ProbeResponder` is the hub's end: a table of what each request
  does in each state; anything else is a :class:`MalformedProbe` and the
  machine stays broken.
- :func:`estimate` turns samples into capacity and available bandwidth.

Why a train of a second or two and not a packet pair: records travel over
TCP (inside TLS or a sealed data connection), whose segmentation and
acknowledgement clocking hide the spacing of single packets from the
application; what the application can see reliably is the rate at which a
saturating train arrives once TCP has left slow start. Time is passed in.
"""

from __future__ import annotations

import enum
import itertools
import statistics
from dataclasses import dataclass
from typing import Final

from .errors import RemoteProtocolError
from .limits import MAX_PROBE_RECORD, MAX_PROBE_SAMPLES, MAX_PROBE_SECONDS
from .messages import Probe, ProbeData, ProbeReport

# A train runs at least this long and at least TRAIN_RTTS round trips (TCP
# needs some round trips to leave slow start), at most MAX_PROBE_SECONDS.
MIN_TRAIN_SECONDS: Final = 1.5
TRAIN_RTTS: Final = 25
# The first part of a train is TCP's slow start: the estimate ignores it.
RAMP_SHARE: Final = 0.3
# The receiver refuses a train that goes on past its promised length by this.
TRAIN_GRACE_SECONDS: Final = 5.0
# Capacity: the rate of the best of this many windows of the steady part.
CAPACITY_WINDOWS: Final = 8


class MalformedProbe(RemoteProtocolError):
    """A probe request or record the peer should not have sent."""

    code = "malformed_probe"


def train_seconds(rtt: float) -> float:
    """How long a train should run on a path with round-trip time ``rtt``."""
    return min(MAX_PROBE_SECONDS, max(MIN_TRAIN_SECONDS, TRAIN_RTTS * rtt))


class TrainReceiver:
    """Arrivals of one train. Memory is bounded whatever the sender does:
    when the samples fill up, every other one is dropped and from then on
    only every other arrival is kept (the last arrival always is)."""

    def __init__(self, pid: str, *, size: int = MAX_PROBE_RECORD, limit: int = MAX_PROBE_SAMPLES):
        if limit < 4:
            raise ValueError("limit must be at least 4")
        self.pid = pid
        self.size = size
        self.limit = limit
        self.records = 0
        self.total = 0
        self.first: float | None = None
        self.last = 0.0
        self._samples: list[tuple[int, int]] = []
        self._stride = 1

    def arrive(self, msg: ProbeData, nbytes: int, now: float) -> None:
        """Record ``msg`` (``nbytes`` of payload) as arrived at ``now``."""
        if msg.pid != self.pid:
            raise MalformedProbe(f"probe record for {msg.pid!r} inside train {self.pid!r}")
        if msg.seq != self.records:
            raise MalformedProbe(f"probe record {msg.seq} where {self.records} was due")
        if nbytes > self.size:
            raise MalformedProbe(f"probe record of {nbytes} bytes, more than {self.size}")
        if self.first is None:
            self.first = now
        elif now - self.first > MAX_PROBE_SECONDS + TRAIN_GRACE_SECONDS:
            raise MalformedProbe(f"probe train longer than {MAX_PROBE_SECONDS:g} s")
        self.last = max(now, self.last)
        self.records += 1
        self.total += nbytes
        if msg.seq % self._stride == 0:
            if len(self._samples) >= self.limit - 1:  # room for the last arrival
                self._samples = self._samples[::2]
                self._stride *= 2
            if msg.seq % self._stride == 0:
                self._samples.append(self._point(now))

    def _point(self, now: float) -> tuple[int, int]:
        assert self.first is not None
        return (round((now - self.first) * 1e6), self.total)

    def samples(self) -> list[tuple[int, int]]:
        """At most ``limit`` samples, in arrival order, the last arrival last."""
        out = list(self._samples)
        if self.records and (not out or out[-1][1] != self.total):
            out.append(self._point(self.last))
        return out

    def report(self, op: str = "end") -> ProbeReport:
        return ProbeReport(pid=self.pid, op=op, records=self.records, samples=self.samples())


class State(enum.Enum):
    IDLE = "idle"
    RECEIVING = "receiving"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTrain:
    """The responder's instruction: send a train of ``size``-byte records
    for ``seconds``, then the report ``ProbeReport(pid, op="down")``."""

    pid: str
    seconds: float
    size: int


# (state, request op) -> next state; anything else is malformed.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.IDLE, "ping"): State.IDLE,
    (State.IDLE, "up"): State.RECEIVING,
    (State.IDLE, "down"): State.IDLE,
    (State.RECEIVING, "ping"): State.RECEIVING,
    (State.RECEIVING, "end"): State.IDLE,
}


class ProbeResponder:
    """The hub's end of probes on one channel: one train at a time."""

    def __init__(self) -> None:
        self.state = State.IDLE
        self.train: TrainReceiver | None = None

    def __repr__(self) -> str:
        return f"<ProbeResponder {self.state.value}>"

    def request(self, msg: Probe) -> ProbeReport | SendTrain:
        """What to answer ``msg`` with: a report to send, or a train."""
        key = (self.state, msg.op)
        nxt = TRANSITIONS.get(key)
        if nxt is None:
            self.state = State.ERROR
            raise MalformedProbe(f"probe {msg.op!r} not allowed while {key[0].value}")
        if msg.op in ("up", "end") and self.train is not None and self.train.pid != msg.pid:
            self.state = State.ERROR
            raise MalformedProbe(f"probe {msg.op!r} for {msg.pid!r} during {self.train.pid!r}")
        self.state = nxt
        if msg.op == "up":
            self.train = TrainReceiver(msg.pid, size=msg.size)
            return ProbeReport(pid=msg.pid, op="ping")  # ready: the train may start
        if msg.op == "end":
            assert self.train is not None
            report, self.train = self.train.report(), None
            return report
        if msg.op == "down":
            return SendTrain(pid=msg.pid, seconds=msg.seconds, size=msg.size)
        return ProbeReport(pid=msg.pid, op="ping")

    def data(self, msg: ProbeData, nbytes: int, now: float) -> None:
        """A record of the train being received."""
        if self.state is not State.RECEIVING or self.train is None:
            self.state = State.ERROR
            raise MalformedProbe("probe record outside a train")
        try:
            self.train.arrive(msg, nbytes, now)
        except MalformedProbe:
            self.state = State.ERROR
            raise


@dataclass(frozen=True, slots=True)
class Estimate:
    """One direction of a path: bytes/s and seconds."""

    capacity: float
    available: float
    rtt: float
    bytes: int
    seconds: float


def _rate(a: tuple[int, int], b: tuple[int, int]) -> float:
    return (b[1] - a[1]) / ((b[0] - a[0]) / 1e6) if b[0] > a[0] else 0.0


def _at(samples: list[tuple[int, int]], t: float) -> tuple[int, int]:
    """The first sample at or after ``t`` (the last one if none)."""
    for s in samples:
        if s[0] >= t:
            return s
    return samples[-1]


def estimate(samples: list[tuple[int, int]], rtt: float) -> Estimate:
    """Capacity and available bandwidth from one train's arrival samples.

    The first :data:`RAMP_SHARE` of the train's span is TCP's slow start
    and is left out; the rest is cut into :data:`CAPACITY_WINDOWS` windows
    of equal time. Available bandwidth is the median of their rates: what
    one more TCP flow gets on the path, other traffic included; a receiver
    that stalled for a moment and then took a burst of records at once
    makes one window slow and one fast, and moves the median little.
    Capacity is the second-best window (never below the available
    bandwidth): with cross traffic, what the path carries when the others
    pause."""
    if len(samples) < 3 or samples[-1][0] <= samples[0][0]:
        raise MalformedProbe("a probe train needs at least three arrivals spread in time")
    for a, b in itertools.pairwise(samples):
        if b[0] < a[0] or b[1] < a[1]:
            raise MalformedProbe("probe samples must grow in time and bytes")
    span = samples[-1][0] - samples[0][0]
    start = samples[0][0] + RAMP_SHARE * span
    steady = [s for s in samples if s[0] >= start]
    if len(steady) < 2 or steady[-1][0] <= steady[0][0]:
        steady = samples
    width = (steady[-1][0] - steady[0][0]) / CAPACITY_WINDOWS
    rates = []
    for k in range(CAPACITY_WINDOWS):
        a = _at(steady, steady[0][0] + k * width)
        b = _at(steady, steady[0][0] + (k + 1) * width)
        if b[0] > a[0]:
            rates.append(_rate(a, b))
    if not rates:  # too few samples for windows: the steady part as a whole
        rates = [_rate(steady[0], steady[-1])]
    rates.sort()
    available = statistics.median(rates)
    best = max(available, rates[-2] if len(rates) > 1 else rates[-1])
    return Estimate(
        capacity=best,
        available=available,
        rtt=rtt,
        bytes=samples[-1][1],
        seconds=span / 1e6,
    )
