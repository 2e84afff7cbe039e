"""The cyclic garbage collector in a hub that holds thousands of connections.

Each attached client keeps some 170 objects the collector tracks (its
request handler, WebSocket, tasks, futures, our channel), and every
keep-alive exchange replaces a few that lived the whole interval, so they
reach the oldest generation. CPython makes a full collection whenever that
generation has grown by a quarter since the last one: with 10,000 idle
agents about every 75 s, each walking some 1.7 million objects for about
1.4 s of CPU with the event loop stopped (perf: the collector was over half
of such a hub's CPU, docs/benchmarks.md).

What survived a full collection is long-lived, so the hub freezes it
(:func:`gc.freeze`) at its next check: later full collections walk only
what is newer. Cyclic garbage among frozen objects (a client gone whose
objects refer to each other) waits for the thaw: every ``thaw_every``
seconds (10 minutes) the hub unfreezes, collects everything once and
freezes again: one collection as costly as each of those that came about
every minute before (some 1.7 s with 10,000 agents), once in 10 minutes.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Final

CHECK_EVERY: Final = 5.0
THAW_EVERY: Final = 600.0


def _full_collections() -> int:
    return int(gc.get_stats()[-1]["collections"])


class FrozenOld:
    """Freeze after each full collection; thaw and collect now and then."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, thaw_every: float = THAW_EVERY
    ) -> None:
        self.clock = clock
        self.thaw_every = thaw_every
        self.full = _full_collections()
        self.thawed = clock()
        self.freezes = self.thaws = 0

    def check(self) -> None:
        if self.clock() - self.thawed >= self.thaw_every:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.thawed = self.clock()
            self.thaws += 1
        elif _full_collections() != self.full:
            gc.freeze()
            self.freezes += 1
        self.full = _full_collections()

    async def run(self, every: float = CHECK_EVERY) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()
