"""Parsing and printing of sizes and rates (1024-based, like rsync and scp)."""

from __future__ import annotations

import re

from .errors import UsageError

_SUFFIX = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?(?:/S)?\s*$", re.IGNORECASE)
UNLIMITED_WORDS = ("off", "unlimited", "none", "0")


def parse_size(text: str) -> int:
    """``"20M"`` → 20971520. Plain numbers are bytes."""
    match = _RATE.match(text.upper())
    if not match:
        raise UsageError(f"not a size: {text!r} (use a number with K, M or G, e.g. 20M)")
    return int(float(match.group(1)) * _SUFFIX[match.group(2).upper()])


def parse_rate(text: str) -> int:
    """A rate in bytes per second; 0 means unlimited (``off``, ``unlimited``)."""
    if text.strip().lower() in UNLIMITED_WORDS:
        return 0
    return parse_size(text)


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
