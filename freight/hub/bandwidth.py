"""The hub's bandwidth budget: a fixed rate or a daily timetable, shared
fairly among active streams. Pure: the caller passes the time of day."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UsageError
from ..units import parse_rate

_ENTRY = re.compile(r"^(\d{1,2}):(\d{2}),(.+)$")


@dataclass(frozen=True)
class Budget:
    """``rate`` alone, or ``timetable`` of (minute of day, rate) entries."""

    spec: str
    timetable: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, spec: str) -> Budget:
        """``"50M"``, ``"off"``, or ``"08:00,10M 18:00,off"``."""
        spec = spec.strip() or "off"
        if "," not in spec:
            return cls(spec, ((0, parse_rate(spec)),))
        entries = []
        for part in spec.split():
            match = _ENTRY.match(part)
            if not match:
                raise UsageError(f"bad timetable entry {part!r} (use HH:MM,RATE)")
            hh, mm, rate = int(match.group(1)), int(match.group(2)), match.group(3)
            if hh > 23 or mm > 59:
                raise UsageError(f"bad time in timetable entry {part!r}")
            entries.append((hh * 60 + mm, parse_rate(rate)))
        entries.sort()
        return cls(spec, tuple(entries))

    def total_at(self, minute_of_day: int) -> int:
        """Budget in force at a minute of the day (0 = unlimited). Before the
        first entry of the day the last entry (from yesterday) applies."""
        current = self.timetable[-1][1]
        for start, rate in self.timetable:
            if start <= minute_of_day:
                current = rate
        return current


@dataclass
class BandwidthManager:
    budget: Budget = field(default_factory=lambda: Budget.parse("off"))
    active: set[str] = field(default_factory=set)
    caps: dict[int, int] = field(default_factory=dict)  # user id -> bytes/s

    def register(self, key: str) -> None:
        self.active.add(key)

    def unregister(self, key: str) -> None:
        self.active.discard(key)

    def set_cap(self, user_id: int, cap: int) -> None:
        """An admin's cap on one account (an agent), bytes/s; 0 lifts it."""
        if cap > 0:
            self.caps[user_id] = cap
        else:
            self.caps.pop(user_id, None)

    def rate_for(self, key: str, minute_of_day: int) -> int:
        """Fair share of the budget for one active stream (0 = unlimited),
        no more than its account's cap. Keys are ``kind:user_id:sid``."""
        total = self.budget.total_at(minute_of_day)
        share = 0 if total == 0 else max(1024, total // max(1, len(self.active | {key})))
        parts = key.split(":")
        cap = self.caps.get(int(parts[1]), 0) if len(parts) > 2 and parts[1].isdigit() else 0
        if cap and (share == 0 or cap < share):
            return cap
        return share
