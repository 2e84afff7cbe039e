"""Messaging at the hub: hosts announce themselves, messages are routed to
them and their results back (docs/protocol.md "Messaging").

The decisions are the sans-I/O directory's
(:mod:`freight.protocol.msgdirectory`); this module is its adapter on the
control channel. It checks a host's announcement (``MsgHello``: the identity
key is one the account registered, and it signed the host key), answers
``MsgResolve`` with ``MsgRoute``, hands a ``MsgSend`` on to the receiving
host's attachment as ``MsgDeliver`` (or answers ``MsgResult`` at once:
``no_host``, ``busy``, ``not_host``, ``too_large``), and forwards the
receiver's ``MsgResult`` to the sender with ``host`` filled in. When an
attachment goes (the relay's detach hook), what was in flight to its host is
answered ``retry``. The payload of a message is sealed end to end: the hub
never opens it.

Also here: ``GET /v1/msg/hosts`` (the hosts a user may see), the metrics
(messages by outcome, hosts, in flight), and the events (a host's changed
registrations; refused messages at most once per sender account and reason
per minute, with a count).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from aiohttp import web
from prometheus_client import Counter, Gauge

from ..errors import Conflict, Forbidden
from ..protocol import messages as m
from ..protocol.msgdirectory import (
    BUSY,
    NO_HOST,
    NOT_HOST,
    RETRY,
    TOO_LARGE,
    Directory,
    Host,
    Taken,
    Throttle,
    fit_route,
)
from ..protocol.msgkeys import BadHostKey, verify_host_key
from ..protocol.relaycodes import RefusalCode
from .appgate import AppGate, hold
from .dispatch import Dispatcher, Link, Scope
from .observe import EventLog, Metrics
from .relay import Attachment, Router
from .requests import current_user

__all__ = ["MESSAGING", "Messaging", "add_routes"]

REFUSAL_WINDOW = 60.0  # seconds: one refusal event per (account, reason)
REGS_WINDOW = 5.0  # seconds: one registration event per host

# Error codes answering a MsgHello (with its rid), beside BadHostKey's: the
# identity key is not the account's; the host id is another account's.
UNKNOWN_IDENTITY = Forbidden.code
HOST_TAKEN = Conflict.code


class Messaging:
    """The hub's side of messaging, one per hub."""

    def __init__(
        self,
        relay: Router,
        events: EventLog,
        metrics: Metrics,
        *,
        warmup: float,
        gate: AppGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.relay = relay
        self.events = events
        # --app-approval: which applications pass; each host's last MsgHello
        # as it came (a decision re-applies it) and the applications it was
        # last told are held.
        self.gate = gate
        self.hellos: dict[Attachment, tuple[str, m.MsgHello, str]] = {}
        self.held: dict[Attachment, dict[str, str]] = {}
        self.clock = clock
        self.wall = wall
        self.directory = Directory(started=clock(), warmup=warmup)
        self.refusals = Throttle(REFUSAL_WINDOW)
        self.announcements = Throttle(REGS_WINDOW)
        r = metrics.registry
        self.outcomes = Counter(
            "freight_msg_messages",
            "Messages by outcome: delivered, or the reason none took them",
            ["outcome"],
            registry=r,
        )
        self.hosts_gauge = Gauge("freight_msg_hosts", "Messaging hosts attached", registry=r)
        self.inflight_gauge = Gauge(
            "freight_msg_inflight", "Messages handed on and not answered yet", registry=r
        )
        # Read when scraped: nothing to do per message.
        self.hosts_gauge.set_function(lambda: len(self.directory.hosts))
        self.inflight_gauge.set_function(lambda: len(self.directory.flights))
        relay.detach_hooks.append(self.detached)
        # In a cluster, the messaging node when it is another (name, address):
        # every host attaches there (docs/cluster.md "Messaging").
        self.home: tuple[str, str] | None = None
        # Asks the database which node that is (between heartbeats, when a
        # host is sent away: the messaging node may have just died).
        self.rehome: Callable[[], Awaitable[None]] | None = None
        self._rehomed = float("-inf")

    def register(self, dispatcher: Dispatcher) -> None:
        """The messaging frames, on any attached control channel."""
        dispatcher.register(m.MsgHello, self.hello, Scope.CONTROL)
        dispatcher.register(m.MsgResolve, self.resolve, Scope.CONTROL)
        dispatcher.register(m.MsgSend, self.send, Scope.CONTROL)
        dispatcher.register(m.MsgResult, self.result, Scope.CONTROL)

    # --- frames ------------------------------------------------------------------

    async def hello(self, link: Link, msg: m.MsgHello, payload: bytes) -> None:
        att: Attachment = link.att
        user = link.user
        if self.home is not None and msg.regs and await self._still_elsewhere():
            self._answer(att, self._elsewhere(msg.rid))  # it takes messages: go there
            return
        keys = await self.relay.keys_of(user.id)
        if att.closed:
            return  # it went while the keys were looked up
        if msg.identity not in keys:
            self._answer(
                att,
                m.Error(
                    rid=msg.rid,
                    code=UNKNOWN_IDENTITY,
                    message=f"identity key {msg.identity[:16]}… is not one of account "
                    f"{user.name!r}'s keys; register it (freight keys) and announce again",
                ),
            )
            return
        try:
            hid = verify_host_key(
                bytes.fromhex(msg.identity), bytes.fromhex(msg.key), bytes.fromhex(msg.sig)
            )
        except BadHostKey as exc:
            self._answer(att, m.Error(rid=msg.rid, code=exc.code, message=exc.message))
            return
        if self.gate is not None:
            if not await self._apply(att, user.name, msg, hid, msg.rid):
                return
            self._answer(att, m.Done(rid=msg.rid))
            return
        out = self.directory.hello(att, user.name, msg, hid, self.wall())
        if isinstance(out, Taken):
            self._answer(
                att,
                m.Error(
                    rid=msg.rid,
                    code=HOST_TAKEN,
                    message=f"host {hid} is attached for another account: a host key "
                    "belongs to one account; give this host a key of its own",
                ),
            )
            return
        self._retry(hid, out.retry)
        self._answer(att, m.Done(rid=msg.rid))
        if out.changed:
            self._note_regs(user.name, hid, out.host.regs)

    def _note_regs(self, account: str, hid: str, regs: Any) -> None:
        count = self.announcements.note(hid, self.clock())
        if count:
            self.relay.spawn(
                self.events.emit(
                    "msg_registrations",
                    account,
                    host=hid,
                    regs=[_reg(r) for r in regs],
                    changes=count,
                )
            )

    # --- application approval (--app-approval) ------------------------------------

    async def _apply(
        self, att: Attachment, account: str, msg: m.MsgHello, hid: str, rid: str
    ) -> bool:
        """Record a host's registrations but those of held applications, and
        tell it which are held (before the Done, so its registration call
        knows). False if it is answered already (an error) or went."""
        assert self.gate is not None
        states = await self.gate.states((r.app for r in msg.regs), account)
        if att.closed or (not rid and att in self.hellos and self.hellos[att][1] is not msg):
            return False  # it went, or announced anew while a decision was read
        kept, held = hold(msg.regs, states)
        out = self.directory.hello(
            att, account, msgspec.structs.replace(msg, regs=kept), hid, self.wall()
        )
        if isinstance(out, Taken):
            if rid:
                self._answer(
                    att,
                    m.Error(
                        rid=rid,
                        code=HOST_TAKEN,
                        message=f"host {hid} is attached for another account: a host key "
                        "belongs to one account; give this host a key of its own",
                    ),
                )
            return False
        self.hellos[att] = (account, msg, hid)
        if held or self.held.get(att):
            self._answer(att, m.MsgHeld(apps=held))
        self.held[att] = held
        self._retry(hid, out.retry)
        if out.changed:
            self._note_regs(account, hid, out.host.regs)
        return True

    async def decided(self, app: str, state: str) -> None:
        """An admin approved or refused ``app``: the hosts that announced it
        take messages for it from now on, or no longer (no new MsgHello)."""
        if self.gate is None:
            return
        self.gate.decided(app, state)
        for att, (account, msg, hid) in list(self.hellos.items()):
            if not att.closed and any(r.app == app for r in msg.regs):
                await self._apply(att, account, msg, hid, "")

    async def resolve(self, link: Link, msg: m.MsgResolve, payload: bytes) -> None:
        if self.home is not None and await self._still_elsewhere():
            self._answer(link.att, self._elsewhere(msg.rid))  # it sends: go there
            return
        route = self.directory.resolve(link.user.name, msg.dest, msg.app, msg.type, self.clock())
        hosts, left = fit_route(h.info() for h in route.hosts)
        text = _explain(route.reason, msg.dest, msg.app)
        if left:
            text = f"{left} more hosts match; a route lists only as many as fit in one frame"
        # Sent straight on the channel, not through the attachment's queue:
        # a client asking for routes without reading them is slowed down by
        # its own socket instead of growing a queue at the hub.
        await link.chan.send(
            m.MsgRoute(rid=msg.rid, hosts=hosts, reason=route.reason, message=text)
        )

    async def send(self, link: Link, msg: m.MsgSend, payload: bytes) -> None:
        att: Attachment = link.att
        if self.home is not None:  # it resolved there: it sends it again once back there
            self._answer(att, self._elsewhere())
            return
        reason, receiver = self.directory.send(att, msg, len(payload))
        if receiver is None:
            self._refused(att, link.user.name, msg.id, msg.to, reason)
            return
        sender = self.directory.host_of(att)
        assert sender is not None  # directory.send accepted it
        self.relay.deliver(
            receiver.handle,  # type: ignore[arg-type]  # an Attachment, kept opaque there
            m.MsgDeliver(
                len=len(payload),
                id=msg.id,
                frm=sender.hid,
                account=sender.account,
                app=msg.app,
                type=msg.type,
                ticket=msg.ticket,
                from_ticket=msg.from_ticket,
                reply_to=msg.reply_to,
            ),
            payload,
        )

    async def result(self, link: Link, msg: m.MsgResult, payload: bytes) -> None:
        answer = self.directory.result(link.att, msg)
        if answer is None:
            return  # answered already, or its sender went (its spool sends it again)
        sender = answer.sender
        self._answer(
            sender.handle,  # type: ignore[arg-type]
            m.MsgResult(
                id=msg.id,
                host=answer.receiver.hid,
                count=msg.count,
                reason="" if msg.count else msg.reason,
                message="" if msg.count else msg.message,
            ),
        )
        if msg.count:
            self.outcomes.labels("delivered").inc()
        else:
            self._note_refusal(sender.account, msg.reason or "unknown")

    # --- attachments going --------------------------------------------------------

    async def _still_elsewhere(self) -> bool:
        """Whether messaging is on another node, asked again at most once a
        second (hosts sent to a node that died come back at once)."""
        now = self.clock()
        if self.rehome is not None and now - self._rehomed >= 1.0:
            self._rehomed = now
            try:
                await self.rehome()
            except Exception as exc:  # the database is out of reach: keep what we knew
                self.events.log.warning("msg_rehome_failed", error=repr(exc))
        return self.home is not None

    def _elsewhere(self, rid: str = "") -> m.Error:
        assert self.home is not None
        name, url = self.home
        text = f"messaging of this cluster is on node {name}; attach there"
        return m.Error(rid=rid, code=RefusalCode.ELSEWHERE, message=text, at=url)

    def homed(self, home: tuple[str, str] | None) -> None:
        """Which node holds messaging now (None: this one). The hosts here
        are sent to another; a node that becomes it warms up first (hosts
        come back over some seconds, an empty route waits for them)."""
        if home is None and self.home is not None:
            self.directory.started = self.clock()
        self.home = home
        if home is not None:  # the hosts that take messages go there
            for host in list(self.directory.hosts.values()):
                if host.regs:
                    self._answer(cast(Attachment, host.handle), self._elsewhere())

    def detached(self, att: Attachment) -> None:
        """The relay's detach hook: forget the host, answer ``retry`` for
        what was in flight to it."""
        self.hellos.pop(att, None)
        self.held.pop(att, None)
        host, retry = self.directory.detach(att)
        if host is None:
            return
        self._retry(host.hid, retry)

    def _retry(self, hid: str, flights: tuple[tuple[str, str], ...]) -> None:
        for sender_hid, mid in flights:
            sender = self.directory.hosts.get(sender_hid)
            if sender is None:
                continue
            self._answer(
                sender.handle,  # type: ignore[arg-type]
                m.MsgResult(
                    id=mid,
                    host=hid,
                    reason=RETRY,
                    message="the receiving host went before it answered; send again",
                ),
            )
            self._note_refusal(sender.account, RETRY)

    # --- helpers ---------------------------------------------------------------------

    def _answer(self, att: Attachment, msg: m.Message) -> None:
        """A frame for ``att``; one that reads nothing while it keeps asking
        (its queue far beyond the relay's bound) is dropped as too slow."""
        if att.queued > self.relay.queue_limit:
            self.relay.too_slow(att)
            return
        self.relay.deliver(att, msg)

    def _refused(self, att: Attachment, account: str, mid: str, to: str, reason: str) -> None:
        self._answer(
            att, m.MsgResult(id=mid, host=to, reason=reason, message=_explain(reason, to, ""))
        )
        self._note_refusal(account, reason)

    def _note_refusal(self, account: str, reason: str) -> None:
        self.outcomes.labels(reason).inc()
        count = self.refusals.note((account, reason), self.clock())
        if count:
            self.relay.spawn(self.events.emit("msg_refused", account, reason=reason, count=count))

    # --- listing ---------------------------------------------------------------------

    def listing(self, account: str, admin: bool) -> dict[str, Any]:
        return {"hosts": [_describe(h) for h in self.directory.visible(account, admin)]}


def _reg(reg: m.MsgReg) -> dict[str, Any]:
    return {"app": reg.app, "interest": reg.interest, "peer": reg.peer}


def _describe(host: Host) -> dict[str, Any]:
    return {
        "hid": host.hid,
        "account": host.account,
        "regs": [_reg(r) for r in host.regs],
        "since": host.since,
        "sent": host.sent,
        "delivered": host.delivered,
        "refused": host.refused,
        "inflight": host.in_count,
    }


def _explain(reason: str, dest: str, app: str) -> str:
    """A one-line message beside a reason."""
    texts = {
        "": "",
        NO_HOST: f"no host of {dest!r} is attached",
        "no_app": f"no application {app!r} is registered at {dest!r}",
        "no_interest": f"no registration of {app!r} at {dest!r} takes this type",
        "forbidden": f"the registrations of {app!r} at {dest!r} do not take your account",
        RETRY: "the hub has just started and its hosts are re-attaching; try again",
        BUSY: "too many messages are in flight to or from that host; try again later",
        TOO_LARGE: "a message body is at most 1 MiB",
        NOT_HOST: "announce this attachment as a host (MsgHello) before sending",
    }
    return texts.get(reason, reason)


MESSAGING: web.AppKey[Messaging] = web.AppKey("messaging", Messaging)


async def list_hosts(request: web.Request) -> web.Response:
    """The messaging hosts: an admin sees all; a user those of its account
    and those with a registration open to it."""
    user = await current_user(request)
    return web.json_response(request.app[MESSAGING].listing(user.name, user.role == "admin"))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/msg/hosts", list_hosts)
    app.router.add_get("/api/msg/hosts", list_hosts)
