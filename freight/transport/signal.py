"""A wake-up for waiters that each re-check their own condition."""

from __future__ import annotations

import asyncio
import contextlib


class Signal:
    """Wakes every waiter whenever some state changed; each waiter then
    re-checks its own condition. One signal per channel is simpler than one
    condition per reason, and a needless wake-up costs nothing."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        """Until the next notify() or ``timeout`` seconds, whichever is first."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
