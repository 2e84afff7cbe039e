"""One client attached to the relay: its frames go through a queue drained
by one writer task (:class:`Attachment`), so a slow client never blocks the
hub's other work; relayed records wait for an agent's bandwidth cap and the
hub's budget there, and count in their connection's window until written."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from ..protocol.pairacts import Seat
from ..protocol.switch import Switch
from ..tasks import Supervisor
from .relayconn import Conn
from .streams import User

if TYPE_CHECKING:
    from .relay import Router

__all__ = ["Attachment"]


class Attachment(Seat):
    """One attached client. Frames to it go through a queue drained by one
    writer task, so a slow client never blocks the hub's other work."""

    def __init__(self, router: Router, user: User, chan: Any, transport: str) -> None:
        super().__init__(user)
        self.aid = secrets.token_hex(8)
        self.router = router
        self.user: User = user
        self.chan = chan
        self.transport = transport
        self.lane: Any = None  # a data connection carrying Relay frames
        self.commands = False  # an agent's command channel
        self.address = ""
        self.out: deque[tuple[m.Message, bytes, Conn | None, str]] = deque()
        self.wake = asyncio.Event()
        self.tasks = Supervisor(f"attachment/{self.aid}")
        self.writer = self.tasks.spawn(self._write(), name="writer")
        router.bus.subscribe(self.aid, self.post)

    def post(self, msg: m.Message, payload: bytes = b"", conn: Conn | None = None) -> None:
        """Queue a frame. ``conn`` marks a relayed record counted in that
        connection's window towards this end."""
        if self.closed:
            return
        role = self.ends.get(conn.cid, "") if conn is not None else ""
        self.out.append((msg, payload, conn, role))
        self.router.metrics.relay_queued.inc(Switch.queue(self, len(payload)))
        self.wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.out:
                    if self._batchable():
                        await self._write_run()
                        continue
                    msg, payload, conn, role = self.out.popleft()
                    if conn is not None:
                        # An agent's bandwidth cap: records to or from it
                        # leave the hub no faster; what waits here counts
                        # in the window, so the sender is paused in time.
                        bucket = self.router.cap_for(conn)
                        if bucket is not None:
                            delay = bucket.reserve(len(payload), time.monotonic())
                            if delay > 0:
                                await asyncio.sleep(delay)
                        # The hub's budget, shared with pushes and pulls.
                        budget = self.router.budget_for(conn, role)
                        if budget is not None:
                            delay = budget.reserve(len(payload), time.monotonic())
                            if delay > 0:
                                await asyncio.sleep(delay)
                    lane = self.lane if isinstance(msg, m.Relay) else None
                    try:
                        await (lane or self.chan).send(msg, payload)
                    finally:
                        self.router.drained(self, conn, role, len(payload))
        except Exception:  # the channel broke: the reader side notices too
            self.closed = True
            self.router.log.debug("relay_writer_stopped", aid=self.aid)

    def _batchable(self) -> bool:
        """The next frames are control frames of no connection, and the
        channel writes several per message."""
        msg, _, conn, _ = self.out[0]
        return (
            conn is None
            and getattr(self.chan, "batching", False)
            and not (self.lane is not None and isinstance(msg, m.Relay))
        )

    async def _write_run(self) -> None:
        """Write the queued frames of no connection, up to 256, in one go."""
        run: list[tuple[m.Message, bytes]] = []
        sizes: list[tuple[Conn | None, str, int]] = []
        out = self.out
        while out and len(run) < 256:
            msg, payload, conn, role = out[0]
            if conn is not None or (self.lane is not None and isinstance(msg, m.Relay)):
                break
            out.popleft()
            run.append((msg, payload))
            sizes.append((conn, role, len(payload)))
        try:
            await self.chan.send_many(run)
        finally:
            for conn, role, size in sizes:
                self.router.drained(self, conn, role, size)

    def discard_queue(self) -> None:
        self.closed = True
        while self.out:
            _, payload, conn, role = self.out.popleft()
            self.router.drained(self, conn, role, len(payload))
        self.writer.cancel()
