"""When each simulated client starts, when each of its operations is due,
how large each one is, and when each fault strikes; all from the row and a
seeded random generator, so a run with the same ``--seed`` makes the same
choices. Nothing here reads a clock.

The open model (``N/s``, ``total:N/s``) gives every client a fixed
interval and a random phase within it; an operation is due at
``start + phase + k * interval`` whether or not the previous one has
finished, and its latency is measured from that due time (wrk2's answer to
coordinated omission). The closed model (``concurrency:N``) has no due
times: each of a client's N loops starts its next operation when the last
one ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from .scenario import Fault, Rate, Row, Size

MAX_OPERATION: Final = 1 << 32  # bytes: a drawn size is at most 4 GiB


def client_starts(row: Row) -> list[float]:
    """Client i of the row starts at ``attach_at + ramp * i / count``."""
    step = row.ramp / row.count
    return [row.attach_at + i * step for i in range(row.count)]


def interval(rate: Rate | None, count: int) -> float | None:
    """Seconds between one client's operations in the open model; None for
    the closed model (``concurrency:N``, or no rate: one at a time)."""
    if rate is None or rate.kind == "concurrency":
        return None
    per_client = rate.value if rate.kind == "per_client" else rate.value / count
    return 1.0 / per_client


def loops(rate: Rate | None) -> int:
    """Operations one client keeps in flight in the closed model."""
    return int(rate.value) if rate is not None and rate.kind == "concurrency" else 1


@dataclass
class Pacer:
    """One client's due times in the open model."""

    first: float
    every: float
    k: int = 0

    @classmethod
    def for_client(cls, start: float, every: float, rng: random.Random) -> Pacer:
        return cls(start + rng.uniform(0.0, every), every)

    def next_due(self) -> float:
        due = self.first + self.k * self.every
        self.k += 1
        return due

    def due_until(self, now: float) -> int:
        """How many operations have fallen due by ``now`` and not been taken."""
        if now < self.first:
            return 0
        return max(0, math.floor((now - self.first) / self.every) + 1 - self.k)


def draw_size(size: Size, rng: random.Random, file_size: int = 0) -> int:
    """Bytes for one operation (``file_size`` for ``file:PATH``, which the
    runner measured)."""
    if size.kind == "fixed":
        return size.low
    if size.kind == "uniform":
        return rng.randint(size.low, size.high)
    if size.kind == "lognormal":
        drawn = size.low * math.exp(size.sigma * rng.gauss(0.0, 1.0))
        return max(1, min(MAX_OPERATION, round(drawn)))
    return file_size


def fault_times(fault: Fault, until: float, rng: random.Random) -> list[float]:
    """When a fault strikes within ``[0, until)``: once at its time, on its
    period give or take the jitter, or never (``bad_tls`` and
    ``slow_reader`` are not events: they hold for the whole run)."""
    if fault.at is not None:
        return [fault.at] if fault.at < until else []
    if fault.every is None:
        return []
    times: list[float] = []
    t = 0.0
    while True:
        t += fault.every + rng.uniform(-fault.jitter, fault.jitter)
        if t >= until:
            return times
        times.append(t)
