"""The relay: end-to-end encrypted connections between attached clients.

A client *attaches* (control WebSocket or the HTTP fallback) and may listen
for an application, dial a user's application, offer a one-time code
(``freight send``) or claim one (``freight receive``). Once both ends of a
connection are attached, the hub forwards their records by connection id
without being able to read them (docs/protocol.md "Relay").

Memory stays bounded: each connection may have at most ``window`` bytes
waiting at the hub for each direction, and each attachment at most
``queue_limit`` bytes in all; above either the sender is told to Pause, and
to Resume once half has drained. A sender that goes on regardless
(``OVERSHOOT`` windows) is cut off; an attachment that lets
``queue_limit + IN_FLIGHT`` pile up anyway (many such senders) is dropped
as too slow: it re-attaches and its peers send again what it missed. Each
account has at most ``max_conns`` connections, listens for at most
``MAX_LISTENS`` applications and holds at most ``max_codes`` codes, with a
``limit_reached`` refusal beyond. Records for an end that is not
attached are dropped, not stored: the sending end keeps every record until
the far end acknowledges it and sends it again when the connection is
linked anew (``Linked.rejoined``), so nothing is lost or duplicated even
when the hub itself restarts and every in-memory table here is gone.

The decisions are sans-I/O machines in :mod:`freight.protocol`: the
pairing (:mod:`~freight.protocol.pairing`: listeners, connections, codes'
offers, per-account counts) and the switch (:mod:`~freight.protocol.switch`:
each link's life and flow). This module is their adapter: it looks users up,
feeds them, and performs what they return. Each connection's background
work (its ``linked`` announcement, its events) runs in the connection's own
supervisor, cancelled when it ends; the router's supervisor holds hub-wide
work only.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, cast

from ..protocol import messages as m
from ..protocol.bucket import TokenBucket
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.errors import LocalProtocolError
from ..protocol.pairacts import (
    Action,
    Away,
    Done,
    Ended,
    Gone,
    Granted,
    Hangup,
    Ready,
    Refuse,
    RejoinCode,
    ResolvePeer,
    Waiting,
)
from ..protocol.pairing import DEFAULT_MAX_CONNS, ENDED_REMEMBERED, MAX_LISTENS, Pairing
from ..protocol.relaycodes import BY_ADMIN, BY_HUB, HangupCode, RefusalCode
from ..protocol.switch import (
    CUT,
    DEFAULT_QUEUE_LIMIT,
    DROP,
    FORWARD,
    FRAME_COST,
    PAUSE,
    Switch,
    other,
)
from ..protocol.tunnel import listen_app
from ..tasks import Supervisor
from .attachment import Attachment
from .bandwidth import BandwidthManager
from .bus import Bus, InProcessBus
from .codes import CodeDesk
from .observe import EventLog, Metrics
from .places import Places, conn_key, listen_key, offer_key
from .presence import Presence
from .relaybudget import RelayBudget
from .relayconn import Conn, RelayRefused
from .streams import User

__all__ = ["DEFAULT_MAX_CONNS", "ENDED_REMEMBERED", "MAX_LISTENS", "Attachment", "Router"]

DEFAULT_MAX_CODES = 64  # valid codes per account


class Router:
    """The relay's adapter: it resolves users, feeds the pairing
    (:mod:`freight.protocol.pairing`) and the switch, and performs what they
    return: frames through the bus, events, metrics."""

    def __init__(
        self,
        db: Any,
        events: EventLog,
        metrics: Metrics,
        window: int,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        max_conns: int = DEFAULT_MAX_CONNS,
        max_codes: int = DEFAULT_MAX_CODES,
        fingerprint: str = "",
        bandwidth: BandwidthManager | None = None,
    ) -> None:
        self.db = db
        self.budget = RelayBudget(bandwidth) if bandwidth is not None else None
        self.events = events
        self.log = events.log
        self.metrics = metrics
        self.window = window
        self.queue_limit = queue_limit
        self.switch = Switch(window, queue_limit=queue_limit)
        self.pairing: Pairing[Attachment, Conn] = Pairing(self.switch, Conn, max_conns=max_conns)
        self.conns = self.pairing.conns  # the pairing's table, read on every record
        self.bus: Bus = InProcessBus()
        self.codes = CodeDesk(self, max_codes)
        self.fingerprint = fingerprint  # of the certificate we serve: identity handshakes bind it
        self.attachments: set[Attachment] = set()
        self.presence: Presence[Attachment] = Presence(self.attachments)
        self.tasks = Supervisor("relay")  # hub-wide work; each connection has its own
        self._keys: dict[int, list[str]] = {}
        # Run when an attachment goes, after its queue is discarded (messaging).
        self.detach_hooks: list[Callable[[Attachment], None]] = []
        # Asked before every dial (tunnels): raise RelayRefused to refuse it;
        # the account named ``peer`` if it looked it up (None: not yet).
        self.dial_checks: list[
            Callable[[Attachment, m.Dial, User | None], Awaitable[User | None]]
        ] = []
        # Told when a connection is linked (rejoined or not) and when it ended.
        self.on_linked: list[Callable[[Conn, bool], None]] = []
        self.on_closed: list[Callable[[Conn, str, str], None]] = []
        # In a cluster: which node holds each listener, offer and connection.
        self.places: Places | None = None

    @property
    def max_conns(self) -> int:
        return self.pairing.max_conns

    @property
    def listeners(self) -> dict[tuple[str, str], tuple[Attachment, str]]:
        return self.pairing.listeners

    @property
    def ended(self) -> OrderedDict[str, Gone]:
        """How recent connections ended, so an end that was away when its
        peer hung up learns why when it rejoins."""
        return self.pairing.ended

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept until done and cancelled by
        :meth:`aclose` (database writes that frame handlers must not wait
        for); a failure is logged by the supervisor."""
        try:
            self.tasks.spawn(work, name=getattr(work, "__name__", "work"), detached=True)
        except RuntimeError:  # closing: the supervisor closed the coroutine
            self.log.debug("relay_closing_work_dropped")

    async def aclose(self) -> None:
        for conn in list(self.conns.values()):
            await conn.tasks.aclose()
        await self.tasks.aclose()

    # --- attachments ------------------------------------------------------

    def attach(self, user: User, chan: Any, transport: str, address: str = "") -> Attachment:
        att = Attachment(self, user, chan, transport)
        att.address = address
        self.attachments.add(att)
        return att

    def detach(self, att: Attachment) -> None:
        held = [listen_key(att.user.name, a) for a in att.apps]
        held += [offer_key(n) for n in att.offers] + [conn_key(c) for c in att.ends]
        self.attachments.discard(att)
        self.bus.unsubscribe(att.aid, att.post)
        att.discard_queue()
        if att.lane is not None:
            self.spawn(att.lane.aclose())
        self.perform(att, "", self.pairing.detach(att, time.time()))
        if self.places is not None:  # what it listened for and offered; dropped dials
            self.spawn(self.places.released(k for k in held if k[2:] not in self.conns))
        for hook in self.detach_hooks:
            hook(att)

    def sweep(self, now: float) -> None:
        """End connections that have had an end missing for too long, forget
        expired offers."""
        self.perform(None, "", self.pairing.handle_timer(now))

    async def sweep_loop(self, every: float = 60.0) -> None:
        """Wake when the pairing has a deadline (at least every ``every``
        seconds, for the offers' expiry)."""
        while True:
            deadline = self.pairing.next_deadline()
            wait = every if deadline is None else min(every, deadline - time.time())
            await asyncio.sleep(max(wait, 0.01))
            try:
                self.sweep(time.time())
            except Exception as exc:  # never let the sweeper die
                self.log.warning("relay_sweep_failed", error=repr(exc))

    # --- requests -----------------------------------------------------------

    async def handle(self, att: Attachment, msg: m.AnyMessage, payload: bytes) -> bool:
        """Act on a relay frame; False if ``msg`` is not a relay message."""
        if isinstance(msg, m.Relay):
            self.relay(att, msg, payload)
            return True
        if isinstance(msg, m.Listen):
            acts = self.pairing.listen(att, msg)
            if self.places is not None and not (acts and isinstance(acts[0], Refuse)):
                await self.place(listen_key(att.user.name, msg.app))
            self.perform(att, msg.rid, acts)
            return True
        if isinstance(msg, m.Unlisten):
            self.perform(att, msg.rid, self.pairing.unlisten(att, msg))
            if self.places is not None:
                self.spawn(self.places.released([listen_key(att.user.name, msg.app)]))
            return True
        if isinstance(msg, m.Dial | m.Offer | m.Claim):
            try:
                if isinstance(msg, m.Dial):
                    await self.dial(att, msg)
                elif isinstance(msg, m.Offer):
                    await self.codes.offer(att, msg)
                else:
                    await self.codes.claim(att, msg)
            except RelayRefused as exc:
                if exc.at:
                    self.metrics.relay_elsewhere.labels("request").inc()
                self.deliver(
                    att, m.Error(code=exc.code, message=exc.message, rid=msg.rid, at=exc.at)
                )
            return True
        if isinstance(msg, m.Hangup):
            self.perform(att, "", self.pairing.hangup(att, msg))
            return True
        if isinstance(msg, m.CodeFailed):
            self.codes.failed(att, msg.cid)
            return True
        if isinstance(msg, m.CodeOk):
            self.codes.verified(att, msg.cid)
            return True
        return False

    async def dial(self, att: Attachment, msg: m.Dial) -> None:
        peer: User | None = None
        for check in self.dial_checks:
            peer = await check(att, msg, peer)
        placed = self.places is not None and msg.cid not in self.conns
        if placed:
            await self._dial_place(att, msg)
        try:
            await self._pair_dial(att, msg, peer)
        finally:
            if placed and msg.cid in self.conns and not msg.rejoin:
                await self.place(conn_key(msg.cid))
            elif placed and msg.cid not in self.conns and self.places is not None:
                self.spawn(self.places.released([conn_key(msg.cid)]))  # a refused rejoin

    async def _pair_dial(self, att: Attachment, msg: m.Dial, peer: User | None) -> None:
        acts = self.pairing.dial(att, msg, peer)
        if acts and isinstance(acts[0], ResolvePeer):
            acts = self.pairing.dial(att, msg, await self._user(msg.peer))
        elif acts and isinstance(acts[0], RejoinCode):
            try:
                await self.codes.rejoin(att, msg, acts[0].nameplate)
            except RelayRefused as exc:
                # The rejoining end holds a connection that cannot come back:
                # tell it why, not only the request.
                self.deliver(
                    att, m.Hangup(cid=msg.cid, code=exc.code, message=exc.message, by=BY_HUB)
                )
                raise
            return
        self.perform(att, msg.rid, acts)

    async def _dial_place(self, att: Attachment, msg: m.Dial) -> None:
        """In a cluster: send a dial to the node holding its listener, a
        rejoin to the node holding its connection; record a new one here."""
        assert self.places is not None
        if msg.rejoin:
            await self.places.rejoin(msg)
            return
        app = listen_app(msg.app)
        if (msg.peer, app) not in self.pairing.listeners:
            await self.places.check_elsewhere(listen_key(msg.peer, app), f"{msg.peer}'s {app!r}")

    async def recheck_places(self) -> None:
        """In a cluster, at each heartbeat: an end waiting here for a
        connection or a listener that another node holds now goes there."""
        if self.places is None:
            return
        wants: dict[str, list[Conn]] = {}
        for conn in self.conns.values():
            if not conn.complete():
                wants.setdefault(conn_key(conn.cid), []).append(conn)
                if conn.waits_for is not None:
                    wants.setdefault(listen_key(*conn.waits_for), []).append(conn)
        sent: set[str] = set()
        for key, (name, url) in (await self.places.elsewhere(wants)).items():
            for conn in wants[key]:
                seat = conn.ends[DIAL] or conn.ends[ACCEPT]
                if seat is not None and conn.cid not in sent:
                    sent.add(conn.cid)
                    self.metrics.relay_elsewhere.labels("heartbeat").inc()
                    text = f"the other end is attached to node {name}; attach there"
                    self.deliver(seat, m.Error(code=RefusalCode.ELSEWHERE, message=text, at=url))

    async def place(self, key: str) -> None:
        """Record that this node holds ``key`` (a failed write is logged: the
        node stops serving if its database stays out of reach)."""
        assert self.places is not None
        try:
            await self.places.held(key)
        except Exception as exc:  # any driver's error
            self.log.warning("relay_place_failed", key=key[:2], error=repr(exc))

    async def placed_conn(self, cid: str) -> None:
        """A connection was opened here: other nodes send its ends here."""
        if self.places is not None and cid in self.conns:
            await self.place(conn_key(cid))

    async def _user(self, name: str) -> User:
        row = await self.db.user_by_name(name)
        if row is None:
            raise RelayRefused(RefusalCode.UNKNOWN_USER, f"there is no user {name!r} on this hub")
        if row.disabled:
            raise RelayRefused(RefusalCode.UNKNOWN_USER, f"{name!r} is disabled on this hub")
        return User(int(row.id), str(row.name), str(row.role))

    async def user_named(self, name: str) -> User:
        """The enabled account ``name``, or RelayRefused ``unknown_user``."""
        return await self._user(name)

    async def user_by_id(self, user_id: int) -> User:
        for a in self.attachments:
            if a.user.id == user_id:
                return a.user
        row = await self.db.user_by_id(user_id)
        if row is None:
            raise RelayRefused(RefusalCode.CODE_UNKNOWN, "the sender's account no longer exists")
        return User(int(row.id), str(row.name), str(row.role))

    def perform(self, att: Attachment | None, rid: str, acts: Sequence[Action]) -> None:
        """Do what the pairing asked, in order (``att`` and ``rid``: the
        request answered, if any)."""
        for act in acts:
            if isinstance(act, Hangup):
                self.deliver(
                    cast(Attachment, act.seat),
                    m.Hangup(cid=act.cid, code=act.code, message=act.message, by=act.by),
                )
            elif isinstance(act, Ended):
                self._ended(cast(Conn, act.conn), act.code, act.by)
            elif isinstance(act, Ready):
                conn = cast(Conn, act.conn)
                try:
                    conn.tasks.spawn(self._announce(conn), name="linked", detached=True)
                except RuntimeError:  # it ended meanwhile
                    self.log.debug("relay_link_dropped", cid=conn.cid)
            elif isinstance(act, Away):
                self.codes.interrupted(cast(Conn, act.conn), "detached")
            elif att is None:
                raise LocalProtocolError(f"relay: {act!r} answers no request")
            elif isinstance(act, Refuse):
                self.deliver(att, m.Error(code=act.code, message=act.message, rid=rid))
            elif isinstance(act, Done):
                self.deliver(att, m.Done(rid=act.rid))
            elif isinstance(act, Waiting):
                self.deliver(att, m.Waiting(rid=act.rid, cid=act.cid))
            elif isinstance(act, Granted):
                left = max(0.0, act.expires - time.time())
                self.deliver(
                    att, m.CodeGrant(rid=act.rid, nameplate=act.nameplate, expires_in=left)
                )
            else:  # ResolvePeer, RejoinCode: handled where they are asked
                raise LocalProtocolError(f"relay: {act!r} out of place")

    # --- linking and forwarding -------------------------------------------

    def deliver(
        self, att: Attachment, msg: m.Message, payload: bytes = b"", conn: Conn | None = None
    ) -> None:
        """Hand a frame to an attachment through the bus, by its id."""
        self.bus.publish(att.aid, msg, payload, conn)

    async def _announce(self, conn: Conn) -> None:
        # Look up both key lists first and then post both Linked frames in
        # one step: an end may only send records after its Linked, so the
        # other end always sees its own Linked before the first record.
        keys = {end: await self._peer_keys(conn, other(end)) for end in (DIAL, ACCEPT)}
        rejoined = self.pairing.linked(conn)
        if rejoined is None:
            return  # ended or an end left meanwhile
        if conn.nameplate:
            self.codes.linked(conn)
        for hook in self.on_linked:
            hook(conn, rejoined)
        for end in (DIAL, ACCEPT):
            att = conn.ends[end]
            assert att is not None
            self.deliver(
                att,
                m.Linked(
                    cid=conn.cid,
                    rid=conn.rids.pop(end, ""),
                    peer=conn.users[other(end)].name,
                    app=conn.app,
                    role=end,
                    window=self.window,
                    keys=keys[end],
                    rejoined=rejoined,
                    peer_role=conn.users[other(end)].role,
                    me=conn.users[end].name,
                    hub=self.fingerprint,
                ),
            )
        if not rejoined:
            self.metrics.connections.labels("relay").inc()
            await self.events.emit(
                "connection_open",
                conn.users[DIAL].name,
                cid=conn.cid,
                to=conn.users[ACCEPT].name,
                app=conn.app,
            )

    def relay(self, att: Attachment, msg: m.Relay, payload: bytes) -> None:
        conn = self.conns.get(msg.cid)
        role = att.ends.get(msg.cid)
        if conn is None or role is None or conn.ends[role] is not att:
            return  # an end that was replaced or a connection already ended
        verdict = self.switch.relay(conn, role, len(payload))
        if verdict is DROP:
            return  # the sender keeps it and sends it again on relink
        target = conn.ends[ACCEPT if role == DIAL else DIAL]
        self.bus.publish(target.aid, msg, payload, conn)  # (deliver(), inlined: per record)
        if verdict is FORWARD:
            return
        if verdict is PAUSE:
            self.deliver(att, m.Pause(cid=conn.cid))
        elif verdict is CUT:
            self.end(conn, HangupCode.FLOW_VIOLATION, "the sender ignored Pause", by="hub")
        else:
            self.too_slow(target)

    def drained(self, att: Attachment, conn: Conn | None, role: str, size: int) -> None:
        """A frame of ``size`` payload bytes towards ``att`` (as ``role`` of
        ``conn``, for a relayed record) left the hub or was dropped."""
        self.metrics.relay_queued.inc(-size - FRAME_COST)
        for paused, sender in self.switch.drained(att, conn, role, size):
            source = paused.ends[sender]
            if source is not None:
                self.deliver(source, m.Resume(cid=paused.cid))

    def too_slow(self, att: Attachment) -> None:
        """Drop an attachment that lets far more than its queue bound pile up
        (senders that ignore Pause): its memory is freed now, the client
        re-attaches and its peers send again what it missed."""
        if att.closed:
            return
        queued = att.queued
        att.discard_queue()
        self.spawn(att.chan.aclose())
        if att.lane is not None:
            self.spawn(att.lane.aclose())
        self.spawn(
            self.events.emit(
                "relay_slow_client", att.user.name, queued=queued, limit=self.queue_limit
            )
        )

    def end(self, conn: Conn, code: str, message: str, *, by: str) -> None:
        """End ``conn`` (cut off, killed, a wrong code): both ends hear it."""
        self.perform(None, "", self.pairing.end(conn, code, message, by))

    def _ended(self, conn: Conn, code: str, by: str) -> None:
        if self.places is not None:
            self.spawn(self.places.released([conn_key(conn.cid)]))
        if self.budget is not None:
            self.budget.forget(conn.cid)
        if conn.nameplate:
            self.codes.interrupted(conn, code)
            self.codes.finished(conn, code)
        self.spawn(self._closed(conn, code, by))

    async def _closed(self, conn: Conn, code: str, by: str) -> None:
        # What the connection still had running (its Linked announcement)
        # is cancelled before its end is recorded.
        await conn.tasks.aclose()
        for hook in self.on_closed:
            hook(conn, code, by)
        await self.events.emit(
            "connection_closed",
            conn.users[DIAL].name,
            cid=conn.cid,
            code=code,
            by=by,
            bytes=conn.relayed[DIAL] + conn.relayed[ACCEPT],
        )

    # --- keys and admin -------------------------------------------------------

    async def keys_of(self, user_id: int) -> list[str]:
        if user_id not in self._keys:
            self._keys[user_id] = await self.db.identity_keys(user_id)
        return self._keys[user_id]

    async def _peer_keys(self, conn: Conn, end: str) -> list[str]:
        """The keys one end may prove itself with: the key bound to its
        login when it has one (only the device that is there), else its
        account's."""
        att = conn.ends[end]
        if att is not None and att.user.key:
            return [att.user.key]
        return await self.keys_of(conn.users[end].id)

    def forget_keys(self, user_id: int) -> None:
        """The account's keys changed (or it is gone): look them up anew."""
        self._keys.pop(user_id, None)

    def drop_listener(self, user: str, app: str) -> None:
        """Forget ``user``'s listener for ``app`` (taken over by another of
        the account's attachments)."""
        held = self.pairing.listeners.get((user, app))
        if held is not None:
            self.pairing.unlisten(held[0], m.Unlisten(rid="0", app=app))

    def live(self) -> Iterator[Conn]:
        return iter(list(self.conns.values()))

    def kill(self, cid: str, admin: str) -> bool:
        conn = self.conns.get(cid)
        if conn is None:
            return False
        self.end(conn, HangupCode.KILLED, f"ended by admin {admin}", by=BY_ADMIN)
        return True

    def budget_for(self, conn: Conn, role: str) -> TokenBucket | None:
        """The hub's budget on records of ``conn`` towards its ``role`` end."""
        return self.budget.bucket(conn.cid, role) if self.budget is not None else None

    def cap_for(self, conn: Conn) -> TokenBucket | None:
        """The bandwidth cap on ``conn`` (the writer's hot path)."""
        return self.presence.cap_between(conn.users[DIAL].id, conn.users[ACCEPT].id)
