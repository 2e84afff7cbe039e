"""Every typed message of the Freight wire protocol, in one place.

A message is the JSON header of a frame; ``t`` names its type and ``len`` is
the number of payload bytes that follow the header (see :mod:`.frames`).
Field constraints live in the types so that decoding validates them
(:mod:`.fields`); the messaging frames (:mod:`.msgframes`, re-exported
here) declare the text patterns of their per-message fields beside them,
checked in one expression by :mod:`.fastcheck`.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .fields import App, Hex, Id, Name, NonNeg, Peer, Seconds, Text
from .limits import (
    MAX_ID_CHARS,
    MAX_JSON_CHARS,
    MAX_MANIFEST_BYTES,
    MAX_PROBE_RECORD,
    MAX_PROBE_SAMPLES,
    MAX_PROBE_SECONDS,
)

# isort: off
from .fields import Message as Message  # (re-exported, as are the messaging frames)
from .msgframes import (
    MAX_HOST_REGS as MAX_HOST_REGS,
    U32 as U32,
    MsgDeliver as MsgDeliver,
    MsgHeld as MsgHeld,
    MsgHello as MsgHello,
    MsgHostInfo as MsgHostInfo,
    MsgReg as MsgReg,
    MsgResolve as MsgResolve,
    MsgResult as MsgResult,
    MsgRoute as MsgRoute,
    MsgSend as MsgSend,
    Ticket as Ticket,
)
# isort: on

# Compression codecs as carried in Data.codec (what was applied to this frame).
CODEC_NONE: Final = 0
CODEC_ZSTD: Final = 1
CODEC_ZLIB: Final = 2
Codec = Annotated[int, msgspec.Meta(ge=0, le=2)]

# Compression levels a receiver may choose for a stream.
LEVEL_NONE: Final = "none"
LEVEL_FAST: Final = "fast"
LEVEL_MAX: Final = "max"
LEVELS: Final = (LEVEL_NONE, LEVEL_FAST, LEVEL_MAX)
Level = Annotated[str, msgspec.Meta(pattern=r"^(none|fast|max)$")]


# --- session --------------------------------------------------------------


class Hello(Message, tag="hello", frozen=True):
    """First frame from a client on a control channel."""

    version: NonNeg
    agent: Text = ""
    # The client reads several frames per WebSocket message.
    batch: bool = False


class Welcome(Message, tag="welcome", frozen=True):
    """The hub's answer to Hello: its version and node name."""

    version: NonNeg
    node: Text = ""
    # The hub reads several frames per WebSocket message (both ends may then).
    batch: bool = False


class TicketRequest(Message, tag="ticket_req", frozen=True):
    """Ask for a one-time reception ticket for a data connection. With
    ``lane`` the data connection becomes this attachment's lane for relayed
    records (see docs/protocol.md "Relay lanes")."""

    rid: Id
    lane: bool = False


class TicketGrant(Message, tag="ticket", frozen=True):
    """A one-time reception ticket: ``ticket`` and ``secret`` are hex."""

    rid: Id
    ticket: Hex
    secret: Hex
    expires_in: Seconds


OptId = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_.:-]*$")]


class Error(Message, tag="error", frozen=True):
    """A connection-level, stream-level (``sid``) or request-level (``rid``)
    error; both empty for the first."""

    code: Id
    message: Text
    sid: OptId = ""
    rid: OptId = ""
    at: Text = ""  # ``elsewhere``: the address of the cluster node to ask instead


class Ping(Message, tag="ping", frozen=True):
    """Keeps an idle channel alive through firewalls and proxies; ignored."""


# --- streams --------------------------------------------------------------


class Pull(Message, tag="pull", frozen=True):
    """Receiver asks the hub to start sending ``name`` as stream ``sid``."""

    sid: Id
    name: Name


class StartStream(Message, tag="start", frozen=True):
    """Sender opens (or resumes) stream ``sid``. ``interval`` is the
    checkpoint interval the sender would like (0: no preference); the smaller
    of it and the receiver's own applies."""

    sid: Id
    name: Name
    size: NonNeg
    mtime: float = 0.0
    want_level: Level = LEVEL_NONE
    fresh: bool = False
    interval: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0  # sender's preferred


class StartStreamAck(Message, tag="start_ack", frozen=True):
    """Receiver accepts: resume at ``checkpoint``; ``prefix_digest`` is the
    BLAKE3 of the bytes before it, so the sender can tell a changed source.
    ``interval`` is the receiver's checkpoint interval (0: the default)."""

    sid: Id
    level: Level
    rate: NonNeg
    checkpoint: NonNeg
    prefix_digest: Hex = ""
    interval: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0


