"""Transfer jobs with a negotiated manner (docs/protocol.md §16): the job
messages and the two negotiation machines, sans-I/O.

A job's messages travel on the messaging layer (§15) as bodies of the
reserved message type :data:`JOB_TYPE`, end to end sealed between the two
hosts. The sender proposes a manner (``direct``, ``relay``, ``ref``) with
the job's requirements; the receiver accepts it, completing the proposal
with what the sender needs, or refuses it with a reason; the sender then
proposes the next manner. The receiver checks the byte count and the
BLAKE3 digest the sender declared and sends the :class:`Result`.

Both machines are transition tables: ``TABLE[(state, event)]`` names the
handler; an event with no entry in the current state is ignored (a stale
or repeated message) or, for a local event, raises
:class:`JobTransitionError`. Handlers return :class:`Action` values the
runner carries out; no clock, no I/O here.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import blake3
import msgspec

from .errors import LocalProtocolError, RemoteProtocolError

# The reserved message types: proposals and what the sender sends go to
# receivers registered with interest JOB_TYPE (the top bit); the answers go
# by ticket to the sender's registration, interest JOB_REPLY_TYPE.
JOB_TYPE: Final = 0x80000000
JOB_REPLY_TYPE: Final = 0x40000000
MAX_JOB_MESSAGE: Final = 64 * 1024  # an encoded job message, at most
MAX_ATTEMPTS: Final = 16
MAX_REASON: Final = 1000

MANNERS: Final = ("direct", "relay", "ref")
REQUIREMENTS: Final = ("encrypted", "secure-pipe", "resumable", "bidirectional")
# What each manner satisfies (docs/protocol.md §16.3).
SATISFIES: Final[dict[str, frozenset[str]]] = {
    "direct": frozenset({"encrypted", "secure-pipe", "bidirectional"}),
    "relay": frozenset({"encrypted", "secure-pipe", "resumable", "bidirectional"}),
    "ref": frozenset({"encrypted", "secure-pipe", "resumable"}),
}

JobId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
AnyJobId = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{32})?$")]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPTS)]
AnyAttempt = Annotated[int, msgspec.Meta(ge=0, le=MAX_ATTEMPTS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
OptDigest = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON)]


class MalformedJobMessage(RemoteProtocolError):
    """A job message that does not fit the protocol."""

    code = "malformed_job_message"


class JobTransitionError(LocalProtocolError):
    """A local event the job machine cannot take in its state (a bug)."""

    code = "job_transition"


class Propose(msgspec.Struct, frozen=True, kw_only=True, tag="propose", tag_field="t"):
    job: JobId
    attempt: Attempt
    manner: Name  # checked by the receiver: an unknown one is refused
    requires: Annotated[list[Name], msgspec.Meta(max_length=8)] = []
    offer: dict[str, Any] = {}
    bytes: Count = 0
    files: Count = 0
    blake3: Digest


class Accept(msgspec.Struct, frozen=True, kw_only=True, tag="accept", tag_field="t"):
    job: JobId
    attempt: Attempt
    completion: dict[str, Any] = {}


class Refuse(msgspec.Struct, frozen=True, kw_only=True, tag="refuse", tag_field="t"):
    job: AnyJobId  # empty: the message refused could not be read
    attempt: AnyAttempt
    reason: Reason


class Abandon(msgspec.Struct, frozen=True, kw_only=True, tag="abandon", tag_field="t"):
    job: JobId
    attempt: Attempt
    reason: Reason


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="result", tag_field="t"):
    job: JobId
    ok: bool
    bytes: Count = 0
    blake3: OptDigest = ""
    error: Reason = ""


JobMessage = Propose | Accept | Refuse | Abandon | Result
_DECODER: Final = msgspec.json.Decoder(JobMessage)
_ENCODER: Final = msgspec.json.Encoder()


def encode(msg: JobMessage) -> bytes:
    return _ENCODER.encode(msg)


def decode(data: bytes) -> JobMessage:
    """A job message, or :class:`MalformedJobMessage` saying why not."""
    if len(data) > MAX_JOB_MESSAGE:
        raise MalformedJobMessage(f"a job message is at most {MAX_JOB_MESSAGE} bytes")
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedJobMessage(f"malformed job message: {exc}") from None


def clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


# --- the digest of what a job carries ---------------------------------------------

_ITEM: Final = struct.Struct(">I")
_SIZE: Final = struct.Struct(">Q")


def tree_digest(files: Iterable[tuple[str, int, str]]) -> str:
    """BLAKE3 over the files ``(relative path, size, BLAKE3 hex)`` in path
    order: ``u32 len ‖ path ‖ u64 size ‖ digest (32 bytes)`` each."""
    h = blake3.blake3()
    for path, size, digest in sorted(files, key=lambda f: f[0].encode()):
        raw = path.encode()
        h.update(_ITEM.pack(len(raw)) + raw + _SIZE.pack(size) + bytes.fromhex(digest))
    return h.hexdigest()


def parse_manners(text: str, what: str = "--manner") -> list[str]:
    """``direct,relay,ref`` as a list (order kept, no repeats)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in MANNERS:
            raise ValueError(f"{what}: unknown manner {n!r} (known: {', '.join(MANNERS)})")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{what}: give each manner once, e.g. direct,relay,ref")
    return names


