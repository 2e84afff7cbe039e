"""Parsing and printing of sizes and rates (1024-based, like rsync and scp)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

_SUFFIX = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?(?:/S)?\s*$", re.IGNORECASE)
MAX_SIZE = 1 << 62  # bytes (4 EiB): what a size or rate may be, within 64-bit integers
UNLIMITED_WORDS = ("off", "unlimited", "none", "0")


def parse_size(text: str) -> int:
    """``"20M"`` → 20971520. Plain numbers are bytes."""
    match = _RATE.match(text.upper())
    if not match:
        raise UsageError(f"not a size: {text[:40]!r} (use a number with K, M or G, e.g. 20M)")
    value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if not value <= MAX_SIZE:  # also inf, from hundreds of digits
        raise UsageError(f"{text[:40]!r} is too large: at most {MAX_SIZE} bytes (4 EiB)")
    return int(value)


def parse_rate(text: str) -> int:
    """A rate in bytes per second; 0 means unlimited (``off``, ``unlimited``)."""
    if text.strip().lower() in UNLIMITED_WORDS:
        return 0
    return parse_size(text)


@dataclass(frozen=True)
class Limit:
    """A ``--limit``: an absolute rate in bytes/s, or a share of the path's
    measured available bandwidth. ``Limit()`` (both ``None``) is no limit."""

    rate: int | None = None
    percent: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.rate is None and self.percent is None

    def describe(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}% of the measured bandwidth"
        return format_rate(self.rate or 0)


def parse_limit(text: str) -> Limit:
    """``"20M"`` → 20 MiB/s; ``"50%"`` → half of what the path can carry;
    ``off``/``0`` → no limit."""
    t = text.strip()
    if t.endswith("%"):
        try:
            percent = float(t[:-1])
        except ValueError:
            percent = -1.0
        if not 0 < percent <= 100:
            raise UsageError(f"not a percentage: {text!r} (use 1% to 100%, e.g. 50%)")
        return Limit(percent=percent)
    rate = parse_rate(t)
    return Limit() if rate == 0 else Limit(rate=rate)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(rate: int) -> str:
    return "unlimited" if rate == 0 else f"{format_bytes(rate)}/s"


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip().lower()
    scale = units.get(t[-1:], 0.0)
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise UsageError(f"{text!r} is not a duration like 90s, 30m or 2h") from None
    if value <= 0:
        raise UsageError("a duration must be positive")
    return value
