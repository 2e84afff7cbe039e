"""Which compression level the hub asks for on the streams it receives
(docs/protocol.md §7): the receiver chooses, so the hub decides instead of
echoing the sender's wish.

In order: an admin's level for the account, else the hub's own level, else
the sender's wish (``auto``); then, while the hub's processors are busy,
one step lower (``max`` → ``fast``), and none at all when they are
overloaded, so that decompressing never competes with serving everyone.
Busy means a 1-minute load average of ``busy`` (default 2) or more per
processor, overloaded twice that; ``busy`` 0 never steps down.
The choice is made when a stream starts and again at every checkpoint
(``KeepAliveAck.level``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..protocol.messages import LEVEL_FAST, LEVEL_MAX, LEVEL_NONE, LEVELS

AUTO = "auto"  # the sender's wish stands
BUSY = 2.0  # run-queue length per processor from which levels step down (twice: none)
MAX_USERS = 10_000  # accounts with a level of their own


def cpu_load() -> float:
    """The 1-minute load average per processor."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def check_level(level: str) -> str:
    if level != AUTO and level not in LEVELS:
        raise UsageError(f"compression must be one of auto, {', '.join(LEVELS)}")
    return level


@dataclass
class CompressionPolicy:
    hub: str = AUTO
    users: dict[str, str] = field(default_factory=dict)
    load: Callable[[], float] = cpu_load
    busy: float = BUSY

    def choose(self, want: str, user: str) -> str:
        level = self.users.get(user, AUTO)
        if level == AUTO:
            level = self.hub
        if level == AUTO:
            level = want if want in LEVELS else LEVEL_NONE
        if level == LEVEL_NONE or self.busy <= 0:
            return level
        load = self.load()
        if load >= 2 * self.busy:
            return LEVEL_NONE
        if load >= self.busy and level == LEVEL_MAX:
            return LEVEL_FAST
        return level

    def set(self, level: str, user: str = "") -> None:
        """An admin's level for the hub, or for one account (``auto``: the
        hub's again)."""
        check_level(level)
        if not user:
            self.hub = level
        elif level == AUTO:
            self.users.pop(user, None)
        elif user in self.users or len(self.users) < MAX_USERS:
            self.users[user] = level
        else:
            raise UsageError(f"{MAX_USERS} accounts have a level of their own already")

    def as_dict(self) -> dict[str, Any]:
        return {"hub": self.hub, "users": dict(sorted(self.users.items())), "load": self.load()}

    @classmethod
    def restore(
        cls, saved: dict[str, Any], hub: str | None, busy: float = BUSY
    ) -> CompressionPolicy:
        """What an admin set last (``saved``), with ``hub`` (the hub's
        ``--compress``) over its hub level when given. Damaged entries are
        dropped."""
        policy = cls(busy=busy)
        level = saved.get("hub", AUTO)
        policy.hub = level if isinstance(level, str) and level in (AUTO, *LEVELS) else AUTO
        users = saved.get("users", {})
        if isinstance(users, dict):
            for name, lvl in list(users.items())[:MAX_USERS]:
                if isinstance(name, str) and lvl in LEVELS:
                    policy.users[name] = lvl
        if hub is not None:
            policy.hub = check_level(hub)
        return policy
