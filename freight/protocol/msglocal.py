"""The local messaging socket: an application and its host, on one machine.

A host (``freight daemon``, ``freight agent run``) serves a Unix socket,
``msg.sock`` in its config folder; applications speak this protocol on it
(docs/protocol.md "Messaging", "The local socket"). Frames are the wire
protocol's (``[4-byte big-endian header length][JSON header][payload]``,
``len`` in the header counts the payload) with their own tagged union of
headers, defined here. Bodies travel as payloads, never inside the JSON.

The application speaks first (:class:`LHello`); the host answers
:class:`LWelcome` with its version, or :class:`LError` and closes. Every
request carries an ``rid`` the application picks; the answer carries the
same ``rid``. :class:`LDeliver` frames come unasked, one per message for a
registration; the application answers :class:`LTaken` once it has them.
"""

from __future__ import annotations

import struct
from typing import Annotated, Final

import msgspec

from .errors import LocalProtocolError
from .fastcheck import patterns
from .fields import App, AppLen, NonNeg
from .frames import HeaderDecoder, header_parser
from .msgframes import ADDRESSED, HEX32, OPT_HEX32, REASON, TICKET, U32, ReasonLen
from .msgframes import Ticket as OptTicket

LOCAL_VERSION: Final = 1
# Limits of the local socket: a header, and a message body (the hub's limit
# on a sealed message less the seal).
MAX_LOCAL_HEADER: Final = 64 * 1024
MAX_MESSAGE_BODY: Final = 1024 * 1024
MAX_TAKEN_IDS: Final = 1024
MAX_TIMEOUT: Final = 3600.0
# The reason of a result answering a send with wait=false: the host has
# the message in its spool and delivers it without reporting its outcome.
SPOOLED: Final = "spooled"

# Shared with the hub's messaging frames: the same names, the same rules.
# Declared here are only what the local socket has of its own: request ids,
# answer codes, a ticket that must be present, and destinations and peers
# that may not hold control characters (they are printed to a terminal).
NonZeroU32 = Annotated[int, msgspec.Meta(ge=1, le=0xFFFFFFFF)]  # T == 0 matches nothing
RID: Final = r"[A-Za-z0-9_.:-]*"  # (a request id of 1 to 64 of these)
PRINTABLE: Final = r"[^\x00-\x1f]+"
Rid = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=f"^{RID}$")]
RidLen = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # pattern: RID
OptRid = Annotated[str, msgspec.Meta(max_length=64, pattern=f"^{RID}$")]
OptRidLen = Annotated[str, msgspec.Meta(max_length=64)]  # pattern: RID
Peer = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=f"^{PRINTABLE}$")]
Account = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Dest = Annotated[str, msgspec.Meta(min_length=1, max_length=70, pattern=f"^{PRINTABLE}$")]
DestLen = Annotated[str, msgspec.Meta(min_length=1, max_length=70)]  # pattern: PRINTABLE
OptHostId = Annotated[str, msgspec.Meta(pattern=f"^{OPT_HEX32}$")]
Ticket = Annotated[str, msgspec.Meta(pattern=f"^{TICKET}$")]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)]


class LocalMessage(msgspec.Struct, tag_field="t", kw_only=True, frozen=True):
    """Base of the local socket's headers; ``len`` counts payload bytes."""

    len: NonNeg = 0


class LHello(LocalMessage, tag="hello", frozen=True):
    """The application's first frame."""

    version: NonNeg
    client: Text = ""


class LWelcome(LocalMessage, tag="welcome", frozen=True):
    """The host's answer to LHello: its protocol version, host id and account."""

    version: NonNeg
    hid: OptHostId = ""
    account: Text = ""


class LRegister(LocalMessage, tag="register", frozen=True):
    """Register for messages of ``app`` whose type shares a bit with
    ``interest``, from ``peer`` (an account name, or ``*`` for anyone)."""

    rid: Rid
    app: App
    interest: NonZeroU32
    peer: Peer = "*"


class LRegistered(LocalMessage, tag="registered", frozen=True):
    """The registration ``rid`` asked for, named by ``ticket``; ``held``:
    the hub holds its application until an admin approves it (``pending``)
    or for good (``refused``); empty: it is not held."""

    rid: Rid
    ticket: Ticket
    held: Annotated[str, msgspec.Meta(pattern=r"^(|pending|refused)$")] = ""


class LUnregister(LocalMessage, tag="unregister", frozen=True):
    """Drop a registration of this connection; answered by LDone."""

    rid: Rid
    ticket: Ticket


class LDone(LocalMessage, tag="done", frozen=True):
    """Request ``rid`` is done (nothing else to say)."""

    rid: Rid