class Data(Message, tag="data", frozen=True):
    """A chunk at ``offset``: ``raw`` bytes before compression, ``xxh`` is the
    XXH3-64 of those raw bytes, ``codec`` what was applied on the wire."""

    sid: Id
    seq: NonNeg
    offset: NonNeg
    raw: NonNeg
    codec: Codec = CODEC_NONE
    xxh: NonNeg = 0  # XXH3-64 as an unsigned integer


class KeepAlive(Message, tag="keepalive", frozen=True):
    """Sender asks the receiver to make everything below ``offset`` durable."""

    sid: Id
    offset: NonNeg


class KeepAliveAck(Message, tag="keepalive_ack", frozen=True):
    """Everything below ``checkpoint`` is durable; retuned rate and level."""

    sid: Id
    checkpoint: NonNeg
    rate: NonNeg
    level: Level


class EndStream(Message, tag="end", frozen=True):
    """Sender has sent ``total`` bytes whose BLAKE3 is ``digest``."""

    sid: Id
    total: NonNeg
    digest: Hex


class EndStreamAck(Message, tag="end_ack", frozen=True):
    """Receiver's verdict on the whole stream."""

    sid: Id
    total: NonNeg
    verified: bool
    digest: Hex = ""


class Abort(Message, tag="abort", frozen=True):
    """Either side gives up on stream ``sid``; the other must stop too."""

    sid: Id
    code: Id
    message: Text = ""


class PutFiles(Message, tag="put_files", frozen=True):
    """A batch of small files, stored all or none (:mod:`.batch`): the
    payload is ``manifest`` bytes of JSON naming the files, then their
    bytes in that order."""

    sid: Id
    manifest: Annotated[int, msgspec.Meta(ge=2, le=MAX_MANIFEST_BYTES)]


class GetFiles(Message, tag="get_files", frozen=True):
    """Ask for a batch of small files (:mod:`.batch`): the payload is JSON,
    the list of their names; the hub answers with one PutFiles on ``sid``
    holding all of them, or Abort."""

    sid: Id


class PutFilesAck(Message, tag="put_files_ack", frozen=True):
    """Every file of the batch is durable, digest-checked and published.
    ``rate`` is what the hub lets this push send now (bytes/s, 0: no limit)."""

    sid: Id
    stored: NonNeg
    rate: NonNeg = 0


# --- relay: end-to-end encrypted connections through the hub ---------------

Role = Annotated[str, msgspec.Meta(pattern=r"^(dial|accept)$")]
Nameplate = Annotated[str, msgspec.Meta(max_length=12, pattern=r"^[0-9]*$")]
RelayKind = Annotated[str, msgspec.Meta(pattern=r"^[hda]$")]


class Listen(Message, tag="listen", frozen=True):
    """Accept connections for ``app`` from ``peer`` (a user name, or ``*``
    for anyone). Answered by Done or Error with the same ``rid``."""

    rid: Id
    app: App
    peer: Peer = "*"


class Unlisten(Message, tag="unlisten", frozen=True):
    rid: Id
    app: App


class Done(Message, tag="done", frozen=True):
    """A request (``rid``) succeeded."""

    rid: Id


class Dial(Message, tag="dial", frozen=True):
    """Open connection ``cid`` (chosen by the client) to ``peer``'s ``app``.
    ``rejoin`` re-attaches an existing connection after a reconnect, from
    either end (``role``); the hub then pairs the two ends again even if it
    restarted in between. Answered by Waiting, Linked or Error."""

    rid: Id
    cid: Id
    peer: Peer
    app: App
    role: Role = "dial"
    rejoin: bool = False


class Offer(Message, tag="offer", frozen=True):
    """``freight send``: wait for whoever claims a code. An empty
    ``nameplate`` asks the hub for a new one; a given one re-opens it (same
    sender, still valid). Answered by CodeGrant; each claim then arrives as
    Linked with ``app`` ``code:NAMEPLATE``."""

    rid: Id
    nameplate: Nameplate = ""
    ttl: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 3600.0


class CodeGrant(Message, tag="code", frozen=True):
    rid: Id
    nameplate: Nameplate
    expires_in: Seconds


class Claim(Message, tag="claim", frozen=True):
    """``freight receive``: connect as ``cid`` to whoever offers
    ``nameplate``. Answered by Linked, Waiting or Error."""

    rid: Id
    cid: Id
    nameplate: Nameplate


class CodeFailed(Message, tag="code_failed", frozen=True):
    """The offering end saw a wrong code on ``cid``: the hub counts it."""

    cid: Id


class CodeOk(Message, tag="code_ok", frozen=True):
    """The offering end verified the claimant's confirmation on ``cid``: this
    claim is no failed guess. Sent again after every relink."""

    cid: Id


class Waiting(Message, tag="waiting", frozen=True):
    """The other end is not there yet; Linked follows when it is."""

    rid: Id
    cid: Id


