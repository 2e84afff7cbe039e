"""One end of an end-to-end encrypted message pipe through the hub.

:class:`Connection` is the asyncio adapter over the sans-I/O
:class:`freight.protocol.relayend.RelayEnd`: it moves the records the
machine returns onto the attachment, wakes whoever waits when something
changed, and turns hang-ups into exceptions. Every decision (the handshake
on each link, the window, half-closes, Pause, resending after a relink) is
the machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ConnectionEnded, FreightError, RemoteError, UsageError, code_to_error
from ..logs import fields
from ..protocol import messages as m
from ..protocol.e2e import (
    ACCEPT,
    DEFAULT_WINDOW,
    Handshake,
    PeerKeyRejected,
    SecureSession,
    WrongCode,
)
from ..protocol.errors import IntegrityError, ProtocolError
from ..protocol.relaycodes import HangupCode
from ..protocol.relayend import ACK_DELAY, MAX_MESSAGE, Out, RelayEnd

if TYPE_CHECKING:
    from .listener import Listener
    from .relay import RelayClient

log = logging.getLogger("freight.relay")

CLOSE_TIMEOUT = 30.0
YIELD_BYTES = 64 * 1024  # a sender lets the event loop read at least this often


def _ended(code: str, message: str, by: str) -> FreightError:
    exc = code_to_error(code, message)
    # "aborted" names a hang-up here (the other end stopped before it
    # finished), not a stream's Abort: the connection ended like any other,
    # so a sender waiting for its receiver to come back waits on.
    if type(exc) is RemoteError or code == HangupCode.ABORTED:
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
        self._new_handshake = handshake
        self.end = RelayEnd(cid, role, DEFAULT_WINDOW)
        self.peer_keys: list[bytes] = []
        self.linked_once = False
        self.error: FreightError | None = None
        self.closed = False
        self._event = asyncio.Event()  # anything changed: wake whoever waits
        self.established = asyncio.Event()
        self.requesting = False  # a Dial/Claim for it awaits its answer
        self._ack_timer: asyncio.TimerHandle | None = None  # a delayed ack's time
        self._unyielded = 0  # bytes sent since send() last let the loop run

    # --- what the machine knows ---------------------------------------------------

    @property
    def session(self) -> SecureSession | None:
        return self.end.session

    @property
    def window(self) -> int:
        return self.end.window

    @property
    def paused(self) -> bool:
        return self.end.paused

    @property
    def eof_received(self) -> bool:
        return self.end.eof_received

    @property
    def eof_sent(self) -> bool:
        return self.end.eof_sent

    @property
    def inbox(self) -> deque[bytes]:
        """Messages received and not yet taken by the application."""
        return self.end.inbox

    @property
    def peer_identity(self) -> bytes:
        return self.end.peer_identity

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
        # Let the event loop read first, once per YIELD_BYTES: a Pause (or a
        # hang-up) that arrived since is seen before the next record goes.
        # Without this a sender whose writes never block pours its whole
        # credit window into the hub before it looks at its channel again;
        # a turn of the loop per small message, though, was a tenth of a
        # chatty sender's time (a paced sender yields between them anyway).
        self._unyielded += len(data) + 1
        if self._unyielded >= YIELD_BYTES:
            self._unyielded = 0
            await asyncio.sleep(0)
        await self._wait_credit(len(data) + 1)
        await self._send_out(self.end.send(data))

    async def recv(self) -> bytes:
        """The next message, or ``b""`` once the other end has closed."""
        end = self.end
        while (data := end.take()) is None:
            if end.eof_received:
                return b""
            self._raise_if_failed()
            await self._changed()
        if end.ack_due():
            self._cancel_ack()
            await self._send_out(end.ack())
        elif self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(ACK_DELAY, self._ack_time)
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while data := await self.recv():
            yield data

    async def wait_room(self, limit: int) -> None:
        """Until at most ``limit`` bytes we sent are unacknowledged: a
        sender that keeps what it has queued along the path short (a
        tunnel, so that an interactive stream beside it is not stuck behind
        a whole window of a bulk one)."""
        while (s := self.session) is not None and s.in_flight > limit:
            self._raise_if_failed()
            if self.closed:
                raise ConnectionEnded("the other end has closed the connection")
            await self._changed()

    async def shutdown(self) -> None:
        """Close the sending side (the other end's recv() returns b"")."""
        if not self.eof_sent and self.error is None:
            await self._wait_credit(1)
            await self._send_out(self.end.send_eof())

    async def flush(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait until the far end has acknowledged everything sent."""

        async def wait() -> None:
            while self.end.unacked:
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
        self._end()
        if self.error is None:
            self.error = ConnectionEnded("the connection is closed")
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

    def _ack_time(self) -> None:
        """A delayed ack's time came: it goes, covering what was taken since."""
        self._ack_timer = None
        if not self.closed:
            with contextlib.suppress(RuntimeError):  # the client is closing
                self.client.tasks.spawn(self._send_ack(), name="ack", detached=True)

    async def _send_ack(self) -> None:
        # Decided and sealed here, right before its write: acks reach the
        # peer in order, and none goes if another ack covered it meanwhile.
        if not self.closed and self.end.ack_owed():
            await self._send_out(self.end.ack())

    def _cancel_ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _end(self) -> None:
        """Closed for whatever reason: the machine stops, the client forgets us."""
        self._handshake_interrupted()
        self._cancel_ack()
        self.closed = True
        if not self.end.closed:
            self.end.close()
        self.client.conns.pop(self.cid, None)

    def fail(self, exc: FreightError) -> None:
        log.debug("connection failed", extra=fields(cid=self.cid, error=exc.message))
        if self.error is None:
            self.error = exc
        self._end()
        self._wake()

    def set_paused(self, paused: bool) -> None:
        """The hub said Pause (or Resume) for our sending direction."""
        if paused:
            self.end.pause()
        else:
            self.end.resume()
        self._wake()

    async def _wait_credit(self, size: int) -> None:
        while True:
            self._raise_if_failed()
            if self.closed:
                raise ConnectionEnded("the other end has closed the connection")
            if self.end.can_send(size):
                return
            await self._changed()

    async def _send_out(self, record: Out) -> None:
        kind, seq, data = record
        await self.client.send_frame(m.Relay(cid=self.cid, kind=kind, seq=seq, len=len(data)), data)

    async def _send_all(self, records: Iterable[Out]) -> None:
        for record in records:
            await self._send_out(record)

    async def on_linked(self, msg: m.Linked) -> None:
        log.debug(
            "linked",
            extra=fields(cid=self.cid, rejoined=msg.rejoined, unacked=self.end.unacked),
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
        self.peer_keys = [bytes.fromhex(k) for k in msg.keys]
        self.linked_once = True
        self.claim = ""
        if self.session is None:
            # (Re)start the handshake: on a relink before it finished, both
            # ends start over, since either may have lost a message.
            self._handshake_interrupted()
            await self._send_all(self.end.linked(self._new_handshake(self)))
        else:
            if self.offer is not None:
                await self.client.send_frame(m.CodeOk(cid=self.cid))  # the hub may have restarted
            self.session.window = self.window
            try:
                # Every unacknowledged record again, in order, with no new
                # record slipping in between, then what we have.
                await self._send_all(self.end.linked(None))
            finally:
                self.end.resent()
        self._wake()

    def _handshake_interrupted(self) -> None:
        """The handshake of this link will not finish (a hang-up, a failure or
        a relink in the middle): for a code offer, that claim failed."""
        if self.end.interrupt_handshake() and self.offer is not None:
            self.offer.claim_failed()

    async def on_relay(self, msg: m.Relay, payload: bytes) -> None:
        try:
            if msg.kind == "h":
                await self._on_handshake(payload)
            else:
                out = self.end.receive(msg.kind, msg.seq, payload)
                if out:
                    resending = self.end.resending
                    try:
                        await self._send_all(out)
                    finally:
                        if resending:
                            self.end.resent()
        except WrongCode as exc:
            if self.role == ACCEPT:
                with contextlib.suppress(FreightError):
                    await self.client.send_frame(m.CodeFailed(cid=self.cid))
            self.fail(exc)
        except (PeerKeyRejected, IntegrityError, ProtocolError) as exc:
            self.end.inbox.clear()  # nothing more from a peer that broke the protocol
            # Why, before the Hangup's write (which may wait for the channel):
            # a reader looking in meanwhile is told this, not "closed".
            self.error = exc
            await self.abort(exc.code, exc.message)
        self._wake()

    async def _on_handshake(self, payload: bytes) -> None:
        ready = self.end.receive_handshake(payload)
        if ready and self.offer is not None:
            # Before our confirmation, so the hub never counts this claim as
            # failed once the receiver could have checked anything.
            await self.client.send_frame(m.CodeOk(cid=self.cid))
        await self._send_all(self.end.take_handshake())
        if ready:
            self.end.establish()
            self.established.set()

    def on_hangup(self, msg: m.Hangup) -> None:
        log.debug(
            "hangup",
            extra=fields(cid=self.cid, code=msg.code, by=msg.by, eof_received=self.eof_received),
        )
        if msg.code == "closed" and self.eof_received:
            self._end()
            self._wake()
            return
        self.fail(_ended(msg.code, msg.message, msg.by))
