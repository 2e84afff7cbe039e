"""Every typed message of the Freight wire protocol, in one place.

A message is the JSON header of a frame; ``t`` names its type and ``len`` is
the number of payload bytes that follow the header (see :mod:`.frames`).
Field constraints live in the types so that decoding validates them.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .limits import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Id = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_.:-]+$")
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Hex = Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[0-9a-f]*$")]
Seconds = Annotated[float, msgspec.Meta(ge=0)]

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


class Message(msgspec.Struct, tag_field="t", kw_only=True, frozen=True):
    """Base of all messages. ``len`` counts payload bytes after the header."""

    len: NonNeg = 0


# --- session --------------------------------------------------------------


class Hello(Message, tag="hello", frozen=True):
    """First frame from a client on a control channel."""

    version: NonNeg
    agent: Text = ""


class Welcome(Message, tag="welcome", frozen=True):
    """The hub's answer to Hello: its version and node name."""

    version: NonNeg
    node: Text = ""


class TicketRequest(Message, tag="ticket_req", frozen=True):
    """Ask for a one-time reception ticket for a data connection."""

    rid: Id


class TicketGrant(Message, tag="ticket", frozen=True):
    """A one-time reception ticket: ``ticket`` and ``secret`` are hex."""

    rid: Id
    ticket: Hex
    secret: Hex
    expires_in: Seconds


class Error(Message, tag="error", frozen=True):
    """A connection-level or stream-level error; ``sid`` empty for the former."""

    code: Id
    message: Text
    sid: Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_.:-]*$")] = ""


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
)
