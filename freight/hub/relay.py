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
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Iterator
from typing import Any

from ..protocol import messages as m
from ..protocol.bucket import TokenBucket
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.relaycodes import HangupCode, RefusalCode
from ..protocol.switch import (
    CUT,
    DEFAULT_QUEUE_LIMIT,
    DROP,
    FORWARD,
    FRAME_COST,
    PAUSE,
    Port,
    Switch,
    other,
)
from ..tasks import Supervisor
from .bus import Bus, InProcessBus
from .codes import CodeDesk
from .observe import EventLog, Metrics
from .presence import Presence
from .relayconn import CODE_APP_PREFIX, Conn, RelayRefused
from .streams import User

ENDED_REMEMBERED = 10_000  # ended connections remembered for ends that rejoin late
MAX_LISTENS = 64  # applications one account may listen for
DEFAULT_MAX_CONNS = 256  # relayed connections per account
DEFAULT_MAX_CODES = 64  # valid codes per account


class Attachment(Port):
    """One attached client. Frames to it go through a queue drained by one
    writer task, so a slow client never blocks the hub's other work."""

    def __init__(self, router: Router, user: User, chan: Any, transport: str) -> None:
        super().__init__()
        self.aid = secrets.token_hex(8)
        self.router = router
        self.user = user
        self.chan = chan
        self.transport = transport
        self.lane: Any = None  # a data connection carrying Relay frames
        self.commands = False  # an agent's command channel
        self.address = ""
        self.out: deque[tuple[m.Message, bytes, Conn | None, str]] = deque()
        self.wake = asyncio.Event()
        self.ends: dict[str, str] = {}  # cid -> our role in it
        self.apps: set[str] = set()
        self.offers: set[str] = set()
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
                    lane = self.lane if isinstance(msg, m.Relay) else None
                    try:
                        await (lane or self.chan).send(msg, payload)
                    finally:
                        self.router.drained(self, conn, role, len(payload))
        except Exception:  # the channel broke: the reader side notices too
            self.closed = True
            self.router.log.debug("relay_writer_stopped", aid=self.aid)

    def discard_queue(self) -> None:
        self.closed = True
        while self.out:
            _, payload, conn, role = self.out.popleft()
            self.router.drained(self, conn, role, len(payload))
        self.writer.cancel()


