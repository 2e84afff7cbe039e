"""A messaging host on a :class:`~freight.client.relay.RelayClient`.

One attachment to the hub carries the messages of every application on the
host. :class:`MessageHost` keeps the host key (``msg.key``, signed by the
device's identity key), the registrations, the spool of unanswered messages
(``msgspool.db``) and the dedupe window, and speaks the hub's messaging
frames (docs/protocol.md "Messaging"):

* it announces its registrations (MsgHello) at start, after every change
  (one in flight, the latest sent after the answer) and after every
  re-attach, then sends again every message whose answer is not known;
* ``send`` spools the message, resolves the destination (routes cached for
  a second, host keys checked with :func:`verify_host_key`), seals the body
  for each host and waits for every host's MsgResult; ``busy`` and ``retry``
  answers are retried after a back-off (0.05 s doubling to 1 s; one at a
  time to a host and app that said busy: msgbudget) until the timeout;
* a MsgDeliver is opened, checked against the dedupe window, matched to the
  registrations and queued to each; once every consumer has taken it, the
  host answers with the count.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..errors import FreightError, IntegrityError, PeerAbsent
from ..logs import fields
from ..protocol import messages as m
from ..protocol.e2e import public_of
from ..protocol.msgkeys import sign_host_key, verify_host_key
from ..protocol.msglocal import SPOOLED
from ..protocol.msgseal import SEAL_OVERHEAD, aad, open_body, seal_body
from ..protocol.msgtables import TRANSIENT, Dedupe, Reg, Registrations, Tally
from ..tasks import Supervisor
from .config import ClientConfig
from .msgapp import (
    ALL_TYPES,
    REASON_TEXT,
    Delivery,
    Registration,
    SendResult,
    check_app,
    check_message,
    load_host_key,
    result_error,
)
from .msgbudget import Outbox, Unanswered
from .msgroutes import Peer, Routes
from .msgspool import Spool, Spooled
from .relay import RelayClient, identity_key

log = logging.getLogger("freight.msg")

__all__ = ["Delivery", "MessageHost", "Registration", "SendResult", "result_error"]

MAX_UNANSWERED: Final = 10_000  # messages of this host waiting for their answer
MAX_UNANSWERED_BYTES: Final = 256 * 1024 * 1024  # and their bodies
MAX_PARKED: Final = 4096  # deliveries waiting for their sender's key
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 1.0


@dataclass(slots=True)
class _Out:
    row: Spooled
    deadline: float
    tally: Tally = field(default_factory=Tally)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reattached: bool = False


@dataclass(slots=True)
class _In:
    pending: dict[str, int]  # ticket -> how many copies are not taken yet
    count: int


class MessageHost:
    """This host's messaging: registrations, sending, receiving (see the module doc)."""

    def __init__(
        self,
        relay: RelayClient,
        config: ClientConfig,
        *,
        spool: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay, self.config, self._clock = relay, config, clock
        self._key = load_host_key(config)
        self.key = self._key.public_key().public_bytes_raw()
        identity = identity_key(config)
        self._identity_pub = public_of(identity)
        self._sig = sign_host_key(identity, self.key)
        self.hid = verify_host_key(self._identity_pub, self.key, self._sig)
        self._spool = Spool(spool or config.root / "msgspool.db")
        self._regs = Registrations(self.hid)
        self._handles: dict[str, Registration] = {}
        self._dedupe = Dedupe(clock)
        self._inbound: dict[str, _In] = {}
        self._out: dict[str, _Out] = {}
        self._slots = Unanswered(MAX_UNANSWERED, MAX_UNANSWERED_BYTES)
        self._outbox = Outbox(clock, FIRST_BACKOFF, MAX_BACKOFF)  # (msgbudget)
        self._routes = Routes(relay, self._key, clock)
        self._parked: dict[str, list[tuple[m.MsgDeliver, bytes]]] = {}
        self._parked_count = 0
        self._results: deque[m.MsgResult] = deque()
        self._results_ready = asyncio.Event()
        self._dirty = asyncio.Event()
        self._announced = asyncio.Event()
        self.tasks = Supervisor("msg-host")
        self._routes.spawn = lambda coro: self.tasks.spawn(coro, name="route", detached=True)
        self._closed = False
        self.held: dict[str, str] = {}  # app -> pending|refused (freight hub --app-approval)
        self._sending: set[asyncio.Task[Any]] = set()
        self._version = self._acked = 0  # of the registration table
        self._acked_changed = asyncio.Event()
        self._counters = dict.fromkeys(
            ("sent", "delivered", "resent", "deduplicated", "refused"), 0
        )

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Announce this host (the relay is started) and send again what a
        previous run left unanswered."""
        now_wall, now = time.time(), self._clock()
        for mid, at, count, reason in self._spool.seen(now_wall):
            self._dedupe.load(mid, now - (now_wall - at), count, reason)
        self.relay.on_message = self._on_message
        self.relay.after_attach = self._after_attach
        await self._hello()
        self.tasks.spawn(self._announcer(), name="announce", detached=True)
        self.tasks.spawn(self._answerer(), name="answer", detached=True)
        for row in self._spool.left():
            self.tasks.spawn(self._send_left(row), name="resend", detached=True)

    async def aclose(self) -> None:
        """Stop: sends still waiting are cancelled (their messages stay in
        the spool and go out at the next start)."""
        self._closed = True
        sending = [t for t in self._sending if t is not asyncio.current_task()]
        for t in sending:
            t.cancel()
        if sending:
            await asyncio.wait(sending, timeout=5)
        if self.relay.on_message == self._on_message:
            self.relay.on_message = None
            self.relay.after_attach = None
        await self.tasks.aclose()
        for h in self._handles.values():
            h._close()
        self._spool.close()

    async def __aenter__(self) -> MessageHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- registrations ----------------------------------------------------------------

    def register(
        self, app: str, interest: int, *, peer: str = "*", owner: object = None
    ) -> Registration:
        """A new registration (announced to the hub shortly)."""
        return self._register(app, interest, peer=peer, owner=owner, announced=True)

    def _register(
        self, app: str, interest: int, *, peer: str, owner: object, announced: bool
    ) -> Registration:
        check_app(app)
        reg = self._regs.add(app, interest, peer=peer, owner=owner, announced=announced)
        handle = self._handles[reg.ticket] = Registration(reg, self._taken)
        if announced:
            self._version += 1
            self._dirty.set()
        return handle

    def unregister(self, ticket: str) -> None:
        reg = self._regs.remove(ticket)
        if reg is not None:
            self._gone(reg)

    def drop_owner(self, owner: object) -> None:
        for reg in self._regs.drop_owner(owner):
            self._gone(reg)

    def _gone(self, reg: Reg) -> None:
        handle = self._handles.pop(reg.ticket)
        handle._close()
        # What it held or was given and will never take: those copies do not count.
        for mid in [mid for mid, i in self._inbound.items() if reg.ticket in i.pending]:
            self._untake(mid, reg.ticket)
        if reg.announced:
            self._version += 1
            self._dirty.set()

    def apps(self) -> list[dict[str, object]]:
        return [self._app(r) for r in self._regs.all()]

    def _app(self, r: Reg) -> dict[str, object]:
        return {"ticket": r.ticket, "app": r.app, "interest": r.interest, "peer": r.peer,
                "announced": r.announced, "held": self.held.get(r.app, ""),
                **self._handles[r.ticket].stats()}  # fmt: skip

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    # --- announcing -------------------------------------------------------------------

    async def _hello(self) -> None:
        regs = [m.MsgReg(app=a, interest=i, peer=p) for a, i, p in self._regs.announce()]
        rid = secrets.token_hex(6)
        hello = m.MsgHello(
            rid=rid,
            key=self.key.hex(),
            sig=self._sig.hex(),
            identity=self._identity_pub.hex(),
            regs=regs,
        )
        self._dirty.clear()
        version = self._version
        await self.relay.request(hello, rid)
        self._announced.set()
        if version > self._acked:
            self._acked = version
            self._acked_changed.set()

    async def announced(self) -> None:
        """Until the hub has taken the registrations made so far."""
        want = self._version
        while self._acked < want:
            self._acked_changed.clear()
            await self._acked_changed.wait()

    async def _announcer(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self._hello()
            except FreightError as exc:
                log.warning("announcing failed", extra=fields(error=exc.message))
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _after_attach(self) -> None:
        self._announced.clear()
        self._outbox.clear()
        self._routes.clear()  # routes from before may name hosts not back yet
        self._dirty.set()
        await self._announced.wait()
        for out in self._out.values():
            out.reattached = True
            out.changed.set()

    # --- sending -------------------------------------------------------------------------

    async def send(
        self,
        dest: str,
        app: str,
        type: int,
        body: bytes,
        *,
        ticket: str = "",
        from_ticket: str = "",
        reply_to: str = "",
        timeout: float = 30.0,
        wait: bool = True,
    ) -> SendResult:
        """Send one message; returns when every host answered (or at the
        timeout). ``wait=False``: returns once it is in the spool (reason
        ``spooled``, count 0); it is delivered all the same (again after a
        reconnect or a restart, until ``timeout``), its outcome only counted.
        Replies are sent so: a responder that waited for each answer would
        serve one request per round trip."""
        check_message(dest, app, type, body, ticket, from_ticket, reply_to)
        await self._slots.take(len(body))
        row = Spooled(secrets.token_hex(16), dest, app, type, ticket, from_ticket, reply_to,
                      bytes(body), time.time() + timeout)  # fmt: skip
        await self._spooled(row)
        if wait:
            return await self._settle(row, timeout)
        self.tasks.spawn(self._settle(row, timeout), name="post", detached=True)
        return SendResult(row.id, 0, SPOOLED, "")

    async def _spooled(self, row: Spooled) -> None:
        """Write ``row`` to the spool; its room is given back if that fails."""
        added = False
        try:
            await self._spool.add(row)
            added = True
        finally:
            if not added:
                self._slots.give(len(row.body))
        self._counters["sent"] += 1

    async def _settle(self, row: Spooled, timeout: float) -> SendResult:
        """Deliver a spooled message, then forget it and free its slot."""
        try:
            return await self._deliver(row, timeout)
        finally:
            if not self._closed:  # closing: it stays spooled for the next start
                self._spool.remove(row.id)
            self._slots.give(len(row.body))

    async def _send_left(self, row: Spooled) -> None:
        """A message a previous run accepted: sent again with the same id."""
        left = row.expires - time.time()
        if left <= 0:
            self._spool.remove(row.id)
            return
        await self._slots.take(len(row.body))
        self._counters["resent"] += 1
        res = await self._settle(row, left)
        log.debug("spooled message answered", extra=fields(id=row.id, count=res.count))

    async def _deliver(self, row: Spooled, timeout: float) -> SendResult:
        out = _Out(row, self._clock() + timeout)
        self._out[row.id] = out
        task = asyncio.current_task()
        if task is not None:
            self._sending.add(task)
        try:
            await self._attempts(out)
        except TimeoutError:
            pass
        finally:
            del self._out[row.id]
            self._outbox.done(row.id, out.tally.sent)
            if task is not None:
                self._sending.discard(task)
        count, reason = out.tally.result()
        if count:
            self._counters["delivered"] += count
        else:
            self._counters["refused"] += 1
        return SendResult(row.id, count, reason, "" if count else REASON_TEXT.get(reason, ""))

    def _left(self, out: _Out) -> float:
        left = out.deadline - self._clock()
        if left <= 0:
            raise TimeoutError
        return left

    async def _attempts(self, out: _Out) -> None:
        """Send until every host of the route has a final answer: again to
        hosts that answered busy/retry (after a back-off), and after a
        re-attach to every host of the fresh route not answered yet."""
        row, tally = out.row, out.tally
        delay = FIRST_BACKOFF
        while True:
            if not self._announced.is_set():
                async with asyncio.timeout(self._left(out)):  # no task, as wait_for makes
                    await self._announced.wait()
            route = self._routes.cached(row.dest, row.app, row.type)
            if route is None:
                async with asyncio.timeout(self._left(out)):
                    route = await self._routes.resolve(row.dest, row.app, row.type)
            peers, reason = route
            tally.route_reason = "" if peers else reason
            again, out.reattached = out.reattached, False
            out.changed.clear()
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
                    self._counters["resent"] += 1
                tally.sent.add(hid)
                size = len(row.body) + SEAL_OVERHEAD
                if not self._outbox.ready(row.id, hid, row.app, size):  # it would be busy
                    tally.record(hid, 0, "busy")  # what it is, should its time run out
                    async with asyncio.timeout(self._left(out)):
                        await self._outbox.admit(row.id, hid, row.app, size)
                    tally.expect((hid,))
                left = False
                try:
                    await self._send_to(row, by_hid[hid])
                    left = True
                finally:
                    if not left:  # it may never have left: it will not be answered
                        self._outbox.unsent(row.id, hid)
            while tally.waiting and not out.reattached:
                # A timer rather than wait_for: no task per message.
                timer = asyncio.get_running_loop().call_later(self._left(out), out.changed.set)
                try:
                    await out.changed.wait()
                finally:
                    timer.cancel()
                out.changed.clear()  # (the next turn's _left ends it once it is over)
            if out.reattached:
                continue
            if tally.hosts and tally.complete:
                return
            if not tally.hosts and reason not in TRANSIENT:
                return
            await asyncio.sleep(min(delay, self._left(out)))
            delay = min(delay * 2, MAX_BACKOFF)
            self._routes.forget((row.dest, row.app, row.type))

    async def _send_to(self, row: Spooled, peer: Peer) -> None:
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
        await self.relay.send_frame(frame, sealed)

    # --- what the hub pushes ------------------------------------------------------------------

    async def _on_message(self, msg: m.AnyMessage, payload: bytes) -> None:
        if isinstance(msg, m.MsgResult):
            out = self._out.get(msg.id)
            self._outbox.answered(msg.id, msg.host, out.row.app if out else None, msg.reason)
            if out is not None and out.tally.record(msg.host, msg.count, msg.reason):
                if msg.reason == "not_host":
                    self._dirty.set()
                out.changed.set()
        elif isinstance(msg, m.MsgDeliver):
            self._on_deliver(msg, payload)
        elif isinstance(msg, m.MsgHeld):  # before the Done of the MsgHello it answers
            self.held = dict(msg.apps)

    def _on_deliver(self, msg: m.MsgDeliver, payload: bytes) -> None:
        seen = self._dedupe.get(msg.id)
        if seen is not None:
            self._counters["deduplicated"] += 1
            for t in self._regs.match(msg.app, msg.type, msg.account, msg.ticket).tickets:
                self._handles[t].deduplicated += 1
            if seen.answered:
                self._answer(msg.id, seen.count, seen.reason, remember=False)
            return
        peer = self._routes.peers.get(msg.frm)
        if peer is not None:
            self._take(msg, payload, peer)
            return
        if self._parked_count >= MAX_PARKED:
            self._answer(msg.id, 0, "retry", remember=False)
            return
        self._dedupe.begin(msg.id)
        self._parked_count += 1
        waiting = self._parked.setdefault(msg.frm, [])
        waiting.append((msg, payload))
        if len(waiting) == 1:
            self.tasks.spawn(self._find_sender(msg.frm), name="find-sender", detached=True)

    async def _find_sender(self, hid: str) -> None:
        peer = None
        try:
            peer = await asyncio.wait_for(self._routes.find(hid), 30)
        except (FreightError, TimeoutError) as exc:
            log.debug("sender not found", extra=fields(hid=hid, error=str(exc)))
        finally:
            parked = self._parked.pop(hid, [])
            self._parked_count -= len(parked)
            for msg, payload in parked:
                self._dedupe.forget(msg.id)
                if peer is None:
                    self._answer(msg.id, 0, "retry", remember=False)
                else:
                    self._take(msg, payload, peer)

    def _take(self, msg: m.MsgDeliver, payload: bytes, peer: Peer) -> None:
        header = aad(
            msg.id, msg.frm, self.hid, msg.type, msg.app, msg.ticket, msg.from_ticket, msg.reply_to
        )
        try:
            if peer.account != msg.account:
                raise IntegrityError("the sender's key belongs to another account")
            body = open_body(peer.recv_key, payload, header)
        except IntegrityError:
            self._answer(msg.id, 0, "bad_seal", remember=False)
            return
        match = self._regs.match(msg.app, msg.type, msg.account, msg.ticket)
        if not match.tickets:
            self._answer(msg.id, 0, match.reason)
            return
        pending: dict[str, int] = {}
        for t in match.tickets:
            d = Delivery(
                msg.id,
                t,
                msg.frm,
                msg.account,
                msg.app,
                msg.type,
                msg.from_ticket,
                msg.reply_to,
                body,
            )
            if self._handles[t].offer(d):
                pending[t] = 1
        if not pending:
            self._answer(msg.id, 0, "busy", remember=False)
            return
        self._dedupe.begin(msg.id)
        self._inbound[msg.id] = _In(pending, len(pending))

    def _taken(self, d: Delivery, handle: Registration) -> bool:
        inbound = self._inbound.get(d.id)
        if inbound is None or inbound.pending.get(d.ticket, 0) <= 0:
            return False
        del inbound.pending[d.ticket]
        if not inbound.pending:
            del self._inbound[d.id]
            self._answer(d.id, inbound.count, "")
        return True

    def _untake(self, mid: str, ticket: str) -> None:
        """A copy that will never be taken (its registration went)."""
        inbound = self._inbound[mid]
        del inbound.pending[ticket]
        inbound.count -= 1
        if not inbound.pending:
            del self._inbound[mid]
            self._answer(mid, inbound.count, "" if inbound.count else "ticket_gone")

    def _answer(self, mid: str, count: int, reason: str, *, remember: bool = True) -> None:
        if remember:
            self._dedupe.answer(mid, count, reason)
            self._spool.answered(mid, count, reason)
        elif (seen := self._dedupe.get(mid)) is not None and not seen.answered:
            self._dedupe.forget(mid)
        self._results.append(m.MsgResult(id=mid, count=count, reason=reason))
        self._results_ready.set()

    async def _answerer(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            while self._results:
                run: list[tuple[m.Message, bytes]] = [
                    (self._results.popleft(), b"") for _ in range(min(256, len(self._results)))
                ]
                await self.relay.send_frames(run)

    # --- request/reply ---------------------------------------------------------------------------

    async def request(
        self, dest: str, app: str, type: int, body: bytes, *, timeout: float = 5.0
    ) -> Delivery:
        """Send a message and wait for its reply (a message to the ticket it
        carries as ``from_ticket``). :class:`NoRecipient` (or the error of
        the reason) when nobody took it, :class:`PeerAbsent` when no reply
        came in time."""
        deadline = self._clock() + timeout
        reply = self._register(app, ALL_TYPES, peer="*", owner=object(), announced=False)
        try:
            res = await self.send(dest, app, type, body, from_ticket=reply.ticket, timeout=timeout)
            if not res.ok:
                raise result_error(res)
            try:
                got = await asyncio.wait_for(reply.get(), max(0.0, deadline - self._clock()))
            except TimeoutError:
                raise PeerAbsent(f"no reply to the {app} request within {timeout:g} s") from None
            reply.taken(got)
            return got
        finally:
            self.unregister(reply.ticket)