def parse_requirements(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in REQUIREMENTS:
            raise ValueError(f"--require: unknown {n!r} (known: {', '.join(REQUIREMENTS)})")
    return sorted(set(names))


def lacks(manner: str, requires: Iterable[str]) -> list[str]:
    """The requirements ``manner`` does not satisfy (unknown ones included)."""
    have = SATISFIES.get(manner, frozenset())
    return [r for r in requires if r not in have]


# --- actions the runner carries out -------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send this message to the other end."""

    msg: JobMessage


@dataclass(frozen=True)
class Prepare:
    """Sender: make the offer of ``manner`` (then ``prepared`` or ``failed``)."""

    manner: str
    attempt: int


@dataclass(frozen=True)
class Complete:
    """Receiver: make the completion of an accepted proposal."""

    proposal: Propose


@dataclass(frozen=True)
class Move:
    """Move the bytes in this attempt's manner (then ``moved`` or ``failed``)."""

    manner: str
    attempt: int
    offer: dict[str, Any]
    completion: dict[str, Any]


@dataclass(frozen=True)
class Cancel:
    """Stop what runs for this attempt (the other end gave it up)."""

    attempt: int
    reason: str


@dataclass(frozen=True)
class Record:
    """One attempt's verdict for the job's record."""

    attempt: int
    manner: str
    verdict: str  # accepted, refused, failed, ok, mismatch
    reason: str = ""
    bytes: int = 0


@dataclass(frozen=True)
class Finish:
    """The job is over."""

    ok: bool
    error: str = ""
    bytes: int = 0
    blake3: str = ""


Action = Send | Prepare | Complete | Move | Cancel | Record | Finish


class S(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"
    PROPOSED = "proposed"
    ACCEPTING = "accepting"
    MOVING = "moving"
    CONFIRMING = "confirming"
    OPEN = "open"  # receiver: waiting for a proposal
    DONE = "done"
    FAILED = "failed"


FINAL: Final = frozenset({S.DONE, S.FAILED})


# --- the sender ------------------------------------------------------------------------


@dataclass
class SenderMachine:
    """The proposing side of one job."""

    job: str
    manners: list[str]
    requires: list[str]
    bytes: int
    files: int
    blake3: str
    state: S = S.IDLE
    attempt: int = 0
    index: int = -1
    reasons: list[str] = field(default_factory=list)
    offer: dict[str, Any] = field(default_factory=dict)
    declared: tuple[int, str] = (0, "")  # this attempt's bytes and digest

    @property
    def manner(self) -> str:
        return self.manners[self.index] if 0 <= self.index < len(self.manners) else ""

    def _go(self, event: str, *args: Any) -> list[Action]:
        handler = SENDER_TABLE.get((self.state, event))
        if handler is None:
            if event.startswith("got_"):
                return []  # stale or repeated: ignored
            raise JobTransitionError(f"sender: {event} in state {self.state.value}")
        return handler(self, *args)

    # events
    def start(self) -> list[Action]:
        return self._go("start")

    def prepared(
        self, offer: dict[str, Any], nbytes: int | None = None, digest: str | None = None
    ) -> list[Action]:
        """The offer is ready; ``nbytes``/``digest``: what this manner
        delivers when it is not the job's files (by reference: the stream)."""
        return self._go("prepared", offer, nbytes, digest)

    def failed(self, reason: str) -> list[Action]:
        return self._go("failed", reason)

    def moved(self) -> list[Action]:
        return self._go("moved")

    def timeout(self) -> list[Action]:
        return self._go("timeout")

    def receive(self, msg: JobMessage) -> list[Action]:
        if msg.job != self.job:
            return []
        if not isinstance(msg, Result) and msg.attempt != self.attempt:
            return []
        return self._go("got_" + type(msg).__name__.lower(), msg)

    # handlers
    def _next(self, reason: str, verdict: str) -> list[Action]:
        acts: list[Action] = []
        if reason:
            said = reason if reason.startswith(self.manner + ":") else f"{self.manner}: {reason}"
            self.reasons.append(said)
            acts.append(Record(self.attempt, self.manner, verdict, reason))
        while self.index + 1 < len(self.manners):
            self.index += 1
            missing = lacks(self.manner, self.requires)
            if missing:
                self.reasons.append(f"{self.manner}: does not give {', '.join(missing)}")
                continue
            if self.attempt >= MAX_ATTEMPTS:
                break
            self.attempt += 1
            self.state = S.PREPARING
            return [*acts, Prepare(self.manner, self.attempt)]
        self.state = S.FAILED
        error = clip("no manner worked: " + "; ".join(self.reasons or ["none was offered"]))
        if self.attempt:
            acts.append(Send(Result(job=self.job, ok=False, error=error)))
        return [*acts, Finish(False, error)]

    def _start(self) -> list[Action]:
        return self._next("", "")

    def _prepared(
        self, offer: dict[str, Any], nbytes: int | None, digest: str | None
    ) -> list[Action]:
        self.offer = offer
        self.declared = (
            self.bytes if nbytes is None else nbytes,
            self.blake3 if digest is None else digest,
        )
        self.state = S.PROPOSED
        return [
            Send(
                Propose(
                    job=self.job,
                    attempt=self.attempt,
                    manner=self.manner,
                    requires=list(self.requires),
                    offer=offer,
                    bytes=self.declared[0],
                    files=self.files,
                    blake3=self.declared[1],
                )
            )
        ]

    def _prepare_failed(self, reason: str) -> list[Action]:
        return self._next(clip(reason), "failed")

    def _accepted(self, msg: Accept) -> list[Action]:
        self.state = S.MOVING
        return [
            Record(self.attempt, self.manner, "accepted"),
            Move(self.manner, self.attempt, self.offer, dict(msg.completion)),
        ]

    def _refused(self, msg: Refuse) -> list[Action]:
        return self._next(msg.reason or "refused", "refused")

    def _no_answer(self) -> list[Action]:
        return self._next("no answer from the receiver", "refused")

    def _move_failed(self, reason: str) -> list[Action]:
        abandon = Send(Abandon(job=self.job, attempt=self.attempt, reason=clip(reason)))
        return [abandon, *self._next(clip(reason), "failed")]

    def _gave_up_while_moving(self, msg: Refuse) -> list[Action]:
        # The receiver's side of the move failed: this attempt is over.
        return self._next(msg.reason or "the receiver gave it up", "failed")

    def _moved(self) -> list[Action]:
        self.state = S.CONFIRMING
        return []

    def _result(self, msg: Result) -> list[Action]:
        if msg.ok and (msg.bytes, msg.blake3) == self.declared:
            self.state = S.DONE
            return [
                Record(self.attempt, self.manner, "ok", bytes=msg.bytes),
                Finish(True, bytes=msg.bytes, blake3=msg.blake3),
            ]
        self.state = S.FAILED
        error = clip(msg.error or "the receiver's result differs from what was sent")
        verdict = "mismatch" if "mismatch" in error or msg.ok else "failed"
        return [
            Record(self.attempt, self.manner, verdict, error, msg.bytes),
            Finish(False, error, msg.bytes, msg.blake3),
        ]

    def _confirm_timeout(self) -> list[Action]:
        self.state = S.FAILED
        error = "no result from the receiver"
        return [Record(self.attempt, self.manner, "failed", error), Finish(False, error)]


SENDER_TABLE: Final[dict[tuple[S, str], Callable[..., list[Action]]]] = {
    (S.IDLE, "start"): SenderMachine._start,
    (S.PREPARING, "prepared"): SenderMachine._prepared,
    (S.PREPARING, "failed"): SenderMachine._prepare_failed,
    (S.PROPOSED, "got_accept"): SenderMachine._accepted,
    (S.PROPOSED, "got_refuse"): SenderMachine._refused,
    (S.PROPOSED, "timeout"): SenderMachine._no_answer,
    (S.PROPOSED, "got_result"): SenderMachine._result,
    (S.MOVING, "failed"): SenderMachine._move_failed,
    (S.MOVING, "moved"): SenderMachine._moved,
    (S.MOVING, "got_refuse"): SenderMachine._gave_up_while_moving,
    (S.MOVING, "got_result"): SenderMachine._result,
    (S.CONFIRMING, "got_result"): SenderMachine._result,
    # The receiver's side failed after this side's part was done (e.g. a
    # by-reference fetch): the attempt is over, the next manner is proposed.
    (S.CONFIRMING, "got_refuse"): SenderMachine._gave_up_while_moving,
    (S.CONFIRMING, "timeout"): SenderMachine._confirm_timeout,
}


# --- the receiver ------------------------------------------------------------------------


@dataclass
class ReceiverMachine:
    """The answering side of one job. ``accepts``: the manners this
    receiver takes, in no particular order; ``unavailable``: a manner's
    reason it cannot be used here (e.g. relay without a hub login)."""

    job: str
    accepts: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)
    state: S = S.OPEN
    attempt: int = 0
    proposal: Propose | None = None

    @property
    def manner(self) -> str:
        return self.proposal.manner if self.proposal else ""

    def _go(self, event: str, *args: Any) -> list[Action]:
        handler = RECEIVER_TABLE.get((self.state, event))
        if handler is None:
            if event.startswith("got_"):
                return []
            raise JobTransitionError(f"receiver: {event} in state {self.state.value}")
        return handler(self, *args)

    def receive(self, msg: JobMessage) -> list[Action]:
        if msg.job != self.job:
            return []
        if isinstance(msg, Propose) and msg.attempt <= self.attempt:
            return []  # an old proposal again
        if isinstance(msg, Accept | Refuse | Abandon) and msg.attempt != self.attempt:
            return []
        return self._go("got_" + type(msg).__name__.lower(), msg)

    def completed(self, completion: dict[str, Any]) -> list[Action]:
        return self._go("completed", completion)

    def failed(self, reason: str) -> list[Action]:
        return self._go("failed", reason)

    def moved(self, nbytes: int, digest: str) -> list[Action]:
        return self._go("moved", nbytes, digest)

    def refusal(self, p: Propose) -> str:
        """Why this receiver refuses ``p`` ("" when it does not)."""
        if p.manner not in MANNERS:
            return f"unknown manner {p.manner!r}"
        if p.manner not in self.accepts:
            return f"{p.manner}: not accepted here (accepted: {', '.join(self.accepts)})"
        unknown = [r for r in p.requires if r not in REQUIREMENTS]
        if unknown:
            return f"unknown requirement {unknown[0]!r}"
        missing = lacks(p.manner, p.requires)
        if missing:
            return f"{p.manner}: does not give {', '.join(missing)}"
        if p.manner in self.unavailable:
            return f"{p.manner}: {self.unavailable[p.manner]}"
        return ""

    def _proposed(self, p: Propose) -> list[Action]:
        self.attempt, self.proposal = p.attempt, p
        reason = clip(self.refusal(p))
        if reason:
            self.state = S.OPEN
            return [
                Record(p.attempt, p.manner, "refused", reason),
                Send(Refuse(job=self.job, attempt=p.attempt, reason=reason)),
            ]
        self.state = S.ACCEPTING
        return [Complete(p)]

    def _superseded(self, p: Propose) -> list[Action]:
        # A new proposal while moving: the sender gave the last attempt up.
        cancel = Cancel(self.attempt, "the sender proposed again")
        return [cancel, *self._proposed(p)]

    def _completed(self, completion: dict[str, Any]) -> list[Action]:
        assert self.proposal is not None
        self.state = S.MOVING
        p = self.proposal
        return [
            Record(p.attempt, p.manner, "accepted"),
            Send(Accept(job=self.job, attempt=p.attempt, completion=completion)),
            Move(p.manner, p.attempt, dict(p.offer), completion),
        ]

    def _complete_failed(self, reason: str) -> list[Action]:
        self.state = S.OPEN
        reason = clip(f"{self.manner}: {reason}")
        return [
            Record(self.attempt, self.manner, "refused", reason),
            Send(Refuse(job=self.job, attempt=self.attempt, reason=reason)),
        ]

    def _move_failed(self, reason: str) -> list[Action]:
        # The sender is told (its side of the manner may not notice) and
        # proposes the next manner; that proposal is awaited.
        self.state = S.OPEN
        reason = clip(reason)
        return [
            Record(self.attempt, self.manner, "failed", reason),
            Send(Refuse(job=self.job, attempt=self.attempt, reason=reason)),
        ]

    def _abandoned(self, msg: Abandon) -> list[Action]:
        self.state = S.OPEN
        return [
            Cancel(msg.attempt, msg.reason),
            Record(msg.attempt, self.manner, "failed", "the sender gave it up: " + msg.reason),
        ]

    def _moved(self, nbytes: int, digest: str) -> list[Action]:
        assert self.proposal is not None
        p = self.proposal
        if nbytes == p.bytes and digest == p.blake3:
            self.state = S.DONE
            return [
                Record(p.attempt, p.manner, "ok", bytes=nbytes),
                Send(Result(job=self.job, ok=True, bytes=nbytes, blake3=digest)),
                Finish(True, bytes=nbytes, blake3=digest),
            ]
        self.state = S.FAILED
        error = clip(
            f"mismatch: received {nbytes} bytes with BLAKE3 {digest[:16]}…, "
            f"the sender declared {p.bytes} bytes with BLAKE3 {p.blake3[:16]}…"
        )
        return [
            Record(p.attempt, p.manner, "mismatch", error, nbytes),
            Send(Result(job=self.job, ok=False, bytes=nbytes, blake3=digest, error=error)),
            Finish(False, error, nbytes, digest),
        ]

    def _sender_gave_up(self, msg: Result) -> list[Action]:
        self.state = S.FAILED
        cancel: list[Action] = [Cancel(self.attempt, msg.error)] if self.attempt else []
        return [*cancel, Finish(False, clip(msg.error or "the sender gave the job up"))]


_ANY_LIVE = (S.OPEN, S.ACCEPTING, S.MOVING)
RECEIVER_TABLE: Final[dict[tuple[S, str], Callable[..., list[Action]]]] = {
    (S.OPEN, "got_propose"): ReceiverMachine._proposed,
    (S.ACCEPTING, "got_propose"): ReceiverMachine._superseded,
    (S.MOVING, "got_propose"): ReceiverMachine._superseded,
    (S.ACCEPTING, "completed"): ReceiverMachine._completed,
    (S.ACCEPTING, "failed"): ReceiverMachine._complete_failed,
    (S.ACCEPTING, "got_abandon"): ReceiverMachine._abandoned,
    (S.MOVING, "failed"): ReceiverMachine._move_failed,
    (S.MOVING, "got_abandon"): ReceiverMachine._abandoned,
    (S.MOVING, "moved"): ReceiverMachine._moved,
    **{(s, "got_result"): ReceiverMachine._sender_gave_up for s in _ANY_LIVE},
}
