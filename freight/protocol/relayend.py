"""One end of a relayed connection, sans-I/O (docs/protocol.md §12.5).

:class:`RelayEnd` is what an SDK :class:`~freight.client.relay.Connection`
decides with: the handshake on each link, the sealed session, both
half-closes, the hub's Pause/Resume, resending after a relink and the credit
window it grants. The adapter feeds it what arrives (``linked``,
``receive_handshake``, ``receive``, ``pause``/``resume``, ``close``) and
sends the records it returns, each ``(kind, seq, sealed)`` for a
``Relay(kind, seq, len)`` frame: ``h`` handshake, ``d`` data, ``a``
acknowledgement.

The credit window is enforced: a record the application has not taken counts
against the window this end granted, and a peer sending beyond it raises
:class:`~freight.protocol.e2e.FlowViolation` (see
:class:`~freight.protocol.e2e.SecureSession`). There are no timers: the
adapter bounds its waits itself, so :meth:`next_deadline` is always None.

States (``(state, input) -> state``; anything else raises
:class:`~freight.protocol.errors.ProtocolError` and leaves ``ERROR``):

===========  ===========  ===========  ======================================
state        input        next         meaning
===========  ===========  ===========  ======================================
IDLE         link         HANDSHAKE    first Linked: the handshake starts
HANDSHAKE    link         HANDSHAKE    relinked mid-handshake: start over
HANDSHAKE    established  OPEN         keys agreed: records may flow
OPEN         send/recv    OPEN         a data record out / in
OPEN         send_eof     LOCAL_EOF    our sending side closed
OPEN         recv_eof     REMOTE_EOF   the peer's sending side closed
LOCAL_EOF    recv         LOCAL_EOF
LOCAL_EOF    recv_eof     DONE
REMOTE_EOF   send         REMOTE_EOF
REMOTE_EOF   send_eof     DONE
(session)    link         (same)       relinked: resend the unacknowledged
(session)    ack          (same)       an acknowledgement from the peer
any          close        CLOSED       hung up (by us, the peer or the hub)
CLOSED       any record   CLOSED       ignored: a closed end emits nothing
===========  ===========  ===========  ======================================

Records of a link whose handshake started over (``d``/``a`` before the
session exists) are dropped, as are records after CLOSED.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from typing import Final

from .e2e import DEFAULT_WINDOW, Handshake, IdentityHandshake, SecureSession
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError

RECORD_MESSAGE: Final = b"\x00"  # first byte of a data record's plaintext: a message
RECORD_EOF: Final = b"\x01"  # the sender closed its side (nothing follows)
MAX_MESSAGE: Final = 8 * 1024 * 1024
KIND_HANDSHAKE: Final = "h"
KIND_DATA: Final = "d"
KIND_ACK: Final = "a"
# An acknowledgement goes at once when this much (or a quarter of the
# window) was taken since the last one; for less it may wait ACK_DELAY
# seconds, so that a chatty stream of small messages sends one ack for
# many (TCP's delayed ack): otherwise every message costs a second record
# each way, through the hub too.
ACK_BYTES: Final = 64 * 1024
ACK_DELAY: Final = 0.02

# A record to send: (kind, seq, bytes) for Relay(cid, kind, seq, len(bytes)).
Out = tuple[str, int, bytes]


class EndState(enum.Enum):
    IDLE = "idle"
    HANDSHAKE = "handshake"
    OPEN = "open"
    LOCAL_EOF = "local_eof"
    REMOTE_EOF = "remote_eof"
    DONE = "done"
    CLOSED = "closed"
    ERROR = "error"


E = EndState
_SESSION: Final = (E.OPEN, E.LOCAL_EOF, E.REMOTE_EOF, E.DONE)
# input -> {state: next state}; one dictionary per input so the per-record
# steps look up without building a key.
_TABLE: Final[dict[str, dict[EndState, EndState]]] = {
    "link": {E.IDLE: E.HANDSHAKE, E.HANDSHAKE: E.HANDSHAKE, **{s: s for s in _SESSION}},
    "handshake": {E.HANDSHAKE: E.HANDSHAKE, E.CLOSED: E.CLOSED},
    "established": {E.HANDSHAKE: E.OPEN},
    "send": {E.OPEN: E.OPEN, E.REMOTE_EOF: E.REMOTE_EOF},
    "send_eof": {E.OPEN: E.LOCAL_EOF, E.REMOTE_EOF: E.DONE},
    "recv": {E.OPEN: E.OPEN, E.LOCAL_EOF: E.LOCAL_EOF, E.CLOSED: E.CLOSED},
    "recv_eof": {E.OPEN: E.REMOTE_EOF, E.LOCAL_EOF: E.DONE},
    "ack": {**{s: s for s in _SESSION}, E.CLOSED: E.CLOSED},
    "close": {s: E.CLOSED for s in EndState if s is not E.ERROR},
}
# Per-record checks compare identities: an enum's hash is Python code.
_OPEN: Final = E.OPEN
_LOCAL_EOF: Final = E.LOCAL_EOF
_REMOTE_EOF: Final = E.REMOTE_EOF
_CLOSED: Final = E.CLOSED
_ERROR: Final = E.ERROR
_NOTHING: Final[tuple[Out, ...]] = ()


class RelayEnd:
    """The decisions of one end of a relayed connection."""

    def __init__(self, cid: str, role: str, window: int = DEFAULT_WINDOW) -> None:
        self.cid = cid
        self.role = role
        self.window = window
        self.state = EndState.IDLE
        self.session: SecureSession | None = None
        self.handshake: Handshake | None = None
        self.peer_identity = b""  # the peer's identity key, once a handshake saw it
        self.paused = False  # the hub said Pause
        # While unacknowledged records are sent again, new ones wait, so
        # that none lands behind a gap at the far end.
        self.resending = False
        self.inbox: deque[bytes] = deque()  # messages the application has not taken
        # What the half-closes were, kept once the connection is CLOSED (a
        # hang-up after the peer's end of stream still reads as that end).
        self._eof_in = False
        self._eof_out = False
        self._consumed = 0  # bytes taken since our last acknowledgement
        self._gap_reported_at = -1  # the expected seq we last asked a resend from

    def __repr__(self) -> str:
        return f"<RelayEnd {self.cid} {self.role} {self.state.value}>"

    # --- states ---------------------------------------------------------------

    def _step(self, event: str) -> None:
        nxt = _TABLE[event].get(self.state)
        if nxt is None:
            was, self.state = self.state, EndState.ERROR
            cls = RemoteProtocolError if event.startswith("recv") else LocalProtocolError
            raise cls(f"relay connection {self.cid}: {event!r} in state {was.value}")
        self.state = nxt

    @property
    def established(self) -> bool:
        return self.session is not None

    @property
    def closed(self) -> bool:
        return self.state is EndState.CLOSED or self.state is EndState.ERROR

    @property
    def eof_sent(self) -> bool:
        """Our sending side was closed (also after the hang-up)."""
        return self._eof_out

    @property
    def eof_received(self) -> bool:
        """The peer closed its sending side (also after the hang-up)."""
        return self._eof_in

    @property
    def unacked(self) -> int:
        """Records sent and not yet acknowledged."""
        return len(self.session.unacked_records) if self.session is not None else 0

    def next_deadline(self) -> float | None:
        return None  # no timers: the adapter bounds its own waits

    def handle_timer(self, now: float) -> Sequence[Out]:
        return _NOTHING

    # --- links and the handshake --------------------------------------------------

    def linked(self, new_handshake: Handshake | None) -> list[Out]:
        """Linked arrived. Without a session, (re)start the handshake with
        ``new_handshake`` (both ends start over: either may have lost a
        message); with one, return every unacknowledged record again, in
        order, then an acknowledgement (call :meth:`resent` once they are
        sent: new records wait until then)."""
        self._step("link")
        self.paused = False
        if self.session is None:
            if new_handshake is None:
                self.state = EndState.ERROR
                raise LocalProtocolError("a handshake is needed to link a new connection")
            self.handshake = new_handshake
            return [(KIND_HANDSHAKE, 0, out) for out in new_handshake.take()]
        self.resending = True
        out: list[Out] = [(KIND_DATA, seq, sealed) for seq, sealed in self.session.unacked()]
        out.append(self.ack())
        return out

    def interrupt_handshake(self) -> bool:
        """The handshake of this link will not finish (hang-up, failure or a
        relink); True if one was running."""
        running = self.handshake is not None and self.session is None
        self.handshake = None
        return running

    def receive_handshake(self, payload: bytes) -> bool:
        """A handshake message; True once the keys are agreed (then send
        :meth:`take_handshake` and call :meth:`establish`)."""
        if self.state is EndState.CLOSED:
            return False
        if self.session is not None:
            self.state = EndState.ERROR
            raise RemoteProtocolError(
                "the other end restarted its handshake in the middle of the connection"
            )
        if self.handshake is None:
            self.state = EndState.ERROR
            raise RemoteProtocolError("handshake message before the connection was linked")
        self._step("handshake")
        hs = self.handshake
        try:
            hs.receive(payload)
        except ProtocolError:
            self.state = EndState.ERROR
            raise
        finally:
            if isinstance(hs, IdentityHandshake) and hs.peer_identity:
                self.peer_identity = hs.peer_identity
        return hs.keys is not None

    def take_handshake(self) -> list[Out]:
        if self.handshake is None:
            return []
        return [(KIND_HANDSHAKE, 0, out) for out in self.handshake.take()]

    def establish(self) -> None:
        hs = self.handshake
        if hs is None or hs.keys is None:
            self.state = EndState.ERROR
            raise LocalProtocolError("established before the handshake agreed on keys")
        self._step("established")
        self.session = SecureSession(hs.keys, self.window)
        self.handshake = None

    # --- sending -------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def resent(self) -> None:
        """The records :meth:`linked` returned are sent: new ones may follow."""
        self.resending = False

    def can_send(self, size: int) -> bool:
        """May a record of ``size`` plaintext bytes go now (window, Pause,
        resend in progress)?"""
        s = self.session
        state = self.state
        return (
            s is not None
            and (state is _OPEN or state is _REMOTE_EOF)
            and not self.paused
            and not self.resending
            and s.can_send(size)
        )

    def send(self, data: bytes) -> Out:
        """Seal one message (call only when :meth:`can_send`)."""
        if len(data) > MAX_MESSAGE:
            raise LocalProtocolError(f"a message may be at most {MAX_MESSAGE} bytes")
        return self._seal("send", RECORD_MESSAGE + data)

    def send_eof(self) -> Out:
        """Seal the end of our sending side."""
        out = self._seal("send_eof", RECORD_EOF)
        self._eof_out = True
        return out

    def _seal(self, event: str, plain: bytes) -> Out:
        s = self.session
        if s is None:
            self.state = EndState.ERROR
            raise LocalProtocolError("a record before the connection was established")
        self._step(event)
        seq, sealed = s.seal(plain)
        return (KIND_DATA, seq, sealed)

    def ack(self, *, gap: bool = False) -> Out:
        if self.session is None:
            raise LocalProtocolError("an acknowledgement before the connection was established")
        self._consumed = 0
        counter, sealed = self.session.ack(gap=gap)
        return (KIND_ACK, counter, sealed)

    # --- receiving --------------------------------------------------------------------

    def receive(self, kind: str, seq: int, payload: bytes) -> Sequence[Out]:
        """A ``d`` or ``a`` record from the peer; returns what to send back.
        Messages land in :attr:`inbox`."""
        state = self.state
        if state is _ERROR:
            raise LocalProtocolError(f"relay connection {self.cid} failed already")
        s = self.session
        if s is None or state is _CLOSED:
            return _NOTHING  # from before a handshake restart, or after the end
        if kind == KIND_DATA:
            try:
                plain = s.open(seq, payload, hold=True)
            except ProtocolError:
                self.state = EndState.ERROR
                self.inbox.clear()  # nothing more from a peer that broke the protocol
                raise
            if plain is None:
                expected = s.expected
                if seq < expected:
                    return (self.ack(),)  # a resend: say again what we have
                if self._gap_reported_at != expected:
                    # Something before this record was lost (the hub dropped
                    # it while an end was away): ask once.
                    self._gap_reported_at = expected
                    return (self.ack(gap=True),)
                return _NOTHING
            self._gap_reported_at = -1  # progress: a later gap is news again
            if state is not _OPEN and state is not _LOCAL_EOF:
                self._step("recv")  # raises: a new record after the peer's EOF
            if plain[:1] == RECORD_EOF:
                self._step("recv_eof")
                self._eof_in = True
                s.release()
                return (self.ack(),)
            self.inbox.append(plain[1:])
            return _NOTHING
        if kind == KIND_ACK:
            self._step("ack")
            try:
                s.on_ack(seq, payload)
            except ProtocolError:
                self.state = EndState.ERROR
                raise
            if s.gap_reported and not self.resending:
                self.resending = True
                return [(KIND_DATA, q, sealed) for q, sealed in s.unacked()]
            return _NOTHING
        self.state = EndState.ERROR
        raise RemoteProtocolError(f"unknown relay record kind {kind!r}")

    def take(self) -> bytes | None:
        """The next message for the application (its credit returns with the
        next acknowledgement), or None if none is waiting."""
        if not self.inbox:
            return None
        data = self.inbox.popleft()
        if self.session is not None:
            self.session.release()
        self._consumed += len(data) + 1  # as the window counts it (its first byte)
        return data

    def ack_due(self) -> bool:
        """Should an acknowledgement go now (ACK_BYTES, or a quarter of the
        window, taken since the last one)?"""
        return self.session is not None and self._consumed >= min(ACK_BYTES, self.window // 4)

    def ack_owed(self) -> bool:
        """Was anything taken since our last acknowledgement? (One is owed
        within ACK_DELAY.)"""
        return self.session is not None and self._consumed > 0

    def close(self) -> None:
        """Hung up, by either side or the hub: nothing more goes out."""
        self._step("close")
        self.handshake = None
