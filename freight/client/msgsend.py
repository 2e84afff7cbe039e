"""The sending half of a messaging host (:class:`Outgoing`).

A message is spooled (``msgspool``: on disk before it is sent), resolved to
hosts (routes cached for a second, host keys checked), sealed for each host
and sent as MsgSend; each host's MsgResult is recorded in the message's
:class:`~freight.protocol.msgtables.Tally` until every host has a final
answer or the message's timeout. ``busy`` and ``retry`` answers are retried
after a back-off (0.05 s doubling to 1 s; one at a time to a host and app
that said busy: msgbudget).

The common case takes no task of its own: the spool's batched commit calls
back, the message goes at once to every host of its cached route, and the
hosts' answers (or a timer at its deadline) settle it. Anything else (no
cached route, a host busy or gone, the hub not announced to yet, a
re-attach) hands the message to a task running :meth:`Outgoing._attempts`,
which takes it on from its tally. A task per message cost the sending host
more than a third of its CPU per message.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from ..errors import FreightError
from ..protocol import messages as m
from ..protocol.msglocal import SPOOLED
from ..protocol.msgseal import SEAL_OVERHEAD, aad, seal_body
from ..protocol.msgtables import TRANSIENT, Tally
from ..tasks import Supervisor
from .msgapp import REASON_TEXT, SendResult, check_message
from .msgbudget import Outbox, Unanswered
from .msgroutes import Peer, Routes
from .msgspool import Spool, Spooled

__all__ = ["Done", "Outgoing"]

MAX_UNANSWERED: Final = 10_000  # messages of this host waiting for their answer
MAX_UNANSWERED_BYTES: Final = 256 * 1024 * 1024  # and their bodies
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 1.0

# Told what became of a message: its result, or the error that kept it
# from being spooled.
Done = Callable[[SendResult | FreightError], None]


@dataclass(slots=True, eq=False)
class _Out:
    row: Spooled
    deadline: float
    waiter: asyncio.Future[SendResult] | None = None  # send() waiting for it
    done: Done | None = None  # or a callback told its result
    tally: Tally = field(default_factory=Tally)
    changed: asyncio.Event | None = None  # set once a task carries it
    reattached: bool = False
    timer: asyncio.TimerHandle | None = None  # its deadline, while no task carries it


class Outgoing:
    """What a host sends and waits to have answered (see the module doc)."""

    def __init__(
        self,
        *,
        hid: str,
        spool: Spool,
        routes: Routes,
        announced: asyncio.Event,
        post: Callable[[m.Message, bytes], None],
        on_not_host: Callable[[], None],
        counters: dict[str, int],
        tasks: Supervisor,
        clock: Callable[[], float],
    ) -> None:
        self.hid, self.spool, self.routes = hid, spool, routes
        self.announced, self.post, self.on_not_host = announced, post, on_not_host
        self.counters, self.tasks, self.clock = counters, tasks, clock
        self.slots = Unanswered(MAX_UNANSWERED, MAX_UNANSWERED_BYTES)
        self.outbox = Outbox(clock, FIRST_BACKOFF, MAX_BACKOFF)  # (msgbudget)
        self.out: dict[str, _Out] = {}
        self._carriers: set[asyncio.Task[Any]] = set()
        self.closed = False

    # --- taking a message ------------------------------------------------------------

    async def send(
        self, dest: str, app: str, type: int, body: bytes, *, ticket: str, from_ticket: str,
        reply_to: str, timeout: float, wait: bool,
    ) -> SendResult:  # fmt: skip
        check_message(dest, app, type, body, ticket, from_ticket, reply_to)
        await self.slots.take(len(body))
        row = _row(dest, app, type, ticket, from_ticket, reply_to, body, timeout)
        added = False
        try:
            await self.spool.add(row)
            added = True
        finally:
            if not added:
                self.slots.give(len(row.body))
        self.counters["sent"] += 1
        if not wait:
            self._begin(row, timeout)
            return SendResult(row.id, 0, SPOOLED, "")
        waiter: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._begin(row, timeout, waiter=waiter)
        return await waiter

    def submit(
        self, dest: str, app: str, type: int, body: bytes, *, ticket: str, from_ticket: str,
        reply_to: str, timeout: float, wait: bool, done: Done,
    ) -> None:  # fmt: skip
        """:meth:`send` without a task: ``done`` is told the result (or,
        with ``wait`` false, ``spooled`` once the message is on disk), or
        the error that kept it from the spool. A message that is not
        acceptable raises its UsageError at once."""
        check_message(dest, app, type, body, ticket, from_ticket, reply_to)
        args = (dest, app, type, ticket, from_ticket, reply_to, body, timeout)
        if self.slots.try_take(len(body)):
            self._accept(_row(*args), timeout, wait, done)
        else:
            self.tasks.spawn(self._room_then(args, wait, done), name="room", detached=True)

    async def _room_then(self, args: tuple[Any, ...], wait: bool, done: Done) -> None:
        await self.slots.take(len(args[6]))
        self._accept(_row(*args), args[7], wait, done)

    def _accept(self, row: Spooled, timeout: float, wait: bool, done: Done) -> None:
        self.spool.add_then(row, partial(self._spooled, row, timeout, wait, done))

    def _spooled(
        self, row: Spooled, timeout: float, wait: bool, done: Done, error: FreightError | None
    ) -> None:
        if error is not None:
            self.slots.give(len(row.body))
            done(error)
            return
        self.counters["sent"] += 1
        if wait:
            self._begin(row, timeout, done=done)
            return
        self._begin(row, timeout)
        done(SendResult(row.id, 0, SPOOLED, ""))

    async def send_left(self, row: Spooled) -> None:
        """A message a previous run accepted: sent again with the same id."""
        left = row.expires - time.time()
        if left <= 0:
            self.spool.remove(row.id)
            return
        await self.slots.take(len(row.body))
        self.counters["resent"] += 1
        self._begin(row, left)

    # --- on its way -----------------------------------------------------------------------

    def _begin(
        self, row: Spooled, timeout: float, *, waiter: asyncio.Future[SendResult] | None = None,
        done: Done | None = None,
    ) -> None:  # fmt: skip
        out = _Out(row, self.clock() + timeout, waiter, done)
        self.out[row.id] = out
        if self._first_pass(out):
            out.timer = asyncio.get_running_loop().call_later(timeout, self._finish, out)
        else:
            self._carry(out)

    def _first_pass(self, out: _Out) -> bool:
        """Send to every host of the route at hand: True if it all went;
        False if a task has to take it on (from what did go)."""
        if not self.announced.is_set():
            return False
        row = out.row
        route = self.routes.cached(row.dest, row.app, row.type)
        if route is None or not route[0]:
            return False
        size = len(row.body) + SEAL_OVERHEAD
        hosts, sent, ready = out.tally.hosts, out.tally.sent, self.outbox.ready
        went = True
        for peer in route[0]:
            if ready(row.id, peer.hid, row.app, size):
                hosts[peer.hid] = None
                sent.add(peer.hid)
                self._send_to(row, peer)
            else:  # it would be busy: the task waits its turn
                went = False
        return went

    def _send_to(self, row: Spooled, peer: Peer) -> None:
        header = aad(
            row.id, self.hid, peer.hid, row.type, row.app, row.ticket, row.from_ticket, row.reply_to
        )
        sealed = seal_body(peer.send_key, row.body, header)
        frame = m.MsgSend(
            len=len(sealed),
            id=row.id,
            to=peer.hid,
            app=row.app,
            type=row.type,
            ticket=row.ticket,
            from_ticket=row.from_ticket,
            reply_to=row.reply_to,
        )
        self.post(frame, sealed)

    def answered(self, msg: m.MsgResult) -> None:
        """A host's MsgResult."""
        out = self.out.get(msg.id)
        self.outbox.answered(msg.id, msg.host, out.row.app if out else None, msg.reason)
        if out is None or not out.tally.record(msg.host, msg.count, msg.reason):
            return
        if msg.reason == "not_host":
            self.on_not_host()
        if out.changed is not None:  # a task carries it
            out.changed.set()
            return
        tally = out.tally
        if tally.waiting:
            return
        if tally.complete:
            self._finish(out)
        else:  # busy or retry: again after the back-off
            self._carry(out, backoff=True)

    def reattached(self) -> None:
        """Attached again (and announced): the hub forgot what was in
        flight; every message not answered goes again."""
        for out in list(self.out.values()):
            out.reattached = True
            if out.changed is not None:
                out.changed.set()
            else:
                self._carry(out)

    def _carry(self, out: _Out, *, backoff: bool = False) -> None:
        if out.timer is not None:
            out.timer.cancel()
            out.timer = None
        out.changed = asyncio.Event()
        self.tasks.spawn(self._carried(out, backoff), name="send", detached=True)

    async def _carried(self, out: _Out, backoff: bool) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._carriers.add(task)
        try:
            delay = FIRST_BACKOFF
            if backoff:
                await asyncio.sleep(min(delay, self._left(out)))
                delay = min(delay * 2, MAX_BACKOFF)
                self.routes.forget((out.row.dest, out.row.app, out.row.type))
            await self._attempts(out, delay)
        except TimeoutError:
            pass
        finally:
            if task is not None:
                self._carriers.discard(task)
        self._finish(out)

    def _finish(self, out: _Out) -> None:
        """Settle the message: forget it, free its room, tell who waits."""
        row = out.row
        if self.out.pop(row.id, None) is None:
            return
        if out.timer is not None:
            out.timer.cancel()
        self.outbox.done(row.id, out.tally.sent)
        count, reason = out.tally.result()
        if count:
            self.counters["delivered"] += count
        else:
            self.counters["refused"] += 1
        if not self.closed:  # closing: it stays spooled for the next start
            self.spool.remove(row.id)
        self.slots.give(len(row.body))
        res = SendResult(row.id, count, reason, "" if count else REASON_TEXT.get(reason, ""))
        if out.waiter is not None and not out.waiter.done():
            out.waiter.set_result(res)
        if out.done is not None:
            out.done(res)

    def _left(self, out: _Out) -> float:
        left = out.deadline - self.clock()
        if left <= 0:
            raise TimeoutError
        return left

    async def _attempts(self, out: _Out, delay: float) -> None:
        """Send until every host of the route has a final answer: again to
        hosts that answered busy/retry (after a back-off), and after a
        re-attach to every host of the fresh route not answered yet."""
        row, tally, changed = out.row, out.tally, out.changed
        assert changed is not None
        while True:
            if not self.announced.is_set():
                async with asyncio.timeout(self._left(out)):  # no task, as wait_for makes
                    await self.announced.wait()
            route = self.routes.cached(row.dest, row.app, row.type)
            if route is None:
                async with asyncio.timeout(self._left(out)):
                    route = await self.routes.resolve(row.dest, row.app, row.type)
            peers, reason = route
            tally.route_reason = "" if peers else reason
            again, out.reattached = out.reattached, False
            changed.clear()
            in_flight = set(tally.waiting)
            by_hid = {p.hid: p for p in peers}
            # Hosts not in this route: a busy one is answered by the route's
            # reason when that is final; one that went away mid-flight
            # (retry) is tried until the timeout, as is, after a re-attach
            # (the hub forgot what was in flight), every one we wait for.
            final = reason not in TRANSIENT
            for hid in tally.transient if final else []:
                if hid not in by_hid and tally.hosts[hid] == (0, "busy"):
                    tally.record(hid, 0, reason or "no_host")
            for hid in in_flight if again else ():
                if hid not in by_hid:
                    tally.record(hid, 0, "retry")
            for hid in tally.expect(by_hid):
                if hid in in_flight and not again:
                    continue
                if hid in tally.sent:
                    self.counters["resent"] += 1
                tally.sent.add(hid)
                size = len(row.body) + SEAL_OVERHEAD
                if not self.outbox.ready(row.id, hid, row.app, size):  # it would be busy
                    tally.record(hid, 0, "busy")  # what it is, should its time run out
                    async with asyncio.timeout(self._left(out)):
                        await self.outbox.admit(row.id, hid, row.app, size)
                    tally.expect((hid,))
                self._send_to(row, by_hid[hid])
            while tally.waiting and not out.reattached:
                # A timer rather than wait_for: no task per message.
                timer = asyncio.get_running_loop().call_later(self._left(out), changed.set)
                try:
                    await changed.wait()
                finally:
                    timer.cancel()
                changed.clear()  # (the next turn's _left ends it once it is over)
            if out.reattached:
                continue
            if tally.hosts and tally.complete:
                return
            if not tally.hosts and reason not in TRANSIENT:
                return
            await asyncio.sleep(min(delay, self._left(out)))
            delay = min(delay * 2, MAX_BACKOFF)
            self.routes.forget((row.dest, row.app, row.type))

    async def aclose(self) -> None:
        """Stop: messages not answered stay in the spool (they go out at the
        next start); whoever waits for one is cancelled."""
        self.closed = True
        carriers = [t for t in self._carriers if t is not asyncio.current_task()]
        for t in carriers:
            t.cancel()
        if carriers:
            await asyncio.wait(carriers, timeout=5)
        for out in self.out.values():
            if out.timer is not None:
                out.timer.cancel()
            if out.waiter is not None:
                out.waiter.cancel()
        self.out.clear()


class _Ids:
    """Random message ids (16 bytes, hex), drawn from the system 256 at a
    time: one read of urandom per id was a few per cent of a sending
    host's CPU. Random, not counted: a receiving host drops a second
    message with an id it has seen, so ids must not be guessable."""

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0
        # A forked child must not hand out the ids its parent will.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._at = "", 0

    def __call__(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(16 * 256).hex(), 0
        self._at += 32
        return self._pool[self._at - 32 : self._at]


_new_id: Final = _Ids()


def _row(
    dest: str, app: str, type: int, ticket: str, from_ticket: str, reply_to: str, body: bytes,
    timeout: float,
) -> Spooled:  # fmt: skip
    return Spooled(_new_id(), dest, app, type, ticket, from_ticket, reply_to,
                   bytes(body), time.time() + timeout)  # fmt: skip
