"""End-to-end encrypted connections through the hub (the SDK side).

A :class:`RelayClient` keeps one attachment to the hub (a WebSocket, or the
HTTP long-poll fallback when WebSockets are blocked) and re-establishes it
with jittered back-off whenever it breaks, then re-registers what it had:
listeners, code offers and every connection (``Dial(rejoin=True)``), so the
hub can pair the ends again even after a restart. A :class:`Connection` is a
reliable, ordered, end-to-end sealed message pipe: records are kept until the
far end acknowledges them and sent again after every relink (see
:class:`freight.protocol.e2e.SecureSession`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .. import __version__
from ..errors import (
    AuthError,
    ConnectionEnded,
    FreightError,
    NetworkError,
    PeerAbsent,
    RemoteError,
    TLSError,
    UsageError,
    code_to_error,
)
from ..logs import fields
from ..protocol import messages as m
from ..protocol.e2e import (
    ACCEPT,
    DEFAULT_WINDOW,
    DIAL,
    CodeHandshake,
    Handshake,
    IdentityHandshake,
    PeerKeyRejected,
    SecureSession,
    WrongCode,
    identity_context,
    load_identity,
    new_identity,
    public_of,
)
from ..protocol.errors import IntegrityError, ProtocolError
from ..protocol.relaycodes import HangupCode, RefusalCode
from ..transport.channel import ChannelClosed, FrameChannel
from ..transport.dataconn import DataPathUnavailable, open_data_connection
from ..transport.proxy import ProxyRefused
from .config import ClientConfig
from .listener import MAX_PENDING, Listener, split_code
from .session import DATA_PATHS, TRANSPORTS, HubSession, open_channel

log = logging.getLogger("freight.relay")

CODE_APP_PREFIX = "code:"
MAX_MESSAGE = 8 * 1024 * 1024
RECORD_MESSAGE = b"\x00"
RECORD_EOF = b"\x01"
CLOSE_TIMEOUT = 30.0
EARLY_LIMIT = 16 * 1024 * 1024


def backoff_delays() -> tuple[float, float]:
    """First and largest reconnect delay (env overrides for tests)."""
    first = float(os.environ.get("FREIGHT_RELAY_BACKOFF", "1.0"))
    cap = float(os.environ.get("FREIGHT_RELAY_BACKOFF_MAX", "30.0"))
    return first, cap


def identity_key(config: ClientConfig) -> Any:
    """This device's Ed25519 identity key, created on first use (0600)."""
    path = config.root / "identity.key"
    try:
        return load_identity(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        pass
    except ValueError:
        raise UsageError(f"{path} is damaged; delete it and log in again") from None
    private, _ = new_identity()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    return load_identity(private)


async def register_identity(session: HubSession, config: ClientConfig) -> Any:
    """Make sure the hub lists this device's identity key for the account."""
    key = identity_key(config)
    await session.request("PUT", "/v1/keys", json={"key": public_of(key).hex()})
    return key


def _ended(code: str, message: str, by: str) -> FreightError:
    exc = code_to_error(code, message)
    if type(exc) is RemoteError:  # a code without its own class
        who = {"peer": "the other end", "admin": "an admin", "hub": "the hub"}.get(by, by)
        return ConnectionEnded(f"{who} ended the connection: {message or code}")
    return exc


class Connection:
    """One end of an end-to-end encrypted message pipe through the hub."""

    def __init__(
        self,
        client: RelayClient,
        cid: str,
        role: str,
        peer: str,
        app: str,
        handshake: Callable[[Connection], Handshake],
        *,
        claim: str = "",
    ) -> None:
        self.client = client
        self.cid = cid
        self.role = role
        self.peer = peer
        self.app = app
        self.claim = claim  # nameplate, for a receiver that has not linked yet
        self.offer: Listener | None = None  # the code offer this claim came to
        self.peer_role = ""  # as the hub vouches: user, admin or agent
        self.me = ""  # our account, as the hub first linked us
        self.hub_fingerprint = ""  # the hub as we trust it, bound into the handshake
        self.peer_identity = b""  # the peer's identity key, once a handshake saw it
        self._new_handshake = handshake
        self._hs: Handshake | None = None
        self.session: SecureSession | None = None
        self.peer_keys: list[bytes] = []
        self.window = DEFAULT_WINDOW
        self.linked_once = False
        self.paused = False
        self.inbox: deque[bytes] = deque()
        self.eof_received = False
        self.eof_sent = False
        self.error: FreightError | None = None
        self.closed = False
        self._consumed = 0
        self._event = asyncio.Event()  # anything changed: wake whoever waits
        self.established = asyncio.Event()
        self.requesting = False  # a Dial/Claim for it awaits its answer
        # While unacknowledged records are sent again, new ones wait, so
        # that none lands behind a gap at the far end.
        self.resending = False
        self._gap_reported_at = -1  # the expected seq we last asked a resend from

    # --- public API -----------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A short code both ends show; equal codes mean no one is in between."""
        return self.session.keys.fingerprint if self.session else ""

    async def wait_closed(self) -> None:
        """Until the connection has ended, for whatever reason."""
        while not self.closed:
            await self._changed()

    async def wait_established(self, timeout: float | None = None) -> None:
        async def wait() -> None:
            while not self.established.is_set():
                self._raise_if_failed()
                await self._changed()

        await asyncio.wait_for(wait(), timeout)

    async def send(self, data: bytes) -> None:
        """Send one message (at most 8 MiB); returns once it is sealed and
        handed to the hub, or kept for sending again after a reconnect."""
        if len(data) > MAX_MESSAGE:
            raise UsageError(f"a message may be at most {MAX_MESSAGE} bytes")
        if self.eof_sent:
            raise UsageError("this connection's sending side is already closed")
        await self._send_record(RECORD_MESSAGE + data)

    async def recv(self) -> bytes:
        """The next message, or ``b""`` once the other end has closed."""
        while not self.inbox:
            if self.eof_received:
                return b""
            self._raise_if_failed()
            await self._changed()
        data = self.inbox.popleft()
        if self.session is not None:
            self.session.release()  # its credit goes back with the next ack
        self._consumed += len(data)
        if not self.inbox or self._consumed >= self.window // 4:
            await self._send_ack()
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while data := await self.recv():
            yield data

    async def shutdown(self) -> None:
        """Close the sending side (the other end's recv() returns b"")."""
        if not self.eof_sent and self.error is None:
            await self._send_record(RECORD_EOF)
            self.eof_sent = True

    async def flush(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait until the far end has acknowledged everything sent."""

        async def wait() -> None:
            while self.session is not None and self.session.unacked_records:
                self._raise_if_failed()
                if self.closed:
                    return  # the other end finished and hung up first
                await self._changed()

        await asyncio.wait_for(wait(), timeout)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send EOF, wait until everything is acknowledged, then hang up."""
        if self.closed:
            return
        try:
            if self.error is None and self.established.is_set():
                await self.shutdown()
                await self.flush(timeout)
        except (FreightError, TimeoutError):
            pass
        finally:
            await self.abort("closed", "closed")

    async def abort(self, code: str = "closed", message: str = "") -> None:
        """Hang up at once."""
        if self.closed:
            return
        log.debug("hanging up", extra=fields(cid=self.cid, code=code))
        self._handshake_interrupted()
        self.closed = True
        if self.error is None:
            self.error = ConnectionEnded("the connection is closed")
        self.client.conns.pop(self.cid, None)
        with contextlib.suppress(FreightError):
            await self.client.send_frame(m.Hangup(cid=self.cid, code=code, message=message))
        self._wake()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort("aborted", "the other end stopped with an error")

    # --- internals ------------------------------------------------------------

    def _wake(self) -> None:
        self._event.set()

    async def _changed(self) -> None:
        await self._event.wait()
        self._event.clear()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def fail(self, exc: FreightError) -> None:
        log.debug("connection failed", extra=fields(cid=self.cid, error=exc.message))
        self._handshake_interrupted()
        if self.error is None:
            self.error = exc
        self.closed = True
        self.client.conns.pop(self.cid, None)
        self._wake()

    async def _send_record(self, plain: bytes) -> None:
        while True:
            self._raise_if_failed()
            if self.closed:
                raise ConnectionEnded("the other end has closed the connection")
            s = self.session
            if s is not None and not self.paused and not self.resending and s.can_send(len(plain)):
                break
            await self._changed()
        seq, sealed = s.seal(plain)
        await self.client.send_frame(
            m.Relay(cid=self.cid, kind="d", seq=seq, len=len(sealed)), sealed
        )

    async def _send_ack(self, *, gap: bool = False) -> None:
        if self.session is None:
            return
        self._consumed = 0
        counter, sealed = self.session.ack(gap=gap)
        await self.client.send_frame(
            m.Relay(cid=self.cid, kind="a", seq=counter, len=len(sealed)), sealed
        )

    async def on_linked(self, msg: m.Linked) -> None:
        log.debug(
            "linked",
            extra=fields(
                cid=self.cid,
                rejoined=msg.rejoined,
                unacked=len(self.session.unacked_records) if self.session else None,
            ),
        )
        if (self.peer and msg.peer != self.peer) or (self.me and msg.me != self.me):
            # Only the account first linked (or dialled) may come back.
            raise PeerKeyRejected(
                f"the hub linked connection {self.cid} to {msg.peer!r} "
                f"where it was {self.peer!r}; refused"
            )
        self.peer, self.me = msg.peer, msg.me
        self.hub_fingerprint = self.client.session.fingerprint or msg.hub
        self.peer_role = msg.peer_role
        # The credit window is end to end; the hub bounds its own share
        # (msg.window) with Pause/Resume.
        self.window = DEFAULT_WINDOW
        self.peer_keys = [bytes.fromhex(k) for k in msg.keys]
        self.paused = False
        self.linked_once = True
        self.claim = ""
        if self.session is None:
            # (Re)start the handshake: on a relink before it finished, both
            # ends start over, since either may have lost a message.
            self._handshake_interrupted()
            self._hs = self._new_handshake(self)
            await self._send_handshake()
        else:
            if self.offer is not None:
                await self.client.send_frame(m.CodeOk(cid=self.cid))  # the hub may have restarted
            self.session.window = self.window
            await self._resend()
            await self._send_ack()
        self._wake()

    def _handshake_interrupted(self) -> None:
        """The handshake of this link will not finish (a hang-up, a failure or
        a relink in the middle): for a code offer, that claim failed."""
        if self._hs is not None and self.session is None:
            self._hs = None
            if self.offer is not None:
                self.offer.claim_failed()

    async def _resend(self) -> None:
        """Send every unacknowledged record again, in order, with no new
        record slipping in between."""
        assert self.session is not None
        self.resending = True
        try:
            for seq, sealed in self.session.unacked():
                await self.client.send_frame(
                    m.Relay(cid=self.cid, kind="d", seq=seq, len=len(sealed)), sealed
                )
        finally:
            self.resending = False
            self._wake()

    async def _send_handshake(self) -> None:
        assert self._hs is not None
        for out in self._hs.take():
            await self.client.send_frame(m.Relay(cid=self.cid, kind="h", len=len(out)), out)

    async def on_relay(self, msg: m.Relay, payload: bytes) -> None:
        try:
            if msg.kind == "h":
                await self._on_handshake(payload)
            elif self.session is None:
                return  # a record from before a handshake restart: dropped
            elif msg.kind == "d":
                # Held until the application takes it: the peer gets its
                # credit back only then, and more than the window is refused.
                plain = self.session.open(msg.seq, payload, hold=True)
                if plain is None:
                    expected = self.session.expected
                    if msg.seq < expected:
                        await self._send_ack()  # a resend: say again what we have
                    elif self._gap_reported_at != expected:
                        # Something before this record was lost (the hub
                        # dropped it while an end was away): ask once.
                        self._gap_reported_at = expected
                        log.debug("gap", extra=fields(cid=self.cid, expected=expected, got=msg.seq))
                        await self._send_ack(gap=True)
                    return
                self._gap_reported_at = -1  # progress: a later gap is news again
                if plain[:1] == RECORD_EOF:
                    self.session.release()
                    self.eof_received = True
                    await self._send_ack()
                else:
                    self.inbox.append(plain[1:])
            else:
                self.session.on_ack(msg.seq, payload)
                if self.session.gap_reported and not self.resending:
                    await self._resend()
        except WrongCode as exc:
            if self.role == ACCEPT:
                with contextlib.suppress(FreightError):
                    await self.client.send_frame(m.CodeFailed(cid=self.cid))
            self.fail(exc)
        except (PeerKeyRejected, IntegrityError, ProtocolError) as exc:
            self.inbox.clear()  # nothing more from a peer that broke the protocol
            await self.abort(exc.code, exc.message)
            self.error = exc
        self._wake()

    async def _on_handshake(self, payload: bytes) -> None:
        if self.session is not None:
            raise ProtocolError(
                "the other end restarted its handshake in the middle of the connection"
            )
        if self._hs is None:
            raise ProtocolError("handshake message before the connection was linked")
        try:
            self._hs.receive(payload)
        finally:
            if isinstance(self._hs, IdentityHandshake) and self._hs.peer_identity:
                self.peer_identity = self._hs.peer_identity
        if self._hs.keys is not None and self.offer is not None:
            # Before our confirmation, so the hub never counts this claim as
            # failed once the receiver could have checked anything.
            await self.client.send_frame(m.CodeOk(cid=self.cid))
        await self._send_handshake()
        if self._hs.keys is not None:
            self.session = SecureSession(self._hs.keys, self.window)
            self._hs = None
            self.established.set()

    def on_hangup(self, msg: m.Hangup) -> None:
        log.debug(
            "hangup",
            extra=fields(cid=self.cid, code=msg.code, by=msg.by, eof_received=self.eof_received),
        )
        if msg.code == "closed" and self.eof_received:
            self.closed = True
            self.client.conns.pop(self.cid, None)
            self._wake()
            return
        self.fail(_ended(msg.code, msg.message, msg.by))


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
        self._closing = False
        self.fatal: FreightError | None = None
        self.hello = f"freight/{__version__}"  # how we introduce ourselves
        # Frames the relay does not know (an agent's commands) go here.
        self.on_other: Callable[[m.AnyMessage], Awaitable[None]] | None = None

    # --- lifecycle ----------------------------------------------------------

    async def start(self, *, identity: bool = True) -> None:
        """Attach (errors such as a wrong login surface here), then keep the
        attachment up in the background."""
        if identity:
            self.identity = await register_identity(self.session, self.config)
        await self._attach(self.transport)
        self.attached.set()
        self._task = asyncio.create_task(self._run())

    async def _attach(self, transport: str) -> None:
        """Open the channel and, where the network lets it, a lane."""
        chan, used = await open_channel(self.session, transport, hello=self.hello)
        self.chan, self.used_transport = chan, used
        if self.data_path == "tls":
            return
        try:
            rid = _rid()
            await chan.send(m.TicketRequest(rid=rid, lane=True))
            grant = await asyncio.wait_for(self._await_ticket(chan, rid), 30)
            lane = await open_data_connection(
                self.session.url.host or "",
                self.session.url.port or 8443,
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
        self._lane_task = asyncio.create_task(self._read_lane(lane, chan))

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
        for task in (self._task, self._lane_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
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
        first, cap = backoff_delays()
        while not self._closing:
            chan = self.chan
            assert chan is not None
            try:
                while self._backlog:
                    await self._dispatch(*self._backlog.pop(0))
                while True:
                    msg, payload = await chan.recv()
                    await self._dispatch(msg, payload)
            except (ChannelClosed, NetworkError, ProtocolError) as exc:
                log.debug("detached", extra=fields(reason=str(exc)))
            if self.fatal is not None:
                self.attached.clear()
                self.chan = None
                return
            self.attached.clear()
            self.chan = None
            with contextlib.suppress(Exception):
                await chan.aclose()
            if self.lane is not None:
                await self.lane.aclose()
                self.lane = None
            for fut in self._futures.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("detached"))
            delay = first
            while not self._closing:
                # Full jitter: after a hub restart, clients come back spread
                # over the whole interval, not all in the same second.
                await asyncio.sleep(random.uniform(0.1 * delay, delay))
                try:
                    await self._attach(self.used_transport or self.transport)
                    break
                except (FreightError, OSError) as exc:
                    # Refused logins, certificates and proxies stay refused;
                    # anything else (a hub restarting) is worth another try.
                    if isinstance(exc, AuthError | TLSError | ProxyRefused | UsageError):
                        self._give_up(exc)
                        return
                    delay = min(cap, delay * 2)
            if self._closing:
                return
            self.reconnects += 1
            log.debug("attached again", extra=fields(reconnects=self.reconnects))
            self.attached.set()
            await self._restore()

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

    async def request(self, msg: m.Message, rid: str) -> m.AnyMessage:
        """Send a request and wait for the frame answering ``rid``."""
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
                raise code_to_error(reply.code, reply.message)
            return reply

    async def _dispatch(self, msg: m.AnyMessage, payload: bytes) -> None:
        if isinstance(msg, m.Relay):
            conn = self.conns.get(msg.cid)
            if conn is not None:
                await conn.on_relay(msg, payload)
            elif self._early_bytes + len(payload) <= EARLY_LIMIT:
                self._early.setdefault(msg.cid, []).append((msg, payload))
                self._early_bytes += len(payload)
            return
        rid = getattr(msg, "rid", "")
        if isinstance(msg, m.Linked):
            await self._on_linked(msg)
        elif isinstance(msg, m.Pause | m.Resume):
            conn = self.conns.get(msg.cid)
            if conn is not None:
                conn.paused = isinstance(msg, m.Pause)
                conn._wake()
        elif isinstance(msg, m.Hangup):
            conn = self.conns.pop(msg.cid, None)
            if conn is not None:
                conn.on_hangup(msg)
        elif isinstance(msg, m.Command) and self.on_other is not None:
            await self.on_other(msg)
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

    async def _on_linked(self, msg: m.Linked) -> None:
        conn = self.conns.get(msg.cid)
        if conn is None and msg.role == ACCEPT:
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
            try:
                await conn.on_linked(msg)
                for early, payload in self._early.pop(msg.cid, []):
                    self._early_bytes -= len(payload)
                    await conn.on_relay(early, payload)
            except FreightError as exc:
                await conn.abort(exc.code, exc.message)
                conn.error = exc

    def _incoming(self, msg: m.Linked) -> Connection | None:
        """A new connection for a listener or an offer; None if there is
        none; one with an error (not kept) if too many wait to be accepted."""
        offer = None
        if msg.app.startswith(CODE_APP_PREFIX):
            lst = offer = self.offers.get(msg.app[len(CODE_APP_PREFIX) :])
            handshake = _code_handshake(offer.code) if offer is not None else None
        else:
            lst, handshake = self.listeners.get(msg.app), self._identity_handshake
        if lst is None or handshake is None:
            return None
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
        try:
            await self.request(m.Dial(rid=(rid := _rid()), cid=cid, peer=peer, app=app), rid)
            conn.requesting = False
            await conn.wait_established(timeout)
        except TimeoutError:
            await conn.abort("closed", "gave up waiting")
            raise PeerAbsent(
                f"{peer} did not accept {app!r} within {timeout:g} s",
                hint=f"ask {peer} to run: freight listen {app}",
            ) from None
        except BaseException:
            await asyncio.shield(conn.abort("closed", "gave up"))
            raise
        return conn

    async def listen(self, app: str, peer: str = "*") -> Listener:
        lst = Listener(self, app, peer)
        # Registered before asking: the hub links dials that were waiting
        # as soon as it takes the Listen, and their Linked may arrive right
        # behind its Done, before this coroutine resumes.
        before = self.listeners.get(app)
        self.listeners[app] = lst
        try:
            await self.request(m.Listen(rid=(rid := _rid()), app=app, peer=peer), rid)
        except BaseException:
            if self.listeners.get(app) is lst:
                if before is None:
                    del self.listeners[app]
                else:
                    self.listeners[app] = before
            raise
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
            _code_handshake(code),
            claim=nameplate,
        )
        self.conns[cid] = conn
        conn.requesting = True
        try:
            await self.request(m.Claim(rid=(rid := _rid()), cid=cid, nameplate=nameplate), rid)
            conn.requesting = False
            await conn.wait_established(timeout)
        except TimeoutError:
            await conn.abort("closed", "gave up waiting")
            raise PeerAbsent(f"nobody offered code {code} within {timeout:g} s") from None
        except BaseException:
            await asyncio.shield(conn.abort("closed", "gave up"))
            raise
        return conn


def _code_handshake(code: str) -> Callable[[Connection], Handshake]:
    def make(conn: Connection) -> Handshake:
        return CodeHandshake(code, conn.role, conn.app.encode())

    return make
