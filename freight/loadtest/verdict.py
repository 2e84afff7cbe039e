"""Each ``expect`` clause of a row judged against what the row measured."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..units import format_bytes
from .scenario import COUNT_METRICS, LATENCY_METRICS, Expect
from .stats import RowStats

COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Verdict:
    row: str
    clause: str
    measured: float | None  # None: nothing to measure it by
    shown: str  # the measured value as people read it
    passed: bool


def measure(expect: Expect, stats: RowStats, seconds: float, hub_alive: bool) -> float | None:
    """The value a clause compares, in its own unit (seconds, percent,
    count or bytes per second); None when the run gave nothing to judge."""
    m = expect.metric
    if m == "hub_alive":
        return 1.0 if hub_alive else 0.0
    if m in LATENCY_METRICS:
        return stats.latencies().get(m)
    if m == "attached":
        return 100.0 * stats.attached_end / stats.clients if stats.clients else None
    if m == "verified":
        checked = stats.verified + stats.mismatched
        return 100.0 * stats.verified / checked if checked else None
    if m == "recovered":
        return 100.0 * stats.recovered / stats.faults if stats.faults else None
    if m in COUNT_METRICS:
        count = float(sum(stats.errors.values()) if m == "errors" else stats.lost)
        if not expect.percent:
            return count
        whole = stats.ops + count
        return 100.0 * count / whole if whole else None
    if m == "throughput":
        return stats.bytes / seconds if seconds > 0 else None
    raise AssertionError(m)


def show(expect: Expect, value: float | None) -> str:
    if value is None:
        return "nothing measured"
    m = expect.metric
    if m == "hub_alive":
        return "alive" if value else "not answering"
    if m in LATENCY_METRICS:
        return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"
    if m == "throughput":
        return f"{format_bytes(value)}/s"
    if m in COUNT_METRICS and not expect.percent:
        return f"{value:.0f}"
    return f"{value:.4g}%"


def judge(expect: Expect, stats: RowStats, seconds: float, hub_alive: bool) -> Verdict:
    value = measure(expect, stats, seconds, hub_alive)
    if expect.metric == "hub_alive":
        passed = bool(value)
    else:
        passed = value is not None and COMPARE[expect.op](value, expect.value)
    return Verdict(stats.row, expect.text, value, show(expect, value), passed)