class Linked(Message, tag="linked", frozen=True):
    """Both ends of ``cid`` are attached. ``keys`` are the identity public
    keys (hex Ed25519) the peer's account has registered; ``window`` the
    bytes the hub buffers per direction; ``rejoined`` says the connection
    existed before (retransmit what is unacknowledged); ``me`` is this end's
    account and ``hub`` the hub's certificate fingerprint, both bound into
    the identity handshake."""

    cid: Id
    peer: Peer
    app: App
    role: Role
    window: NonNeg
    rid: OptId = ""
    keys: list[Hex] = []
    rejoined: bool = False
    peer_role: Annotated[str, msgspec.Meta(max_length=16)] = ""
    me: Annotated[str, msgspec.Meta(max_length=64)] = ""
    hub: Annotated[str, msgspec.Meta(max_length=80)] = ""


class Relay(Message, tag="relay", frozen=True):
    """An end-to-end record for the other end of ``cid``: ``kind`` is
    ``h`` (handshake), ``d`` (sealed data, sequence ``seq``) or ``a``
    (sealed acknowledgement, counter ``seq``). The hub reads only ``cid``."""

    cid: Id
    kind: RelayKind
    seq: NonNeg = 0


class Pause(Message, tag="pause", frozen=True):
    """The hub holds ``window`` bytes for the other end of ``cid``: stop
    sending until Resume."""

    cid: Id


class Resume(Message, tag="resume", frozen=True):
    cid: Id


class Hangup(Message, tag="hangup", frozen=True):
    """End connection ``cid``; ``by`` is who ended it (peer, hub, admin)."""

    cid: Id
    code: Id = "closed"
    message: Text = ""
    by: Annotated[str, msgspec.Meta(max_length=16)] = ""


# --- agents: the hub's durable commands ---------------------------------------

CommandKind = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")]
Json = Annotated[str, msgspec.Meta(max_length=MAX_JSON_CHARS)]


class Command(Message, tag="command", frozen=True):
    """A command for an agent, kept by the hub until its result arrives;
    ``args`` is a JSON object. Delivered again after a reconnect until
    acknowledged, so an agent must treat a repeated ``id`` as the same one."""

    id: NonNeg
    kind: CommandKind
    args: Json = "{}"


class CommandAck(Message, tag="command_ack", frozen=True):
    """The agent has the command (the hub stops re-delivering it)."""

    id: NonNeg


class CommandResult(Message, tag="command_result", frozen=True):
    """The outcome of command ``id``; ``result`` is a JSON value."""

    id: NonNeg
    ok: bool
    result: Json = "null"


# --- bandwidth probe (docs/protocol.md "20. Bandwidth probe") --------------


class Probe(Message, tag="probe", frozen=True):
    """A probe request. ``ping``: answered at once (a round trip). ``up``: a
    train of ProbeData records follows, closed by ``end``. ``down``: the hub
    sends a train for ``seconds``, then a ProbeReport."""

    pid: Id
    op: Annotated[str, msgspec.Meta(pattern=r"^(ping|up|end|down)$")]
    seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_PROBE_SECONDS)] = 0.0
    size: Annotated[int, msgspec.Meta(ge=1024, le=MAX_PROBE_RECORD)] = 64 * 1024


class ProbeData(Message, tag="probe_data", frozen=True):
    """One record of a train; its payload is filler the data connection seals."""

    pid: Id
    seq: NonNeg


class ProbeReport(Message, tag="probe_report", frozen=True):
    """The answer to a Probe: for ``end`` the receiver's arrival samples,
    each (microseconds since the first record, bytes received by then)."""

    pid: Id
    op: Annotated[str, msgspec.Meta(pattern=r"^(ping|end|down)$")]
    records: NonNeg = 0
    samples: Annotated[list[tuple[NonNeg, NonNeg]], msgspec.Meta(max_length=MAX_PROBE_SAMPLES)] = []


# The only frame types that carry a payload: every other type with a
# non-zero ``len`` is malformed (decoders refuse it from the header alone).
PAYLOAD_TYPES: Final = (Data, Relay, PutFiles, GetFiles, MsgSend, MsgDeliver, ProbeData)

AnyMessage = (
    Hello
    | Welcome
    | TicketRequest
    | TicketGrant
    | Error
    | Pull
    | StartStream
    | StartStreamAck
    | Data
    | KeepAlive
    | KeepAliveAck
    | EndStream
    | EndStreamAck
    | Abort
    | PutFiles
    | PutFilesAck
    | GetFiles
    | Ping
    | Listen
    | Unlisten
    | Done
    | Dial
    | Offer
    | CodeGrant
    | Claim
    | CodeFailed
    | CodeOk
    | Waiting
    | Linked
    | Relay
    | Pause
    | Resume
    | Hangup
    | Command
    | CommandAck
    | CommandResult
    | MsgHello
    | MsgResolve
    | MsgRoute
    | MsgSend
    | MsgDeliver
    | MsgResult
    | MsgHeld
    | Probe
    | ProbeData
    | ProbeReport
)
