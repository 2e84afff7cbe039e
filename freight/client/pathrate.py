"""The rate of a push that follows its path: ``--limit NN%`` (a share of the
measured available bandwidth) and ``--priority background`` (a LEDBAT-like
controller, :mod:`freight.protocol.ledbat`). See docs/protocol.md "20.3
Percentages" and "20.4 Background priority".

:class:`PathRate` is the bookkeeping, with time passed in: delivery-rate
samples from the hub's checkpoint acknowledgements, round trips of pings
that travel the transfer's own connection, and when to measure the path
again (every :data:`REPROBE_SECONDS`, or sooner when the round trip grows
and stays grown). :class:`PathPacer` runs it beside one push: it pings,
re-probes, and hands the stream engine the rate to keep (``limit()``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from ..errors import NetworkError
from ..logs import fields
from ..protocol import messages as m
from ..protocol.ledbat import Ledbat
from ..tasks import Supervisor
from ..transport.channel import Mux
from .probe import available_bandwidth
from .session import HubSession

log = logging.getLogger("freight.pacing")

REPROBE_SECONDS: Final = 180.0
# The round trip "grew" when its recent least exceeds the one measured with
# the path at GROWN_FACTOR times plus GROWN_MARGIN, for GROWN_FOR seconds.
GROWN_FACTOR: Final = 2.0
GROWN_MARGIN: Final = 0.02
GROWN_FOR: Final = 5.0
PING_EVERY: Final = 0.1
PING_TIMEOUT: Final = 5.0
DELIVERY_SAMPLES: Final = 32
RTT_SAMPLES: Final = 20
# A background transfer never goes below this share of the capacity.
BACKGROUND_FLOOR_SHARE: Final = 0.02
# A background transfer that cannot measure its round trip keeps this share.
BLIND_BACKGROUND_PERCENT: Final = 50.0

Prober = Callable[[], Awaitable[float]]


class PathRate:
    """What is known of the path while a transfer runs."""

    def __init__(self, available: float, rtt: float, now: float) -> None:
        self.available = available
        self.probe_rtt = rtt
        self.probed_at = now
        self._delivered: deque[tuple[float, int]] = deque(maxlen=DELIVERY_SAMPLES)
        self._rtts: deque[float] = deque(maxlen=RTT_SAMPLES)
        self._grown_since: float | None = None

    def delivered(self, offset: int, now: float) -> None:
        """The hub acknowledged (durably) everything below ``offset``."""
        if self._delivered and offset < self._delivered[-1][1]:
            self._delivered.clear()  # a new stream: start the samples over
        self._delivered.append((now, offset))

    def delivery_rate(self) -> float:
        """Bytes/s acknowledged across the samples kept; 0 before two."""
        if len(self._delivered) < 2:
            return 0.0
        (t0, o0), (t1, o1) = self._delivered[0], self._delivered[-1]
        return (o1 - o0) / (t1 - t0) if t1 > t0 else 0.0

    def rtt(self, rtt: float, now: float) -> None:
        self._rtts.append(rtt)
        if min(self._rtts) > self.probe_rtt * GROWN_FACTOR + GROWN_MARGIN:
            if self._grown_since is None:
                self._grown_since = now
        else:
            self._grown_since = None

    def reprobe_due(self, now: float) -> bool:
        if now - self.probed_at >= REPROBE_SECONDS:
            return True
        return self._grown_since is not None and now - self._grown_since >= GROWN_FOR

    def reprobed(self, available: float, own_rate: float, now: float) -> None:
        """A probe beside this transfer found ``available``; the transfer
        itself carried ``own_rate`` meanwhile, so the path has both."""
        self.available = available + own_rate
        self.probed_at = now
        self._grown_since = None
        if self._rtts:
            self.probe_rtt = min(self._rtts)


class PathPacer:
    """Paces one push by ``percent`` of the path or as a background transfer
    (``background``). ``limit()`` is the engine's limit function."""

    def __init__(
        self,
        path: PathRate,
        *,
        percent: float | None = None,
        background: bool = False,
        capacity: float = 0.0,
        reprobe: Prober | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.percent = percent
        self.clock = clock
        self.reprobe = reprobe
        self.ledbat: Ledbat | None = None
        if background:
            # Never above what one flow gets on the path: above it, the
            # transfer would queue behind itself and back off for nothing.
            ceiling = path.available * (percent / 100 if percent else 1.0)
            floor = max(16 * 1024.0, BACKGROUND_FLOOR_SHARE * (capacity or path.available))
            self.ledbat = Ledbat(clock(), floor=floor, ceiling=ceiling, start=floor)
        self._sent: deque[tuple[float, int]] = deque(maxlen=64)

    def without_pings(self) -> None:
        """No connection of its own to ping on (frames inside TLS): a
        background transfer keeps a fixed share instead, its ``percent`` or
        :data:`BLIND_BACKGROUND_PERCENT`."""
        if self.ledbat is not None:
            self.ledbat = None
            self.percent = self.percent or BLIND_BACKGROUND_PERCENT

    def limit(self) -> int:
        if self.ledbat is not None:
            return max(1, int(self.ledbat.rate))
        if self.percent is not None:
            return max(1, int(self.path.available * self.percent / 100))
        return 0

    def checkpoint(self, offset: int) -> None:
        self.path.delivered(offset, self.clock())

    def sent(self, total: int) -> None:
        self._sent.append((self.clock(), total))

    def own_rate(self) -> float:
        if len(self._sent) < 2:
            return self.path.delivery_rate()
        (t0, b0), (t1, b1) = self._sent[0], self._sent[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def on_rtt(self, rtt: float) -> None:
        now = self.clock()
        self.path.rtt(rtt, now)
        if self.ledbat is not None:
            rate = self.ledbat.on_rtt(rtt, now)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "background rate",
                    extra=fields(
                        rtt=round(rtt, 4),
                        queueing=round(self.ledbat.queueing, 4),
                        rate=int(rate),
                        sent=self._sent[-1][1] if self._sent else 0,
                    ),
                )

    async def run(self, mux: Mux, sent: Callable[[], int]) -> None:
        """Ping on ``mux`` (the push's own connection) until cancelled;
        re-probe when due (percent limits only)."""
        async with Supervisor("path-pacer") as tasks:
            reprobing: asyncio.Task[None] | None = None
            while True:
                self.sent(sent())
                self.on_rtt(await ping(mux))
                due = self.percent is not None and self.reprobe is not None
                if due and self.path.reprobe_due(self.clock()) and reprobing is None:
                    reprobing = tasks.spawn(self._reprobe(), name="reprobe")
                if reprobing is not None and reprobing.done():
                    reprobing = None
                await asyncio.sleep(PING_EVERY)

    async def _reprobe(self) -> None:
        assert self.reprobe is not None
        own = self.own_rate()
        try:
            found = await self.reprobe()
        except NetworkError:
            self.path.probed_at = self.clock()  # keep the last figure; try later
            return
        self.path.reprobed(found, own, self.clock())


async def ping(mux: Mux, timeout: float = PING_TIMEOUT) -> float:
    """One round trip on ``mux``'s connection, in seconds (``timeout`` when
    no answer came by then: a queue that long is congestion too)."""
    pid = "rtt-" + secrets.token_hex(4)
    started = time.monotonic()
    await mux.channel.send(m.Probe(pid=pid, op="ping"))
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg, _ = await mux.recv_control()
                if isinstance(msg, m.ProbeReport) and msg.pid == pid:
                    break
    except TimeoutError:
        return timeout
    return time.monotonic() - started


async def fixed_share(session: HubSession, percent: float, direction: Literal["up", "down"]) -> int:
    """``percent`` of the path's available bandwidth ``direction``, bytes/s
    (measured once: for a transfer that cannot follow the path as it runs)."""
    return max(1, int(await available_bandwidth(session, direction) * percent / 100))
