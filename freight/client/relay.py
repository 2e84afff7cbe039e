"""End-to-end encrypted connections through the hub (the SDK side).

A :class:`RelayClient` keeps one attachment to the hub (a WebSocket, or the
HTTP long-poll fallback when WebSockets are blocked) and re-establishes it
with jittered back-off whenever it breaks, then re-registers what it had:
listeners, code offers and every connection (``Dial(rejoin=True)``), so the
hub can pair the ends again even after a restart. A :class:`~freight.client.connection.Connection` is a reliable, ordered,
end-to-end sealed message pipe: records are kept until the far end
acknowledges them and sent again after every relink (its decisions are
:class:`freight.protocol.relayend.RelayEnd`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .. import __version__
from ..errors import (
    AuthError,
    ConnectionEnded,
    Elsewhere,
    FreightError,
    NetworkError,
    PeerAbsent,
    RateLimited,
    TLSError,
    UsageError,
    code_to_error,
)
from ..logs import fields
from ..protocol import messages as m
from ..protocol.e2e import (
    ACCEPT,
    DIAL,
    Handshake,
    IdentityHandshake,
    identity_context,
)
from ..protocol.errors import ProtocolError
from ..protocol.relaycodes import HangupCode, RefusalCode
from ..protocol.relayend import MAX_MESSAGE, RECORD_EOF, RECORD_MESSAGE, EndState
from ..protocol.tunnel import listen_app
from ..tasks import Supervisor
from ..transport.channel import ChannelClosed, FrameChannel
from ..transport.dataconn import DataPathUnavailable, open_data_connection
from ..transport.proxy import ProxyRefused
from .backoff import Reattach, backoff_delays, reconnect_policy
from .config import ClientConfig
from .connection import Connection
from .identity import identity_key, register_identity
from .listener import MAX_PENDING, Listener, code_handshake, split_code, turns_to_accept
from .session import DATA_PATHS, TRANSPORTS, HubSession, open_channel_at

log = logging.getLogger("freight.relay")

__all__ = [
    "MAX_MESSAGE",
    "RECORD_EOF",
    "RECORD_MESSAGE",
    "TRANSPORTS",
    "Connection",
    "Listener",
    "RelayClient",
    "identity_key",
    "register_identity",
]

CODE_APP_PREFIX = "code:"
EARLY_LIMIT = 16 * 1024 * 1024
EARLY_COST = 256  # what a kept record counts beyond its payload (empty ones count too)
# Seconds one request follows ``elsewhere`` answers: a node sent to may have
# just died (its part is taken over once its heartbeat lapsed).
MOVE_PATIENCE = 60.0
FINAL = (AuthError, TLSError, ProxyRefused, UsageError)  # errors re-attaching ends on
MOVES_AT_ONCE = (3, 10.0)  # this many moves within so many seconds: back off


def _rid() -> str:
    return secrets.token_hex(6)


class RelayClient:
    """One attachment to the hub, kept up, carrying any number of connections."""

    def __init__(
        self,
        session: HubSession,
        config: ClientConfig | None = None,
        *,
        transport: str = "auto",
        data_path: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if transport not in TRANSPORTS:
            raise UsageError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        if data_path not in DATA_PATHS:
            raise UsageError(f"--data-path must be one of {', '.join(DATA_PATHS)}")
        self.session = session
        self.data_path = data_path
        self.lane: Any = None  # a data connection carrying Relay frames
        self._lane_task: asyncio.Task[None] | None = None
        # Relay frames that overtook their Linked (it travels on the other
        # channel): held until it arrives, within a bound.
        self._early: dict[str, list[tuple[m.Relay, bytes]]] = {}
        self._backlog: list[tuple[m.AnyMessage, bytes]] = []  # read while attaching
        self._early_bytes = 0
        self.config = config or ClientConfig()
        self.transport = transport
        self.used_transport = ""
        self.chan: FrameChannel | None = None
        self.conns: dict[str, Connection] = {}
        self.listeners: dict[str, Listener] = {}
        self.offers: dict[str, Listener] = {}
        self.identity: Any = None
        self.attached = asyncio.Event()
        self.reconnects = 0
        self._futures: dict[str, asyncio.Future[m.AnyMessage]] = {}
        self._task: asyncio.Task[None] | None = None
        self.tasks = Supervisor("relay-client")  # the reader and the lane's reader
        self._clock, self._rand = clock, rand  # for the reconnect back-off
        self._closing = False
        self.fatal: FreightError | None = None
        self.hello = f"freight/{__version__}"  # how we introduce ourselves
        # Frames the relay does not know (an agent's commands) go here.
        self.on_other: Callable[[m.AnyMessage], Awaitable[None]] | None = None
        # Messaging frames the hub pushes (MsgDeliver, MsgResult, MsgHeld) and their
        # payload go here; answers with a rid go to request() as usual.
        self.on_message: Callable[[m.AnyMessage, bytes], Awaitable[None]] | None = None
        # Started (as a task of its own) after every re-attach, once what
        # this client had is registered again.
        self.after_attach: Callable[[], Coroutine[Any, Any, None]] | None = None
        # A cluster's node sent us to another (the far end is there).
        self._moving = False
        self._moves: deque[float] = deque(maxlen=MOVES_AT_ONCE[0])
        self._linked_here: set[str] = set()  # linked on the present attachment

    # --- lifecycle ----------------------------------------------------------

    async def start(self, *, identity: bool = True) -> None:
        """Attach (errors such as a wrong login surface here), then keep the
        attachment up in the background."""
        if identity:
            self.identity = await register_identity(self.session, self.config)
        await self._attach(self.transport)
        self.attached.set()
        self._task = self.tasks.spawn(self._run(), name="reader", detached=True)

    async def _attach(self, transport: str) -> None:
        """Open the channel and, where the network lets it, a lane."""
        chan, used, node = await open_channel_at(self.session, transport, hello=self.hello)
        self.chan, self.used_transport = chan, used
        if self.data_path == "tls":
            return
        try:
            rid = _rid()
            await chan.send(m.TicketRequest(rid=rid, lane=True))
            grant = await asyncio.wait_for(self._await_ticket(chan, rid), 30)
            lane = await open_data_connection(
                node.host or "",
                node.port or 8443,
                ticket_id=bytes.fromhex(grant.ticket),
                secret=bytes.fromhex(grant.secret),
                proxy=self.session.proxy,
            )
        except DataPathUnavailable:
            if self.data_path == "direct":
                await chan.aclose()
                raise
            self.data_path = "tls"  # this network passes only TLS: stay inside it
            return
        except (ChannelClosed, TimeoutError) as exc:
            await chan.aclose()
            raise NetworkError(f"the hub went away while attaching: {exc}") from None
        self.lane = lane
        self._lane_task = self.tasks.spawn(self._read_lane(lane, chan), name="lane", detached=True)

    async def _await_ticket(self, chan: FrameChannel, rid: str) -> m.TicketGrant:
        """The ticket for our lane. The hub may already be sending other
        frames (an agent's queued commands): keep them for the reader."""
        while True:
            msg, payload = await chan.recv()
            if isinstance(msg, m.TicketGrant) and msg.rid == rid:
                return msg
            if isinstance(msg, m.Error) and not getattr(msg, "rid", ""):
                raise code_to_error(msg.code, msg.message)
            self._backlog.append((msg, payload))

    async def _read_lane(self, lane: Any, chan: FrameChannel) -> None:
        try:
            while True:
                msg, payload = await lane.recv()
                await self._dispatch(msg, payload)
        except (ChannelClosed, NetworkError, ProtocolError):
            pass
        finally:
            if self.lane is lane:
                self.lane = None
            # Lane and channel live and die together: re-attach both.
            with contextlib.suppress(Exception):
                await chan.aclose()

    async def aclose(self) -> None:
        self._closing = True
        for conn in list(self.conns.values()):
            await conn.abort("closed", "the other end went away")
        await self.tasks.aclose()
        if self.lane is not None:
            await self.lane.aclose()
        if self.chan is not None:
            await self.chan.aclose()
        await self.session.aclose()

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        policy = reconnect_policy(*backoff_delays())
        while not self._closing:
            chan = self.chan
            assert chan is not None
            attached_at = self._clock()
            try:
                while self._backlog:
                    await self._dispatch(*self._backlog.pop(0))
                while True:
                    msg, payload = await chan.recv()
                    await self._dispatch(msg, payload)
            except (ChannelClosed, NetworkError, ProtocolError) as exc:
                log.debug("detached", extra=fields(reason=str(exc)))
            self.attached.clear()
            self.chan = None
            if self.fatal is not None:
                return
            with contextlib.suppress(Exception):
                await chan.aclose()
            if self.lane is not None:
                await self.lane.aclose()
                self.lane = None
            for fut in self._futures.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("detached"))
            waits = Reattach(policy, held=self._clock() - attached_at)
            self._linked_here.clear()
            while not self._closing:
                delay = waits.next_delay(self._clock(), self._rand(), self._rand())
                if self._moving:  # sent to another node: go at once
                    self._moving, delay = False, 0.0
                await asyncio.sleep(delay)
                try:
                    await self._attach(self.used_transport or self.transport)
                    break
                except (FreightError, OSError) as exc:
                    # Refused logins, certificates and proxies stay refused; anything
                    # else (a hub restarting, a busy node) is worth another try.
                    if isinstance(exc, FINAL) and not isinstance(exc, RateLimited):
                        self._give_up(exc)
                        return
            if self._closing:
                return
            self.reconnects += 1
            log.debug("attached again", extra=fields(reconnects=self.reconnects))
            self.attached.set()
            await self._restore()
            if self.after_attach is not None:
                self.tasks.spawn(self.after_attach(), name="after-attach", detached=True)

    def _give_up(self, exc: FreightError) -> None:
        self.fatal = exc
        for conn in list(self.conns.values()):
            conn.fail(exc)
        for lst in (*self.listeners.values(), *self.offers.values()):
            lst.fail(exc)

    async def _restore(self) -> None:
        """After a reconnect: register again everything we had."""
        try:
            for lst in list(self.listeners.values()):
                await self.send_frame(m.Listen(rid=_rid(), app=lst.app, peer=lst.peer))
            # Connections before offers: the hub ends an offer's connection
            # whose sending end is missing when the offer comes back.
            for conn in list(self.conns.values()):
                if conn.requesting:
                    continue  # its request() sends it again itself
                if conn.claim and not conn.linked_once:
                    await self.send_frame(m.Claim(rid=_rid(), cid=conn.cid, nameplate=conn.claim))
                else:
                    await self.send_frame(
                        m.Dial(
                            rid=_rid(),
                            cid=conn.cid,
                            peer=conn.peer,
                            app=conn.app,
                            role=conn.role,
                            rejoin=conn.linked_once or conn.role == ACCEPT,
                        )
                    )
            for nameplate in list(self.offers):
                await self.send_frame(m.Offer(rid=_rid(), nameplate=nameplate))
        except FreightError:
            pass  # detached again: the run loop restores once more

    # --- frames ---------------------------------------------------------------

    async def send_frame(self, msg: m.Message, payload: bytes = b"") -> None:
        """Send if attached; while detached the frame is dropped (a record
        stays in its session and is sent again on relink)."""
        chan = self.lane if self.lane is not None and isinstance(msg, m.Relay) else self.chan
        if chan is None:
            return
        with contextlib.suppress(ChannelClosed, NetworkError):
            await chan.send(msg, payload)

    async def send_frames(self, frames: list[tuple[m.Message, bytes]]) -> None:
        """Send control frames in order (several per message on a channel
        that batches); dropped while detached, as :meth:`send_frame`."""
        chan = self.chan
        if chan is None:
            return
        with contextlib.suppress(ChannelClosed, NetworkError):
            send_many = getattr(chan, "send_many", None)
            if send_many is not None:
                await send_many(frames)
                return
            for msg, payload in frames:
                await chan.send(msg, payload)

    async def request(self, msg: m.Message, rid: str) -> m.AnyMessage:
        """Send a request and wait for the frame answering ``rid`` (on the
        cluster's node it sends us to, if it answers ``elsewhere``)."""
        since: float | None = None  # the first ``elsewhere``
        while True:
            if self.fatal is not None:
                raise self.fatal
            await self.attached.wait()
            fut: asyncio.Future[m.AnyMessage] = asyncio.get_running_loop().create_future()
            self._futures[rid] = fut
            try:
                await self.send_frame(msg, b"")
                reply = await fut
            except ChannelClosed:
                continue  # detached before the answer: ask again
            finally:
                self._futures.pop(rid, None)
            if isinstance(reply, m.Error):
                if reply.code == RefusalCode.ELSEWHERE:
                    since = self._clock() if since is None else since
                    if self._clock() - since < MOVE_PATIENCE:
                        await self.move(reply.at, getattr(msg, "cid", ""))
                        continue
                raise code_to_error(reply.code, reply.message)
            return reply

    async def move(self, at: str, cid: str = "") -> None:
        """Attach to the cluster's node at ``at``, where the far end of
        connection ``cid`` is; what this client has is registered again
        there. Refused while other connections are linked where we are."""
        if any(c in self.conns for c in self._linked_here - {cid}):
            raise Elsewhere(
                "the other end is attached to another node of the cluster than this "
                "client's other connections"
            )
        now = self._clock()
        soon = len(self._moves) == self._moves.maxlen and now - self._moves[0] < MOVES_AT_ONCE[1]
        self._moves.append(now)
        if not (at and self.session.prefer(at)):
            await asyncio.sleep(1.0)  # the far end is moving itself: ask again
            return
        log.debug("moving", extra=fields(node=at, cid=cid))
        self._moving = not soon  # back off when sent around in circles
        self.attached.clear()
        if self.chan is not None:
            await self.chan.aclose()

    async def _moved(self, at: str) -> None:
        try:
            await self.move(at)
        except Elsewhere as exc:  # the rejoin waits here until its peer gives up
            log.warning("not moving", extra=fields(node=at, reason=exc.message))

    async def _dispatch(self, msg: m.AnyMessage, payload: bytes) -> None:
        if isinstance(msg, m.Relay):
            conn = self.conns.get(msg.cid)
            # A connection not linked yet (its Linked comes on the control
            # channel, records may come first on the lane) keeps the records
            # until it is, like one this client has not heard of yet.
            if conn is not None and conn.end.state is not EndState.IDLE:
                await conn.on_relay(msg, payload)
            elif self._early_bytes + len(payload) + EARLY_COST <= EARLY_LIMIT:
                self._early.setdefault(msg.cid, []).append((msg, payload))
                self._early_bytes += len(payload) + EARLY_COST
            return
        rid = getattr(msg, "rid", "")
        if isinstance(msg, m.Linked):
            await self._on_linked(msg)
        elif isinstance(msg, m.Pause | m.Resume):
            conn = self.conns.get(msg.cid)
            if conn is not None:
                conn.set_paused(isinstance(msg, m.Pause))
        elif isinstance(msg, m.Hangup):
            self._forget_early(msg.cid)
            self._linked_here.discard(msg.cid)
            conn = self.conns.pop(msg.cid, None)
            if conn is not None:
                conn.on_hangup(msg)
        elif isinstance(msg, m.Command) and self.on_other is not None:
            await self.on_other(msg)
        elif (
            isinstance(msg, m.MsgDeliver | m.MsgResult | m.MsgHeld) and self.on_message is not None
        ):
            await self.on_message(msg, payload)
        elif isinstance(msg, m.Error) and msg.code == RefusalCode.ELSEWHERE:
            if rid not in self._futures:  # a rejoin sent when we attached
                self.tasks.spawn(self._moved(msg.at), name="move", detached=True)
        elif isinstance(msg, m.Error) and not rid:
            exc = code_to_error(msg.code, msg.message)
            if msg.code == RefusalCode.CODE_BURNED:
                for offer in list(self.offers.values()):
                    offer.fail(exc)
                self.offers.clear()
            else:
                # The hub closes an attachment that broke the protocol: coming
                # back with the same request would only fail again.
                self._give_up(exc)
                raise ChannelClosed(exc.message)
        if rid and rid in self._futures and not self._futures[rid].done():
            self._futures[rid].set_result(msg)

    def _forget_early(self, cid: str) -> list[tuple[m.Relay, bytes]]:
        """The records kept for ``cid`` before its Linked, forgotten here."""
        kept = self._early.pop(cid, [])
        self._early_bytes -= sum(len(p) + EARLY_COST for _, p in kept)
        return kept

    async def _on_linked(self, msg: m.Linked) -> None:
        conn = self.conns.get(msg.cid)
        if conn is None and msg.role == ACCEPT:
            await turns_to_accept(self._listener_of(msg))
            conn = self._incoming(msg)
            if conn is None:
                await self.send_frame(
                    m.Hangup(
                        cid=msg.cid, code=HangupCode.NOT_LISTENING, message="no longer listening"
                    )
                )
                return
            if conn.error is not None:
                await self.send_frame(
                    m.Hangup(cid=msg.cid, code=HangupCode.BUSY, message=conn.error.message)
                )
                return
        if conn is not None:
            self._linked_here.add(msg.cid)
            try:
                await conn.on_linked(msg)
                for early, payload in self._forget_early(msg.cid):
                    await conn.on_relay(early, payload)
            except FreightError as exc:
                conn.error = exc  # before the Hangup's write, which may wait
                await conn.abort(exc.code, exc.message)

    def _listener_of(self, msg: m.Linked) -> Listener | None:
        """The listener, or code offer, a linked connection is for."""
        if msg.app.startswith(CODE_APP_PREFIX):
            return self.offers.get(msg.app[len(CODE_APP_PREFIX) :])
        # A tunnel connection comes to its service's listener (§18).
        return self.listeners.get(listen_app(msg.app))

    def _incoming(self, msg: m.Linked) -> Connection | None:
        """A new connection for a listener or an offer; None if there is
        none; one with an error (not kept) if too many wait to be accepted."""
        lst = self._listener_of(msg)
        if lst is None:
            return None
        offer = lst if msg.app.startswith(CODE_APP_PREFIX) else None
        handshake = code_handshake(lst.code) if offer is not None else self._identity_handshake
        conn = Connection(self, msg.cid, ACCEPT, msg.peer, msg.app, handshake)
        if lst.full:
            conn.error = ConnectionEnded(f"{MAX_PENDING} connections already wait to be accepted")
            return conn
        conn.offer = offer
        self.conns[msg.cid] = conn
        lst.deliver(conn)
        return conn

    def _identity_handshake(self, conn: Connection) -> Handshake:
        if self.identity is None:
            raise UsageError("this client was started without an identity key")
        accounts = (conn.me, conn.peer) if conn.role == DIAL else (conn.peer, conn.me)
        context = identity_context(conn.cid, conn.app, *accounts, conn.hub_fingerprint)
        keys = conn.peer_keys
        if conn.peer_identity:
            # A handshake started again after a relink: the same device only.
            keys = [k for k in keys if k == conn.peer_identity]
        return IdentityHandshake(self.identity, conn.role, context, keys)

    # --- what applications call ---------------------------------------------

    async def connect(self, peer: str, app: str, *, timeout: float | None = None) -> Connection:
        """A connection to ``peer``'s ``app``; waits (up to ``timeout``) for
        the other end to listen and for the handshake."""
        cid = secrets.token_hex(12)
        conn = Connection(self, cid, DIAL, peer, app, self._identity_handshake)
        self.conns[cid] = conn
        conn.requesting = True
        done = False
        try:
            await self.request(m.Dial(rid=(rid := _rid()), cid=cid, peer=peer, app=app), rid)
            conn.requesting = False
            await conn.wait_established(timeout)
            done = True
        except TimeoutError:
            await conn.abort("closed", "gave up waiting")
            raise PeerAbsent(
                f"{peer} did not accept {app!r} within {timeout:g} s",
                hint=f"ask {peer} to run: freight listen {app}",
            ) from None
        finally:
            if not done:  # failed or cancelled: hang up whatever happens
                await asyncio.shield(conn.abort("closed", "gave up"))
        return conn

    async def listen(self, app: str, peer: str = "*") -> Listener:
        lst = Listener(self, app, peer)
        # Registered before asking: the hub links dials that were waiting
        # as soon as it takes the Listen, and their Linked may arrive right
        # behind its Done, before this coroutine resumes.
        before = self.listeners.get(app)
        self.listeners[app] = lst
        done = False
        try:
            await self.request(m.Listen(rid=(rid := _rid()), app=app, peer=peer), rid)
            done = True
        finally:
            if not done and self.listeners.get(app) is lst:  # refused or cancelled
                if before is None:
                    del self.listeners[app]
                else:
                    self.listeners[app] = before
        return lst

    async def offer(self, code_words: str, nameplate: str = "", ttl: float = 3600.0) -> Listener:
        """Offer a code: returns a listener whose connections are claims.
        ``code_words`` is the secret part; the hub allocates the nameplate
        unless one is given (resuming an earlier offer)."""
        lst = Listener(self, "")
        reply = await self.request(m.Offer(rid=(rid := _rid()), nameplate=nameplate, ttl=ttl), rid)
        assert isinstance(reply, m.CodeGrant)
        lst.nameplate, lst.expires_in = reply.nameplate, reply.expires_in
        lst.code = f"{reply.nameplate}-{code_words}"
        self.offers[reply.nameplate] = lst
        return lst

    async def claim(self, code: str, *, timeout: float | None = None) -> Connection:
        """Connect to whoever offers ``code`` (``NAMEPLATE-word-word``)."""
        nameplate, _ = split_code(code)
        cid = secrets.token_hex(12)
        conn = Connection(
            self,
            cid,
            DIAL,
            "",
            CODE_APP_PREFIX + nameplate,
            code_handshake(code),
            claim=nameplate,
        )
        self.conns[cid] = conn
        conn.requesting = True
        done = False
        try:
            await self.request(m.Claim(rid=(rid := _rid()), cid=cid, nameplate=nameplate), rid)
            conn.requesting = False
            await conn.wait_established(timeout)
            done = True
        except TimeoutError:
            await conn.abort("closed", "gave up waiting")
            raise PeerAbsent(f"nobody offered code {code} within {timeout:g} s") from None
        finally:
            if not done:  # failed or cancelled: hang up whatever happens
                await asyncio.shield(conn.abort("closed", "gave up"))
        return conn