class Router:
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
    ) -> None:
        self.db = db
        self.events = events
        self.log = events.log
        self.metrics = metrics
        self.window = window
        self.queue_limit = queue_limit
        self.switch = Switch(window, queue_limit=queue_limit)
        self.bus: Bus = InProcessBus()
        self.max_conns = max_conns
        self.conns: dict[str, Conn] = {}
        self.listeners: dict[tuple[str, str], tuple[Attachment, str]] = {}
        self.codes = CodeDesk(self, max_codes)
        self.fingerprint = fingerprint  # of the certificate we serve: identity handshakes bind it
        self.attachments: set[Attachment] = set()
        self.presence: Presence[Attachment] = Presence(self.attachments)
        self.tasks = Supervisor("relay")
        self._keys: dict[int, list[str]] = {}
        # How recent connections ended, so an end that was away when its
        # peer hung up learns why when it rejoins, instead of waiting for a
        # peer that will never come back.
        self.ended: OrderedDict[str, tuple[str, str, str, frozenset[int]]] = OrderedDict()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept until done and cancelled by
        :meth:`aclose` (database writes that frame handlers must not wait
        for); a failure is logged by the supervisor."""
        try:
            self.tasks.spawn(work, name=getattr(work, "__name__", "work"), detached=True)
        except RuntimeError:  # closing: the supervisor closed the coroutine
            self.log.debug("relay_closing_work_dropped")

    async def aclose(self) -> None:
        await self.tasks.aclose()

    # --- attachments ------------------------------------------------------

    def attach(self, user: User, chan: Any, transport: str, address: str = "") -> Attachment:
        att = Attachment(self, user, chan, transport)
        att.address = address
        self.attachments.add(att)
        return att

    def detach(self, att: Attachment) -> None:
        self.attachments.discard(att)
        self.bus.unsubscribe(att.aid, att.post)
        att.discard_queue()
        if att.lane is not None:
            self.spawn(att.lane.aclose())
        now = time.time()
        for cid, role in list(att.ends.items()):
            conn = self.conns.get(cid)
            if conn is not None and conn.ends[role] is att:
                if conn.nameplate:
                    self.codes.interrupted(conn, "detached")
                if self.switch.detach(conn, role, now):
                    # Never linked and nobody left: the dialling process went
                    # away (a reconnect dials it afresh).
                    self.conns.pop(cid, None)
        for key in [k for k, (a, _) in self.listeners.items() if a is att]:
            del self.listeners[key]
        self.codes.detached(att)

    def sweep(self, now: float) -> None:
        """End connections that have had an end missing for too long."""
        for conn in list(self.conns.values()):
            if self.switch.expired(conn, now):
                self.end(conn, HangupCode.PEER_GONE, "the other end did not come back", by="hub")
        self.codes.sweep(now)

    # --- requests -----------------------------------------------------------

    async def handle(self, att: Attachment, msg: m.AnyMessage, payload: bytes) -> bool:
        """Act on a relay frame; False if ``msg`` is not a relay message."""
        if isinstance(msg, m.Relay):
            self.relay(att, msg, payload)
            return True
        if isinstance(msg, m.Listen | m.Unlisten | m.Dial | m.Offer | m.Claim):
            try:
                await self._request(att, msg)
            except RelayRefused as exc:
                self.deliver(att, m.Error(code=exc.code, message=exc.message, rid=msg.rid))
            return True
        if isinstance(msg, m.Hangup):
            conn = self.conns.get(msg.cid)
            if conn is not None and att.ends.get(msg.cid) is not None:
                self.end(conn, msg.code, msg.message, by="peer", skip=att)
            return True
        if isinstance(msg, m.CodeFailed):
            await self.codes.failed(att, msg.cid)
            return True
        if isinstance(msg, m.CodeOk):
            self.codes.verified(att, msg.cid)
            return True
        return False

    async def _request(self, att: Attachment, msg: m.AnyMessage) -> None:
        if isinstance(msg, m.Listen):
            self.listen(att, msg)
        elif isinstance(msg, m.Unlisten):
            self.listeners.pop((att.user.name, msg.app), None)
            att.apps.discard(msg.app)
            self.deliver(att, m.Done(rid=msg.rid))
        elif isinstance(msg, m.Dial):
            await self.dial(att, msg)
        elif isinstance(msg, m.Offer):
            await self.codes.offer(att, msg)
        elif isinstance(msg, m.Claim):
            await self.codes.claim(att, msg)

    def listen(self, att: Attachment, msg: m.Listen) -> None:
        if msg.app.startswith(CODE_APP_PREFIX):
            raise RelayRefused(RefusalCode.USAGE, "code:… applications are for send/receive only")
        key = (att.user.name, msg.app)
        current = self.listeners.get(key)
        if current is None and sum(1 for u, _ in self.listeners if u == key[0]) >= MAX_LISTENS:
            raise RelayRefused(
                RefusalCode.LIMIT_REACHED,
                f"you listen for {MAX_LISTENS} applications already (the hub's limit); "
                "stop one first",
            )
        if current is not None and current[0] is not att and not current[0].closed:
            raise RelayRefused(
                RefusalCode.CONFLICT,
                f"you already listen for {msg.app!r} elsewhere; stop that one first",
            )
        self.listeners[key] = (att, msg.peer)
        att.apps.add(msg.app)
        self.deliver(att, m.Done(rid=msg.rid))
        # Dials that were waiting for this listener connect now.
        for conn in list(self.conns.values()):
            if (
                conn.app == msg.app
                and conn.users[ACCEPT].name == att.user.name
                and conn.ends[ACCEPT] is None
                and not conn.linked_once
                and conn.ends[DIAL] is not None
                and msg.peer in ("*", conn.users[DIAL].name)
            ):
                self.bind(conn, ACCEPT, att)

    async def _user(self, name: str) -> User:
        row = await self.db.user_by_name(name)
        if row is None:
            raise RelayRefused(RefusalCode.UNKNOWN_USER, f"there is no user {name!r} on this hub")
        if row.disabled:
            raise RelayRefused(RefusalCode.UNKNOWN_USER, f"{name!r} is disabled on this hub")
        return User(int(row.id), str(row.name), str(row.role))

    async def dial(self, att: Attachment, msg: m.Dial) -> None:
        me = att.user
        if msg.role == DIAL and msg.peer == me.name:
            raise RelayRefused(RefusalCode.SELF_CONNECT, "you cannot connect to yourself")
        conn = self.conns.get(msg.cid)
        if conn is not None:
            if conn.users.get(msg.role, None) is None or conn.users[msg.role].id != me.id:
                raise RelayRefused(
                    RefusalCode.CONFLICT, f"connection {msg.cid} belongs to someone else"
                )
            self.bind(conn, msg.role, att, rid=msg.rid)
            if not conn.linked():
                self.deliver(att, m.Waiting(rid=msg.rid, cid=msg.cid))
            return
        if msg.role == ACCEPT and not msg.rejoin:
            raise RelayRefused(RefusalCode.USAGE, "only a rejoin may name the accepting end")
        ended = self.ended.get(msg.cid) if msg.rejoin else None
        if ended is not None and me.id in ended[3]:
            code, message, by, _ = ended
            self.deliver(att, m.Hangup(cid=msg.cid, code=code, message=message, by=by))
            return
        if msg.app.startswith(CODE_APP_PREFIX):
            if not msg.rejoin:
                raise RelayRefused(RefusalCode.USAGE, "connect to a code with claim, not dial")
            try:
                await self.codes.rejoin(att, msg)
            except RelayRefused as exc:
                # The rejoining end holds a connection that cannot come back:
                # tell it why, not only the request.
                self.deliver(
                    att, m.Hangup(cid=msg.cid, code=exc.code, message=exc.message, by="hub")
                )
                raise
            return
        peer = await self._user(msg.peer)
        users = {msg.role: me, other(msg.role): peer}
        if msg.role == DIAL and not msg.rejoin:
            for old in list(self.conns.values()):
                if (
                    old.app == msg.app
                    and old.users.get(DIAL) == me
                    and old.users.get(ACCEPT) == peer
                ):
                    if old.ends[DIAL] is not None:
                        raise RelayRefused(
                            RefusalCode.CONFLICT,
                            f"a connection from you to {peer.name}/{msg.app} already exists",
                        )
                    self.end(old, HangupCode.REPLACED, "replaced by a new connection", by="hub")
        self.check_room(me)
        conn = Conn(msg.cid, msg.app, users, linked_once=msg.rejoin, owner=me.id)
        self.conns[msg.cid] = conn
        self.bind(conn, msg.role, att, rid=msg.rid, announce=False)
        if not msg.rejoin:
            listener = self.listeners.get((peer.name, msg.app))
            if listener is not None and listener[1] in ("*", me.name):
                self.bind(conn, ACCEPT, listener[0])
                return
        self.deliver(att, m.Waiting(rid=msg.rid, cid=msg.cid))

    def check_room(self, user: User) -> None:
        """Refuse a new connection beyond the account's cap."""
        held = sum(1 for c in self.conns.values() if c.owner == user.id)
        if held >= self.max_conns:
            raise RelayRefused(
                RefusalCode.LIMIT_REACHED,
                f"you have {held} relayed connections open (the hub's limit); close some first",
            )

    async def user_by_id(self, user_id: int) -> User:
        for a in self.attachments:
            if a.user.id == user_id:
                return a.user
        row = await self.db.user_by_id(user_id)
        if row is None:
            raise RelayRefused(RefusalCode.CODE_UNKNOWN, "the sender's account no longer exists")
        return User(int(row.id), str(row.name), str(row.role))

    # --- linking and forwarding -------------------------------------------

    def deliver(
        self, att: Attachment, msg: m.Message, payload: bytes = b"", conn: Conn | None = None
    ) -> None:
        """Hand a frame to an attachment through the bus, by its id."""
        self.bus.publish(att.aid, msg, payload, conn)

    def bind(
        self, conn: Conn, role: str, att: Attachment, *, rid: str = "", announce: bool = True
    ) -> None:
        """Attach ``att`` as ``role`` of ``conn``; announce Linked to both
        ends once both are there."""
        old = self.switch.bind(conn, role, att)
        if old is not None:
            old.ends.pop(conn.cid, None)
        att.ends[conn.cid] = role
        if rid:
            conn.rids[role] = rid
        if announce and conn.linked():
            self.spawn(self._announce(conn))

    async def _announce(self, conn: Conn) -> None:
        # Look up both key lists first and then post both Linked frames in
        # one step: an end may only send records after its Linked, so the
        # other end always sees its own Linked before the first record.
        keys = {end: await self._peer_keys(conn, other(end)) for end in (DIAL, ACCEPT)}
        if self.conns.get(conn.cid) is not conn or not conn.linked():
            return
        rejoined = self.switch.link(conn)
        if conn.nameplate:
            self.codes.linked(conn)
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

    def end(self, conn: Conn, code: str, message: str, *, by: str, skip: Any = None) -> None:
        self.conns.pop(conn.cid, None)
        self.switch.end(conn)
        if conn.nameplate:
            self.codes.interrupted(conn, code)
            self.codes.ended(conn)
        owners = frozenset(u.id for u in conn.users.values())
        self.ended[conn.cid] = (code, message, by, owners)
        while len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)
        for role in (DIAL, ACCEPT):
            att = conn.ends[role]
            if att is not None:
                att.ends.pop(conn.cid, None)
                if att is not skip:
                    self.deliver(att, m.Hangup(cid=conn.cid, code=code, message=message, by=by))
        self.spawn(
            self.events.emit(
                "connection_closed",
                conn.users[DIAL].name,
                cid=conn.cid,
                code=code,
                by=by,
                bytes=conn.relayed[DIAL] + conn.relayed[ACCEPT],
            )
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

    def live(self) -> Iterator[Conn]:
        return iter(list(self.conns.values()))

    def kill(self, cid: str, admin: str) -> bool:
        conn = self.conns.get(cid)
        if conn is None:
            return False
        self.end(conn, HangupCode.KILLED, f"ended by admin {admin}", by="admin")
        return True

    def cap_for(self, conn: Conn) -> TokenBucket | None:
        """The bandwidth cap on ``conn`` (the writer's hot path)."""
        return self.presence.cap_between(conn.users[DIAL].id, conn.users[ACCEPT].id)

    async def sweep_loop(self, every: float = 60.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                self.sweep(time.time())
            except Exception as exc:  # never let the sweeper die
                self.log.warning("relay_sweep_failed", error=repr(exc))
