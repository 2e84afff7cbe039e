"""End-to-end encryption of relayed connections (sans-I/O).

The hub relays records between two ends without being able to read them.
Two handshakes produce a :class:`SessionKeys`:

* :class:`CodeHandshake` (``freight send`` / ``receive``): SPAKE2 on the
  one-time code, with an X25519 exchange riding in the same messages; the
  session secret mixes both, and each side proves it with a key
  confirmation MAC, the claimant first. A wrong code shows up as a
  claimant's confirmation that does not verify; the accepting end answers
  nothing a guess could be tested against.
* :class:`IdentityHandshake` (``connect`` / ``listen``): an X25519 exchange
  authenticated by both accounts' Ed25519 identity keys (SIGMA-style: each
  side signs the whole transcript), checked against the keys the hub lists
  for the peer's account.

:class:`SecureSession` then seals data records with AES-256-GCM under one key
per direction, the nonce being the record's sequence number; it keeps every
record until the far end acknowledges it (so it can be sent again after any
reconnect), delivers records strictly in order exactly once, drops replays
and records from beyond a gap (the receiver's next acknowledgement says so
and they come again), and refuses any record or acknowledgement that fails
authentication. See docs/protocol.md "Relay".
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError, LocalProtocolError, ProtocolError, RemoteProtocolError

KEY_BYTES: Final = 32
X25519_BYTES: Final = 32
SPAKE2_BYTES: Final = 33
SIGNATURE_BYTES: Final = 64
MAC_BYTES: Final = 32
TAG_BYTES: Final = 16
KIND_DATA: Final = 0
KIND_ACK: Final = 1
DEFAULT_WINDOW: Final = 16 * 1024 * 1024
MAX_COUNTER: Final = 1 << 64  # nonces hold 8-byte counters
_NONCE: Final = struct.Struct(">B3xQ")
_ACK: Final = struct.Struct(">QB")  # next expected sequence, flags
ACK_GAP: Final = 0x01  # "records after a gap were dropped: send again from here"

# Claims of one code that may fail (a wrong code, or a claimant gone before
# its confirmation verified) before the code stops working, at the hub and
# in the sending process alike.
MAX_CODE_GUESSES: Final = 3

DIAL: Final = "dial"
ACCEPT: Final = "accept"


class WrongCode(ProtocolError):
    """The other side used a different code."""

    code = "wrong_code"
    exit_code = 3
    hint = "check the code with the sender; after 3 failed claims the code stops working"


class PeerKeyRejected(ProtocolError):
    """The peer's identity key or signature did not verify."""

    code = "peer_key_rejected"
    exit_code = 3
    hint = "the peer is not who the hub says; compare fingerprints with --verify"


class FlowViolation(RemoteProtocolError):
    """The peer sent more than the credit window allows."""

    code = "flow_violation"
    hint = "the other end ignored flow control (a broken or hostile peer); the connection ended"


