"""A messaging host on a :class:`~freight.client.relay.RelayClient`.

One attachment to the hub carries the messages of every application on the
host. :class:`MessageHost` keeps the host key (``msg.key``, signed by the
device's identity key), the registrations, the spool of unanswered messages
(``msgspool.db``) and the dedupe window, and speaks the hub's messaging
frames (docs/protocol.md "Messaging"):

* it announces its registrations (MsgHello) at start, after every change
  (one in flight, the latest sent after the answer) and after every
  re-attach, then sends again every message whose answer is not known;
* ``send`` (or ``submit``, which takes no task) hands the message to
  :class:`~freight.client.msgsend.Outgoing`: spooled, resolved, sealed for
  each host and settled by every host's MsgResult or its timeout; frames
  for the hub queue and go in runs;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import FreightError, IntegrityError, PeerAbsent
from ..logs import fields
from ..protocol import messages as m
from ..protocol.e2e import public_of
from ..protocol.msgkeys import sign_host_key, verify_host_key
from ..protocol.msgseal import aad, open_body
from ..protocol.msgtables import Dedupe, Reg, Registrations
from ..tasks import Supervisor
from .config import ClientConfig
from .msgapp import (
    ALL_TYPES,
    Delivery,
    Registration,
    SendResult,
    check_app,
    load_host_key,
    result_error,
)
from .msgroutes import Peer, Routes
from .msgsend import Outgoing
from .msgspool import Spool
from .relay import RelayClient, identity_key

log = logging.getLogger("freight.msg")

__all__ = ["Delivery", "MessageHost", "Registration", "SendResult", "result_error"]

MAX_PARKED: Final = 4096  # deliveries waiting for their sender's key


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
        self._routes = Routes(relay, self._key, clock)
        self._parked: dict[str, list[tuple[m.MsgDeliver, bytes]]] = {}
        self._parked_count = 0
        # Frames for the hub, written in runs by one task: no send waits.
        self._frames: deque[tuple[m.Message, bytes]] = deque()
        self._frames_ready = asyncio.Event()
        self._dirty = asyncio.Event()
        self._announced = asyncio.Event()
        self.tasks = Supervisor("msg-host")
        self._routes.spawn = lambda coro: self.tasks.spawn(coro, name="route", detached=True)
        self._closed = False
        self.held: dict[str, str] = {}  # app -> pending|refused (freight hub --app-approval)
        self._version = self._acked = 0  # of the registration table
        self._acked_changed = asyncio.Event()
        self._counters = dict.fromkeys(
            ("sent", "delivered", "resent", "deduplicated", "refused"), 0
        )
        # The sending half (msgsend): send() below, and the local socket submits to it.
        self.outgoing = Outgoing(
            hid=self.hid, spool=self._spool, routes=self._routes, announced=self._announced,
            post=self._post, on_not_host=self._dirty.set, counters=self._counters,
            tasks=self.tasks, clock=clock,
        )  # fmt: skip

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
        self.tasks.spawn(self._writer(), name="writer", detached=True)
        for row in self._spool.left():
            self.tasks.spawn(self.outgoing.send_left(row), name="resend", detached=True)

    async def aclose(self) -> None:
        """Stop: sends still waiting are cancelled (their messages stay in
        the spool and go out at the next start)."""
        self._closed = True
        await self.outgoing.aclose()
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
        self.outgoing.outbox.clear()
        self._routes.clear()  # routes from before may name hosts not back yet
        self._dirty.set()
        await self._announced.wait()
        self.outgoing.reattached()

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
        return await self.outgoing.send(
            dest, app, type, body, ticket=ticket, from_ticket=from_ticket, reply_to=reply_to,
            timeout=timeout, wait=wait,
        )  # fmt: skip

    def _post(self, frame: m.Message, payload: bytes = b"") -> None:
        """Queue a frame for the hub (written in runs by :meth:`_writer`)."""
        self._frames.append((frame, payload))
        self._frames_ready.set()

    # --- what the hub pushes ------------------------------------------------------------------

    async def _on_message(self, msg: m.AnyMessage, payload: bytes) -> None:
        if isinstance(msg, m.MsgResult):
            self.outgoing.answered(msg)
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
        self._post(m.MsgResult(id=mid, count=count, reason=reason))

    async def _writer(self) -> None:
        """Write the queued frames (sends and answers), up to 256 at a time."""
        frames = self._frames
        while True:
            await self._frames_ready.wait()
            self._frames_ready.clear()
            while frames:
                run = [frames.popleft() for _ in range(min(256, len(frames)))]
                await self.relay.send_frames(run)

    # --- request/reply ---------------------------------------------------------------------------

    async def request(
        self, dest: str, app: str, type: int, body: bytes, *, timeout: float = 5.0
    ) -> Delivery:
        """Send a message and wait for its reply (a message to the ticket it
        carries as ``from_ticket``). :class:`NoRecipient` (or the error of
        the reason) when nobody took it, :class:`PeerAbsent` when no reply
        came in time."""
        reply = self._register(app, ALL_TYPES, peer="*", owner=object(), announced=False)
        # Settled by the reply (None) or by the request's failure, whichever
        # comes first: a reply does not wait for the request's own answer.
        outcome: asyncio.Future[SendResult | FreightError | None] = (
            asyncio.get_running_loop().create_future()
        )

        def settle(res: SendResult | FreightError | None) -> None:
            if not outcome.done() and (
                res is None or not isinstance(res, SendResult) or not res.ok
            ):
                outcome.set_result(res)

        reply.on_offer = lambda: settle(None)
        try:
            self.outgoing.submit(dest, app, type, body, ticket="", from_ticket=reply.ticket,
                                 reply_to="", timeout=timeout, wait=True, done=settle)  # fmt: skip
            try:
                async with asyncio.timeout(timeout):
                    failed = await outcome
            except TimeoutError:
                raise PeerAbsent(f"no reply to the {app} request within {timeout:g} s") from None
            if isinstance(failed, FreightError):
                raise failed
            if failed is not None:
                raise result_error(failed)
            got = await reply.get()  # (it is there)
            reply.taken(got)
            return got
        finally:
            self.unregister(reply.ticket)
