"""Transfers in flight, as people watch them: every push and pull the hub
serves and every relayed connection, with bytes done, a rate over the
last seconds and an ETA, and the hub's throughput over the last hour.

The board knows what runs because the stream service tells it
(:meth:`TransferBoard.track`) and the relay's table is read at each tick.
One sampler task (:meth:`TransferBoard.run`, owned by the hub's
supervisor) reads every live transfer's byte count once a second into a
ring of ``SAMPLES`` per transfer, so the rate is the bytes of the last ten
seconds; what every transfer moved in a second adds up to the hub's
throughput, kept as ``MINUTES`` one-minute averages. Every table here is
bounded by the number of live transfers (at most ``MAX_LIVE`` tracked)
or by a fixed length."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.pairing import CODE_APP_PREFIX
from .relayconn import Conn

__all__ = ["MAX_LIVE", "MINUTES", "SAMPLES", "Transfer", "TransferBoard"]

SAMPLES = 11  # one a second: the rate is over the last 10 s
MINUTES = 60  # one-minute throughput averages kept
TICK = 1.0  # seconds between samples
MAX_LIVE = 100_000  # transfers tracked at once (more run, untracked)


def _rate(samples: deque[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0


@dataclass(eq=False, slots=True)
class Transfer:
    """One push or pull the hub serves. The stream code sets ``done`` and
    ``checkpoint`` as bytes arrive (or ``probe`` reads them, for a pull)."""

    tid: str
    kind: str  # push | pull
    user_id: int
    user: str
    name: str
    size: int
    started: float = field(default_factory=time.time)
    done: int = 0
    checkpoint: int = 0
    retry: str = ""  # why this is a second attempt, if it is
    probe: Callable[[], tuple[int, int]] | None = None  # (done, checkpoint)
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    counted: int = 0  # bytes already added to the throughput

    def refresh(self) -> None:
        if self.probe is not None:
            self.done, self.checkpoint = self.probe()

    def describe(self) -> dict[str, Any]:
        rate = _rate(self.samples)
        left = max(0, self.size - self.done)
        return {
            "id": self.tid,
            "kind": self.kind,
            "user": self.user,
            "name": self.name,
            "size": self.size,
            "done": self.done,
            "rate": round(rate),
            "eta": round(left / rate, 1) if rate > 0 and self.size else None,
            "checkpoint": self.checkpoint,
            "retry": self.retry,
            "started": self.started,
        }


def _conn_kind(conn: Conn) -> str:
    return "send" if conn.app.startswith(CODE_APP_PREFIX) else "relay"


def _conn_bytes(conn: Conn) -> int:
    return int(conn.relayed[DIAL] + conn.relayed[ACCEPT])


class TransferBoard:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # for rates
        self.wall = wall  # for minutes and the start
        self.started = wall()
        self.live: dict[str, Transfer] = {}
        self.untracked = 0  # transfers not tracked (past MAX_LIVE)
        # Relayed connections: cid -> recent (time, bytes) samples.
        self._conn_samples: dict[str, deque[tuple[float, int]]] = {}
        self._conn_counted: dict[str, int] = {}
        self._ended = 0  # bytes of transfers that ended since the last tick
        self._seconds: deque[tuple[float, int]] = deque(maxlen=SAMPLES)  # (time, total moved)
        self._moved = 0  # bytes moved since start, all transfers
        self._minute: tuple[int, int] = (0, 0)  # (minute number, bytes moved at its start)
        self.minutes: deque[tuple[float, float]] = deque(maxlen=MINUTES)  # (start, bytes/s)

    # --- what runs ---------------------------------------------------------------

    def start(self, transfer: Transfer) -> None:
        """Show ``transfer`` until :meth:`finish` (a second one under the
        same id replaces it: a sender that came back)."""
        transfer.counted = transfer.done  # bytes of an earlier attempt
        if len(self.live) >= MAX_LIVE and transfer.tid not in self.live:
            self.untracked += 1
            return
        self.live[transfer.tid] = transfer

    def finish(self, transfer: Transfer) -> None:
        if self.live.get(transfer.tid) is transfer:
            del self.live[transfer.tid]
        transfer.refresh()
        self._ended += max(0, transfer.done - transfer.counted)
        transfer.counted = transfer.done

    @contextlib.contextmanager
    def track(self, transfer: Transfer) -> Iterator[Transfer]:
        """Show ``transfer`` while the block runs."""
        self.start(transfer)
        try:
            yield transfer
        finally:
            self.finish(transfer)

    def conn_closed(self, conn: Conn, code: str, by: str) -> None:
        """The relay's hook: a connection ended (its last bytes count)."""
        counted = self._conn_counted.pop(conn.cid, None)
        self._conn_samples.pop(conn.cid, None)
        if counted is not None:
            self._ended += max(0, _conn_bytes(conn) - counted)

    # --- the sampler -------------------------------------------------------------

    def sample(self, conns: Iterable[Conn], now: float | None = None) -> None:
        """One tick: read every live transfer and connection's bytes."""
        now = self.clock() if now is None else now
        moved, self._ended = self._ended, 0
        for t in list(self.live.values()):
            t.refresh()
            t.samples.append((now, t.done))
            moved += max(0, t.done - t.counted)
            t.counted = t.done
        seen = set()
        for conn in conns:
            seen.add(conn.cid)
            total = _conn_bytes(conn)
            ring = self._conn_samples.setdefault(conn.cid, deque(maxlen=SAMPLES))
            ring.append((now, total))
            moved += max(0, total - self._conn_counted.get(conn.cid, 0))
            self._conn_counted[conn.cid] = total
        for cid in [c for c in self._conn_samples if c not in seen]:
            del self._conn_samples[cid]
            self._conn_counted.pop(cid, None)
        self._moved += moved
        self._seconds.append((now, self._moved))
        minute = int(self.wall() // 60)
        if self._minute[0] == 0:
            self._minute = (minute, self._moved)
        elif minute != self._minute[0]:
            first, at_start = self._minute
            self.minutes.append((first * 60.0, (self._moved - at_start) / 60.0))
            self._minute = (minute, self._moved)

    async def run(self, conns: Callable[[], Iterable[Conn]]) -> None:
        while True:
            self.sample(conns())
            await asyncio.sleep(TICK)

    # --- what people see -----------------------------------------------------

    def throughput(self) -> float:
        """Bytes per second moved by all transfers over the last seconds."""
        return _rate(self._seconds)

    def conn_rate(self, cid: str) -> float:
        ring = self._conn_samples.get(cid)
        return _rate(ring) if ring is not None else 0.0

    def describe_conn(self, conn: Conn) -> dict[str, Any]:
        return {
            "id": conn.cid,
            "kind": _conn_kind(conn),
            "user": conn.users[DIAL].name,
            "peer": conn.users[ACCEPT].name,
            "name": conn.app,
            "size": None,
            "done": _conn_bytes(conn),
            "rate": round(self.conn_rate(conn.cid)),
            "eta": None,
            "checkpoint": None,
            "retry": "",
            "started": conn.started,
            "state": "connected" if conn.linked() else "waiting",
        }

    def in_flight(self, conns: Iterable[Conn], user_id: int | None) -> list[dict[str, Any]]:
        """Every transfer in flight (of ``user_id`` only, unless None),
        oldest first."""
        rows = [t.describe() for t in self.live.values() if user_id is None or t.user_id == user_id]
        rows += [
            self.describe_conn(c)
            for c in conns
            if user_id is None or user_id in (c.users[DIAL].id, c.users[ACCEPT].id)
        ]
        rows.sort(key=lambda r: (r["started"], r["id"]))
        return rows

    def hour(self) -> list[dict[str, float]]:
        """The last hour's throughput, one average a minute, oldest first."""
        return [{"t": t, "bytes_per_second": round(v, 1)} for t, v in self.minutes]