def _hkdf(secret: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _raw(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _x25519_public(data: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise RemoteProtocolError("malformed X25519 key in the handshake") from None


def _ed25519_public(data: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise RemoteProtocolError("malformed identity key in the handshake") from None


def _shared(mine: X25519PrivateKey, theirs: bytes) -> bytes:
    try:
        return mine.exchange(_x25519_public(theirs))
    except ValueError:  # an all-zero result: a low-order point
        raise RemoteProtocolError("degenerate X25519 key in the handshake") from None


def fingerprint_words(digest: bytes) -> str:
    """A short code two people can read to each other: 4 groups of 5 digits."""
    n = int.from_bytes(digest[:8], "big")
    groups = []
    for _ in range(4):
        n, part = divmod(n, 100000)
        groups.append(f"{part:05d}")
    return " ".join(groups)


@dataclass(frozen=True)
class SessionKeys:
    """One AES-256-GCM key per direction, and what both ends can compare."""

    send_key: bytes
    recv_key: bytes
    fingerprint: str

    @classmethod
    def derive(cls, secret: bytes, transcript: bytes, role: str) -> SessionKeys:
        salt = hashlib.sha256(transcript).digest()
        d2a = _hkdf(secret, salt, b"freight e2e dial->accept")
        a2d = _hkdf(secret, salt, b"freight e2e accept->dial")
        verify = _hkdf(secret, salt, b"freight e2e fingerprint")
        send, recv = (d2a, a2d) if role == DIAL else (a2d, d2a)
        return cls(send, recv, fingerprint_words(verify))


def _check_role(role: str) -> None:
    if role not in (DIAL, ACCEPT):
        raise LocalProtocolError(f"role must be {DIAL!r} or {ACCEPT!r}")


class Handshake(ABC):
    """What both handshakes offer: messages to send, a verdict when done."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.keys: SessionKeys | None = None

    def take(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    @abstractmethod
    def receive(self, data: bytes) -> None:
        """Take the peer's next handshake message; fill ``outbox``/``keys``."""


class CodeHandshake(Handshake):
    """SPAKE2 + X25519 on a one-time code. The accepting end (the sender of
    files) is SPAKE2 side A, the claimant (dial) side B.

    1. both ways at once: ``spake2 ‖ x25519``;
    2. dial → accept: the claimant's key confirmation MAC;
    3. accept → dial: the accepting end's MAC, **only after** the claimant's
       verified.

    The order is what limits guessing: a SPAKE2 message alone lets nobody
    test a guess, a confirmation does. Were the accepting end to confirm
    first, any claimant could take its confirmation, test one guess offline
    and hang up without a trace; this way every guess costs a claim the
    accepting end sees fail (docs/protocol.md 12.4). After an error the
    machine stays failed and refuses everything.
    """

    def __init__(self, code: str, role: str, context: bytes) -> None:
        super().__init__()
        _check_role(role)
        self.role = role
        self.context = context
        password = code.encode()
        # Imported here: building its group tables costs ~30 ms, which every
        # other command (and every identity handshake) would pay at start-up.
        from spake2 import SPAKE2_A, SPAKE2_B  # type: ignore[import-untyped]

        side = SPAKE2_A if role == ACCEPT else SPAKE2_B
        self._spake = side(password, idA=b"freight-send", idB=b"freight-receive")
        self._eph = X25519PrivateKey.generate()
        self._mine = self._spake.start() + _raw(self._eph.public_key())
        self._theirs: bytes | None = None
        self._pending: SessionKeys | None = None
        self._confirm_mine = b""
        self._confirm_theirs = b""
        self._error: ProtocolError | None = None
        self.outbox.append(self._mine)

    def receive(self, data: bytes) -> None:
        if self._error is not None:
            raise RemoteProtocolError("handshake message after the handshake failed")
        try:
            self._receive(data)
        except ProtocolError as exc:
            self._error = exc
            raise

    def _receive(self, data: bytes) -> None:
        if self._theirs is None:
            if len(data) != SPAKE2_BYTES + X25519_BYTES:
                raise RemoteProtocolError("malformed code handshake message")
            self._theirs = data
            try:
                pake = self._spake.finish(data[:SPAKE2_BYTES])
            except Exception:  # spake2 raises its own classes for bad points
                raise RemoteProtocolError("malformed SPAKE2 message") from None
            dh = _shared(self._eph, data[SPAKE2_BYTES:])
            first, second = (
                (data, self._mine) if self.role == DIAL else (self._mine, data)
            )  # the accepting end's message first, in both views
            transcript = b"freight code v1\0" + self.context + first + second
            self._pending = SessionKeys.derive(pake + dh, transcript, self.role)
            confirm_key = _hkdf(pake + dh, hashlib.sha256(transcript).digest(), b"confirm")
            mine_label = self.role.encode()
            theirs_label = (ACCEPT if self.role == DIAL else DIAL).encode()
            self._confirm_mine = hmac.new(confirm_key, mine_label, "sha256").digest()
            self._confirm_theirs = hmac.new(confirm_key, theirs_label, "sha256").digest()
            if self.role == DIAL:
                self.outbox.append(self._confirm_mine)
            return
        if self.keys is not None:
            raise RemoteProtocolError("handshake message after the handshake finished")
        if len(data) != MAC_BYTES:
            raise RemoteProtocolError("malformed code confirmation")
        if not hmac.compare_digest(data, self._confirm_theirs):
            raise WrongCode("wrong code: the other side used a different one")
        if self.role == ACCEPT:
            self.outbox.append(self._confirm_mine)
        self.keys = self._pending


def identity_context(
    cid: str, app: str, dial_account: str, accept_account: str, hub_fingerprint: str
) -> bytes:
    """What an identity handshake binds besides the keys: the connection,
    both accounts as this end was told them, and the hub's certificate
    fingerprint as this end trusts it. Each field is length-prefixed so no
    two different lists give the same bytes."""
    fields = (cid, app, dial_account, accept_account, hub_fingerprint)
    return b"".join(struct.pack(">H", len(b)) + b for b in (f.encode() for f in fields))


class IdentityHandshake(Handshake):
    """X25519 authenticated by Ed25519 identity keys.

    1. dial → accept: ``eph_d ‖ id_d``
    2. accept → dial: ``eph_a ‖ id_a ‖ sig_a(transcript)``
    3. dial → accept: ``sig_d(transcript)``

    ``peer_keys`` are the peer's registered identity keys as the hub lists
    them; a key not among them, or a bad signature, is refused.
    ``context`` is :func:`identity_context`. ``peer_identity`` is the peer's
    key once its first message arrived (a handshake started again after a
    relink may be limited to it).
    """

    def __init__(
        self, identity: Ed25519PrivateKey, role: str, context: bytes, peer_keys: list[bytes]
    ) -> None:
        super().__init__()
        _check_role(role)
        self.role = role
        self.context = context
        self.peer_keys = set(peer_keys)
        self._id = identity
        self._eph = X25519PrivateKey.generate()
        self._eph_pub = _raw(self._eph.public_key())
        self._id_pub = _raw(identity.public_key())
        self._transcript = b""
        self._secret = b""
        self._peer_id: Ed25519PublicKey | None = None
        self.peer_identity = b""
        self._step = 0
        if role == DIAL:
            self.outbox.append(self._eph_pub + self._id_pub)

    def _peer_identity(self, raw: bytes) -> Ed25519PublicKey:
        if raw not in self.peer_keys:
            raise PeerKeyRejected("the peer's identity key is not registered for its account")
        key = _ed25519_public(raw)
        self.peer_identity = raw
        return key

    def _finish_transcript(self, eph_d: bytes, id_d: bytes, eph_a: bytes, id_a: bytes) -> None:
        self._transcript = b"freight identity v2\0" + self.context + eph_d + id_d + eph_a + id_a
        peer_eph = eph_a if self.role == DIAL else eph_d
        self._secret = _shared(self._eph, peer_eph)

    def _sign(self, label: bytes) -> bytes:
        return self._id.sign(label + hashlib.sha256(self._transcript).digest())

    def _verify(self, sig: bytes, label: bytes) -> None:
        assert self._peer_id is not None
        try:
            self._peer_id.verify(sig, label + hashlib.sha256(self._transcript).digest())
        except InvalidSignature:
            raise PeerKeyRejected("the peer's handshake signature does not verify") from None

    def receive(self, data: bytes) -> None:
        self._step += 1
        if self.role == ACCEPT and self._step == 1:
            if len(data) != X25519_BYTES + KEY_BYTES:
                raise RemoteProtocolError("malformed identity handshake message 1")
            eph_d, id_d = data[:X25519_BYTES], data[X25519_BYTES:]
            self._peer_id = self._peer_identity(id_d)
            self._finish_transcript(eph_d, id_d, self._eph_pub, self._id_pub)
            self.outbox.append(self._eph_pub + self._id_pub + self._sign(b"accept"))
        elif self.role == DIAL and self._step == 1:
            if len(data) != X25519_BYTES + KEY_BYTES + SIGNATURE_BYTES:
                raise RemoteProtocolError("malformed identity handshake message 2")
            eph_a, id_a = data[:X25519_BYTES], data[X25519_BYTES : X25519_BYTES + KEY_BYTES]
            self._peer_id = self._peer_identity(id_a)
            self._finish_transcript(self._eph_pub, self._id_pub, eph_a, id_a)
            self._verify(data[X25519_BYTES + KEY_BYTES :], b"accept")
            self.outbox.append(self._sign(b"dial"))
            self.keys = SessionKeys.derive(self._secret, self._transcript, self.role)
        elif self.role == ACCEPT and self._step == 2:
            if len(data) != SIGNATURE_BYTES:
                raise RemoteProtocolError("malformed identity handshake message 3")
            self._verify(data, b"dial")
            self.keys = SessionKeys.derive(self._secret, self._transcript, self.role)
        else:
            raise RemoteProtocolError("handshake message after the handshake finished")


def new_identity() -> tuple[bytes, bytes]:
    """A new identity key pair as (private raw, public raw) bytes."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private, _raw(key.public_key())


def load_identity(private: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(private)


def public_of(identity: Ed25519PrivateKey) -> bytes:
    return _raw(identity.public_key())


class SecureSession:
    """Sealed, acknowledged, in-order records over an unreliable relay.

    Sending: :meth:`seal` numbers a record and keeps it until :meth:`on_ack`
    says the far end has it; :meth:`unacked` lists what to send again after
    a reconnect; :meth:`can_send` enforces the credit window (bytes sealed
    and not yet acknowledged). Receiving: :meth:`open` returns the plaintext
    of the next record in order, ``None`` for a replay or for a record beyond
    a gap (the sender will send it again), and raises on tampering;
    :meth:`ack` seals "I have everything before N".

    The receiver enforces the window it grants: a record opened with
    ``hold`` stays held until :meth:`release` (the application took it), an
    acknowledgement names only released records, and a record that would
    make the held bytes exceed the window raises :class:`FlowViolation` (one
    record alone may exceed it, as :meth:`can_send` allows). An honest sender
    never trips this: its bytes in flight include every held record.
    """

    def __init__(self, keys: SessionKeys, window: int = DEFAULT_WINDOW) -> None:
        self.keys = keys
        self.window = window
        self._seal = AESGCM(keys.send_key)
        self._open = AESGCM(keys.recv_key)
        self.next_seq = 0
        self.unacked_records: deque[tuple[int, bytes, int]] = deque()
        self.in_flight = 0
        self.expected = 0
        self.released = 0  # records below this were taken by the application
        self._acked_out = 0  # what our last acknowledgement said
        self._held: deque[int] = deque()  # sizes of records from _acked_out to expected
        self.held_bytes = 0
        self._acks_sent = 0
        self._acks_seen = -1
        self.acked_upto = 0  # the far end has every record below this
        self.gap_reported = False  # the last acknowledgement asked for a resend
        self.delivered_since_ack = 0

    # -- sending --------------------------------------------------------

    def can_send(self, size: int) -> bool:
        return self.in_flight == 0 or self.in_flight + size <= self.window

    def seal(self, plaintext: bytes) -> tuple[int, bytes]:
        seq = self.next_seq
        self.next_seq += 1
        sealed = self._seal.encrypt(_NONCE.pack(KIND_DATA, seq), plaintext, None)
        self.unacked_records.append((seq, sealed, len(plaintext)))
        self.in_flight += len(plaintext)
        return seq, sealed

    def unacked(self) -> list[tuple[int, bytes]]:
        return [(seq, sealed) for seq, sealed, _ in self.unacked_records]

    def on_ack(self, counter: int, sealed: bytes) -> int:
        """Check an acknowledgement; return how many records it freed."""
        if not 0 <= counter < MAX_COUNTER:
            raise RemoteProtocolError("acknowledgement counter out of range")
        try:
            plain = self._open.decrypt(_NONCE.pack(KIND_ACK, counter), sealed, None)
        except InvalidTag:
            raise IntegrityError("an acknowledgement failed authentication") from None
        if counter <= self._acks_seen:
            return 0  # a replayed or reordered acknowledgement: ignore
        if len(plain) != _ACK.size:
            raise RemoteProtocolError("malformed acknowledgement")
        self._acks_seen = counter
        upto, flags = _ACK.unpack(plain)
        self.gap_reported = bool(flags & ACK_GAP)
        if upto > self.next_seq:
            raise RemoteProtocolError("acknowledgement of records never sent")
        freed = 0
        while self.unacked_records and self.unacked_records[0][0] < upto:
            _, _, size = self.unacked_records.popleft()
            self.in_flight -= size
            freed += 1
        self.acked_upto = max(self.acked_upto, upto)
        return freed

    # -- receiving ------------------------------------------------------

    def open(self, seq: int, sealed: bytes, *, hold: bool = False) -> bytes | None:
        if seq != self.expected or seq >= MAX_COUNTER:
            # A replay (seq below) or a record after a lost one (seq above):
            # neither is delivered; what is missing is sent again.
            return None
        try:
            plain = self._open.decrypt(_NONCE.pack(KIND_DATA, seq), sealed, None)
        except InvalidTag:
            raise IntegrityError("a relayed record failed authentication (altered?)") from None
        if self.held_bytes and self.held_bytes + len(plain) > self.window:
            raise FlowViolation(
                f"the other end sent beyond the {self.window}-byte window this end granted"
            )
        self.expected += 1
        self._held.append(len(plain))
        self.held_bytes += len(plain)
        if not hold:
            self.released = self.expected
        self.delivered_since_ack += 1
        return plain

    def release(self) -> None:
        """The application took the oldest record opened with ``hold``."""
        self.released = min(self.released + 1, self.expected)

    def ack(self, *, gap: bool = False) -> tuple[int, bytes]:
        """Seal "I have every record below N" with N the records released
        (the credit it returns); with ``gap``, also "I dropped later ones:
        send again from there"."""
        counter = self._acks_sent
        self._acks_sent += 1
        self.delivered_since_ack = 0
        while self._acked_out < self.released:
            self.held_bytes -= self._held.popleft()
            self._acked_out += 1
        plain = _ACK.pack(self.released, ACK_GAP if gap else 0)
        sealed = self._seal.encrypt(_NONCE.pack(KIND_ACK, counter), plain, None)
        return counter, sealed
