"""Measure the path to the hub (docs/protocol.md "20. Bandwidth probe").

:func:`probe` opens a link the way a transfer does (a sealed data
connection when it can be made, else frames inside the TLS control
channel), times a few round trips, then runs a train each way: up, the hub
timestamps the records this end sends; down, this end timestamps the
records the hub sends. :func:`available_bandwidth` is the figure a
``--limit NN%`` takes its share of.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..errors import NetworkError, UsageError, code_to_error
from ..protocol import messages as m
from ..protocol.probe import Estimate, MalformedProbe, TrainReceiver, estimate, train_seconds
from ..transport.channel import Mux
from ..transport.shallow import shallow_writes
from .session import HubSession

Direction = Literal["up", "down", "both"]
DIRECTIONS: Final = ("up", "down", "both")
PINGS: Final = 5
RECORD_BYTES: Final = 64 * 1024
# How long past a train's own length its answer may take (a shaped path
# still drains what was queued when the sender stopped).
ANSWER_GRACE: Final = 30.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe found; bytes/s and seconds. ``path`` is ``data`` (a
    sealed data connection) or ``tls`` (inside the control channel)."""

    rtt: float
    up: Estimate | None
    down: Estimate | None
    path: str

    def as_dict(self) -> dict[str, Any]:
        def one(e: Estimate | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "capacity": round(e.capacity),
                "available": round(e.available),
                "bytes": e.bytes,
                "seconds": round(e.seconds, 3),
            }

        return {
            "rtt": round(self.rtt, 6),
            "up": one(self.up),
            "down": one(self.down),
            "path": self.path,
        }


class _Prober:
    """One probe over one multiplexed channel (its control queue)."""

    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.chan = mux.channel

    async def answer(self, pid: str, deadline: float) -> m.ProbeReport:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError("the hub did not answer the bandwidth probe in time")
            async with asyncio.timeout(left):
                msg, _ = await self.mux.recv_control()
            if isinstance(msg, m.ProbeReport) and msg.pid == pid:
                return msg
            if isinstance(msg, m.Error):
                raise code_to_error(msg.code, msg.message)
            # Anything else (a ping, a stray answer) is not ours: skip it.

    async def rtt(self, pings: int = PINGS) -> float:
        best = float("inf")
        for _ in range(pings):
            pid = "ping-" + secrets.token_hex(4)
            started = time.monotonic()
            await self.chan.send(m.Probe(pid=pid, op="ping"))
            await self.answer(pid, started + ANSWER_GRACE)
            best = min(best, time.monotonic() - started)
        return best

    async def up(self, seconds: float, size: int, rtt: float) -> Estimate:
        pid = "up-" + secrets.token_hex(4)
        await self.chan.send(m.Probe(pid=pid, op="up", seconds=seconds, size=size))
        await self.answer(pid, time.monotonic() + ANSWER_GRACE)  # ready
        # Random filler: a WebSocket that compresses must not shrink it.
        filler = os.urandom(size)
        record = 0
        with shallow_writes(self.chan):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await self.chan.send(m.ProbeData(pid=pid, seq=record, len=size), filler)
                record += 1
        await self.chan.send(m.Probe(pid=pid, op="end"))
        report = await self.answer(pid, time.monotonic() + ANSWER_GRACE + seconds)
        if report.op != "end" or report.records != record:
            raise MalformedProbe(
                f"the hub counted {report.records} probe records of the {record} sent"
            )
        return estimate(report.samples, rtt)

    async def down(self, seconds: float, size: int, rtt: float) -> Estimate:
        pid = "down-" + secrets.token_hex(4)
        train = TrainReceiver(pid, size=size)
        await self.chan.send(m.Probe(pid=pid, op="down", seconds=seconds, size=size))
        deadline = time.monotonic() + seconds + ANSWER_GRACE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError("the hub's probe train did not end in time")
            async with asyncio.timeout(left):
                msg, payload = await self.mux.recv_control()
            if isinstance(msg, m.ProbeData):
                train.arrive(msg, len(payload), time.monotonic())
            elif isinstance(msg, m.ProbeReport) and msg.pid == pid:
                if msg.records != train.records:
                    raise MalformedProbe(
                        f"the hub sent {msg.records} probe records, {train.records} arrived"
                    )
                return estimate(train.samples(), rtt)
            elif isinstance(msg, m.Error):
                raise code_to_error(msg.code, msg.message)


async def probe(
    session: HubSession,
    *,
    direction: Direction = "both",
    seconds: float | None = None,
    size: int = RECORD_BYTES,
    data_path: str = "auto",
) -> ProbeResult:
    """Round-trip time, and capacity and available bandwidth of the path to
    the hub in ``direction``. ``seconds`` is each train's length (default:
    long enough for TCP to leave slow start on this path's round trip)."""
    if direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}")
    link = await session.open_link(data_path)
    try:
        port = await link.stream_port("probe-" + secrets.token_hex(4))
        try:
            prober = _Prober(port.mux)
            rtt = await prober.rtt()
            length = seconds if seconds is not None else train_seconds(rtt)
            up = await prober.up(length, size, rtt) if direction in ("up", "both") else None
            down = await prober.down(length, size, rtt) if direction in ("down", "both") else None
            path = "tls" if port.mux is link.mux else "data"
        finally:
            await link.release(port)
    finally:
        await link.aclose()
    return ProbeResult(rtt=rtt, up=up, down=down, path=path)


async def available_bandwidth(
    session: HubSession, direction: Literal["up", "down"] = "up", *, seconds: float | None = None
) -> float:
    """Bytes/s one more transfer can expect on the path to the hub, ``up``
    (towards the hub: push, send) or ``down`` (pull, receive)."""
    result = await probe(session, direction=direction, seconds=seconds)
    found = result.up if direction == "up" else result.down
    assert found is not None
    return found.available
