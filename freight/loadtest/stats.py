"""What a row's clients measured: counts, bytes, errors by kind, and two
HDR histograms of latency in microseconds (constant memory however long the
run): ``latency`` from when each operation was *due* (the open model's
schedule, so a stalled hub cannot hide its queue: no coordinated omission)
and ``raw`` from when it was actually started. A ring of one-second
histograms gives the live view's p50/p99 over the last 10 s.

A worker process sends :meth:`RowStats.snapshot` (JSON-able, histograms
encoded) to the parent, which :meth:`RowStats.merge`\\ s them into one
report. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import ctypes
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from hdrh.histogram import HdrHistogram

LOWEST: Final = 1  # µs
HIGHEST: Final = 3_600_000_000  # µs: one hour
DIGITS: Final = 3  # significant figures
WINDOW: Final = 10  # seconds in the live view
MAX_ERROR_KINDS: Final = 64  # distinct error kinds kept per row; more count as "other"
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST, HIGHEST, DIGITS)


def clear(hist: HdrHistogram) -> None:
    """Empty a histogram in place. Histograms are reused, never made anew
    each second: each one's 184 KiB of counts, allocated and freed again
    and again, kept a long run's memory growing (fragmentation); and
    ``HdrHistogram.reset`` zeroes the counts one by one in Python."""
    ctypes.memset(ctypes.addressof(hist.counts), 0, ctypes.sizeof(hist.counts))
    hist.total_count = 0
    hist.min_value = sys.maxsize
    hist.max_value = 0
    hist.start_time_stamp_msec = sys.maxsize
    hist.end_time_stamp_msec = 0


def sparse(hist: HdrHistogram) -> list[list[int]]:
    """The counts that are not zero, as ``[index, count]`` pairs: a second's
    histogram as a worker sends it (its parent adds it with
    :func:`add_sparse` into a histogram it keeps)."""
    return [[i, c] for i, c in enumerate(hist.counts) if c]


def add_sparse(hist: HdrHistogram, pairs: list[list[int]]) -> None:
    for index, count in pairs:
        if 0 <= index < hist.counts_len and count > 0:
            hist.record_value(hist.get_value_from_index(index), count)


def _micros(seconds: float) -> int:
    return min(HIGHEST, max(LOWEST, round(seconds * 1e6)))


class Window:
    """One histogram per second for the last :data:`WINDOW` seconds, in a
    fixed ring (each slot emptied when its second comes round again)."""

    def __init__(self) -> None:
        self.ring = [new_histogram() for _ in range(WINDOW)]
        self.seconds = [-1] * WINDOW  # the second each slot holds
        self.merged = new_histogram()

    def _bucket(self, now: float) -> HdrHistogram:
        second = int(now)
        slot = second % WINDOW
        if self.seconds[slot] != second:
            clear(self.ring[slot])
            self.seconds[slot] = second
        return self.ring[slot]

    def record(self, now: float, micros: int) -> None:
        self._bucket(now).record_value(micros)

    def add_sparse(self, now: float, pairs: list[list[int]]) -> None:
        """A worker's second of latencies, into the second ``now`` falls in."""
        add_sparse(self._bucket(now), pairs)

    def percentiles(self, now: float) -> dict[str, float]:
        """p50 and p99 in seconds over the seconds still inside the window."""
        merged = self.merged
        clear(merged)
        second = int(now)
        for hist, held in zip(self.ring, self.seconds, strict=True):
            if held >= 0 and 0 <= second - held < WINDOW:
                merged.add(hist)
        if merged.get_total_count() == 0:
            return {}
        return {
            "p50": merged.get_value_at_percentile(50.0) / 1e6,
            "p99": merged.get_value_at_percentile(99.0) / 1e6,
        }


@dataclass
class RowStats:
    """One row's results (or one worker's share of a row)."""

    row: str
    clients: int = 0  # started
    attached: int = 0  # attached now
    attached_peak: int = 0
    attached_end: int = 0  # attached when the run ended
    attached_ever: int = 0  # clients that attached at least once
    ops: int = 0
    sent: int = 0  # messages offered (connect, forward, message, request)
    bytes: int = 0
    lost: int = 0  # messages sent and never answered
    verified: int = 0  # transfers whose digest matched
    mismatched: int = 0  # transfers whose digest differed
    faults: int = 0  # injected
    recovered: int = 0  # injected and followed by a working operation
    errors: Counter[str] = field(default_factory=Counter)
    latency: HdrHistogram = field(default_factory=new_histogram)
    raw: HdrHistogram = field(default_factory=new_histogram)
    window: Window = field(default_factory=Window)
    interval: HdrHistogram = field(default_factory=new_histogram)  # since the last take
    spare: HdrHistogram = field(default_factory=new_histogram)  # the one taken last

    # --- recording ------------------------------------------------------------

    def record(self, due: float, start: float, end: float, nbytes: int = 0) -> None:
        """One operation: due at ``due`` (== ``start`` in a closed model),
        started at ``start``, done at ``end`` (seconds of one clock)."""
        micros = _micros(end - due)
        self.latency.record_value(micros)
        self.raw.record_value(_micros(end - start))
        self.window.record(end, micros)
        self.interval.record_value(micros)
        self.ops += 1
        self.bytes += nbytes

    def take_interval(self) -> HdrHistogram:
        """The latencies recorded since the last call (for an HDR log); it
        stays as it is until the next call, which reuses it."""
        taken, self.interval = self.interval, self.spare
        self.spare = taken
        clear(self.interval)
        return taken

    def error(self, kind: str) -> None:
        key = kind if kind in self.errors or len(self.errors) < MAX_ERROR_KINDS else "other"
        self.errors[key] += 1

    def attach(self) -> None:
        self.attached += 1
        self.attached_peak = max(self.attached_peak, self.attached)

    def detach(self) -> None:
        self.attached = max(0, self.attached - 1)

    # --- reporting ------------------------------------------------------------

    def latencies(self, hist: HdrHistogram | None = None) -> dict[str, float]:
        """min, mean, percentiles and max in seconds (empty with no samples)."""
        h = self.latency if hist is None else hist
        if h.get_total_count() == 0:
            return {}
        out = {"min": h.get_min_value() / 1e6, "mean": h.get_mean_value() / 1e6}
        for p in PERCENTILES:
            out[f"p{p:g}"] = h.get_value_at_percentile(p) / 1e6
        out["max"] = h.get_max_value() / 1e6
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-able, for the parent process to merge."""
        return {
            "row": self.row,
            "counts": {
                k: getattr(self, k)
                for k in (
                    "clients",
                    "attached",
                    "attached_peak",
                    "attached_end",
                    "attached_ever",
                    "ops",
                    "sent",
                    "bytes",
                    "lost",
                    "verified",
                    "mismatched",
                    "faults",
                    "recovered",
                )
            },
            "errors": dict(self.errors),
            "latency": self.latency.encode().decode("ascii"),
            "raw": self.raw.encode().decode("ascii"),
        }

    @classmethod
    def merge(cls, row: str, snapshots: list[dict[str, Any]]) -> RowStats:
        """One row's stats from its workers' snapshots."""
        out = cls(row)
        for snap in snapshots:
            for key, value in snap["counts"].items():
                setattr(out, key, getattr(out, key) + int(value))
            for kind, n in snap["errors"].items():
                out.errors[str(kind)] += int(n)
            out.latency.add(HdrHistogram.decode(snap["latency"].encode("ascii")))
            out.raw.add(HdrHistogram.decode(snap["raw"].encode("ascii")))
        return out