class LSend(LocalMessage, tag="send", frozen=True):
    """Send the payload to ``app`` at ``dest`` (an account, ``*`` or
    ``host:<hid>``); ``ticket`` narrows it to one registration, ``reply_to``
    names the message this answers, ``from_ticket`` one of this
    connection's registrations where replies go. Answered by LResult: once
    every recipient host answered, or with ``wait`` false as soon as the
    host has it in its spool (reason ``spooled``; delivered all the same)."""

    rid: RidLen  # the patterns of the text fields: below the class
    dest: DestLen
    app: AppLen
    type: NonZeroU32
    ticket: str = ""
    from_ticket: str = ""
    reply_to: str = ""
    timeout: Timeout = 30.0
    wait: bool = True


class LResult(LocalMessage, tag="result", frozen=True):
    """What became of send (or request) ``rid``: message ``id`` reached
    ``count`` recipients, or none and ``reason`` (see the reasons in
    docs/protocol.md "Messaging")."""

    rid: RidLen
    id: str = ""
    count: NonNeg = 0
    reason: ReasonLen = ""
    message: Text = ""


class LRequest(LocalMessage, tag="request", frozen=True):
    """Send the payload and wait for one reply: it comes as an LDeliver
    with this ``rid`` (or an LResult saying why not)."""

    rid: Rid
    dest: Dest
    app: App
    type: NonZeroU32
    timeout: Timeout = 5.0


class LDeliver(LocalMessage, tag="deliver", frozen=True):
    """A message for registration ``ticket`` (or the reply to request
    ``rid``); the payload is its body. ``frm`` is the sending host,
    ``account`` the sender's account (vouched for by the hub)."""

    id: str
    frm: str
    account: Account
    app: AppLen
    type: U32
    ticket: str = ""
    rid: OptRidLen = ""
    from_ticket: str = ""
    reply_to: str = ""


class LTaken(LocalMessage, tag="taken", frozen=True):
    """The application has these messages of registration ``ticket``:
    they count toward the sender's acknowledgement, and free credit."""

    ticket: str
    ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_TAKEN_IDS)]


class LApps(LocalMessage, tag="apps", frozen=True):
    """List the host's registrations and counters."""

    rid: Rid


class LAppInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One registration on the host, with its counters."""

    ticket: OptTicket
    app: App
    interest: U32
    peer: Peer = "*"
    stats: dict[str, NonNeg] = {}
    held: Annotated[str, msgspec.Meta(pattern=r"^(|pending|refused)$")] = ""  # see LRegistered


class LAppsList(LocalMessage, tag="apps_list", frozen=True):
    """The answer to LApps."""

    rid: Rid
    apps: Annotated[list[LAppInfo], msgspec.Meta(max_length=100_000)] = []
    counters: dict[str, NonNeg] = {}


class LError(LocalMessage, tag="error", frozen=True):
    """Request ``rid`` failed (no ``rid``: the connection failed and the
    host closes it). ``code`` is an error code of freight.errors."""

    code: Code
    rid: OptRid = ""
    message: Text = ""


PAYLOAD_TYPES: Final = (LSend, LRequest, LDeliver)

# The frames sent once per message check their text fields in one pattern
# (fastcheck): the same rules as the aliases above.
patterns(LSend, {"rid": RID, "dest": PRINTABLE, **ADDRESSED})
patterns(LResult, {"rid": RID, "id": OPT_HEX32, "reason": REASON})
patterns(LDeliver, {"id": HEX32, "frm": HEX32, "rid": RID, **ADDRESSED})
patterns(LTaken, {"ticket": TICKET, "ids": HEX32}, lists=("ids",))

AnyLocal = (
    LHello
    | LWelcome
    | LRegister
    | LRegistered
    | LUnregister
    | LDone
    | LSend
    | LResult
    | LRequest
    | LDeliver
    | LTaken
    | LApps
    | LAppsList
    | LError
)

_LEN: Final = struct.Struct(">I")
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AnyLocal)


def encode_local(msg: LocalMessage, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One whole frame: ``msg`` (its ``len`` must be the payload's length)."""
    if msg.len != len(payload):
        raise LocalProtocolError(
            f"{type(msg).__name__}.len={msg.len} but payload is {len(payload)}"
        )
    if msg.len > MAX_MESSAGE_BODY:
        raise LocalProtocolError(
            f"a message body of {msg.len} bytes exceeds the limit of {MAX_MESSAGE_BODY}"
        )
    header = _encoder.encode(msg)
    if len(header) > MAX_LOCAL_HEADER:
        raise LocalProtocolError(f"a header of {len(header)} bytes exceeds {MAX_LOCAL_HEADER}")
    return _LEN.pack(len(header)) + header + bytes(payload)


# Decode and validate one JSON header of the local socket.
parse_local = header_parser(_decoder, PAYLOAD_TYPES, MAX_MESSAGE_BODY)


class LocalDecoder(HeaderDecoder[AnyLocal]):
    """Incremental decoder of the local socket: ``feed()`` any split of the
    stream, drain ``next_frame()``; bounded by the header and body limits.
    After a protocol error it raises that error again."""

    def __init__(
        self, *, max_header: int = MAX_LOCAL_HEADER, max_payload: int = MAX_MESSAGE_BODY
    ) -> None:
        super().__init__(parse_local, max_header=max_header, max_payload=max_payload)
