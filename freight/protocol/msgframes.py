"""The wire protocol's messaging frames (docs/protocol.md "Messaging").

A host (an agent, `freight daemon`, or a command acting as its own host)
announces itself with MsgHello; applications on it register interests
locally and the host tells the hub the union per (app, peer). A message is
resolved to hosts (MsgResolve -> MsgRoute), then sent once per host
(MsgSend, body sealed end to end for that host), handed on by the hub as
MsgDeliver, and answered by the receiving host with MsgResult, which the hub
forwards to the sender. :mod:`.messages` has them in its union.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .fastcheck import patterns
from .fields import APP_NAME, App, AppLen, Id, Message, Name, NonNeg, Peer, Text

U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
# The patterns of ids, also checked together by fastcheck in the frames
# sent once per message (MsgSend, MsgDeliver, MsgResult).
HEX32: Final = "[0-9a-f]{32}"
OPT_HEX32: Final = f"(?:{HEX32})?"
TICKET: Final = HEX32 + r"\.[0-9a-f]{1,16}"  # a registration: its host's id, a local number
OPT_TICKET: Final = f"(?:{TICKET})?"
REASON: Final = "[a-z_]*"
HostId = Annotated[str, msgspec.Meta(pattern=f"^{HEX32}$")]
MsgId = Annotated[str, msgspec.Meta(pattern=f"^{HEX32}$")]
OptMsgId = Annotated[str, msgspec.Meta(pattern=f"^{OPT_HEX32}$")]
Ticket = Annotated[str, msgspec.Meta(pattern=f"^{OPT_TICKET}$")]
Key32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Sig64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{128}$")]
# A destination: an account name, "*" (every host the sender may reach) or
# "host:" and a host id (the host of a ticket, for replies).
Dest = Annotated[str, msgspec.Meta(min_length=1, max_length=70)]
Reason = Annotated[str, msgspec.Meta(max_length=32, pattern=f"^{REASON}$")]
ReasonLen = Annotated[str, msgspec.Meta(max_length=32)]  # pattern: REASON
Held = Annotated[str, msgspec.Meta(pattern=r"^(pending|refused)$")]
MAX_HOST_REGS: Final = 256  # (app, peer) pairs one host may announce


class MsgReg(msgspec.Struct, frozen=True, kw_only=True):
    """The union of the interests registered on a host for ``app``, open to
    messages from ``peer`` (an account name or ``*``)."""

    app: App
    interest: U32
    peer: Peer = "*"


class MsgHostInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A host as the hub lists it: its id, account, messaging key (X25519),
    and that key's signature by one of the account's identity keys."""

    hid: HostId
    account: Name
    key: Key32
    sig: Sig64
    identity: Key32


class MsgHello(Message, tag="msg_hello", frozen=True):
    """Announce this attachment as a messaging host and replace its
    registrations (sent again after every change and every re-attach).
    Answered by Done or Error with the same ``rid``."""

    rid: Id
    key: Key32
    sig: Sig64
    identity: Key32
    regs: Annotated[list[MsgReg], msgspec.Meta(max_length=MAX_HOST_REGS)] = []


class MsgResolve(Message, tag="msg_resolve", frozen=True):
    """Which hosts would take a message of ``type`` for ``app`` at ``dest``
    (``app`` empty: just find the host, e.g. to check a sender's key)."""

    rid: Id
    dest: Dest
    app: Annotated[str, msgspec.Meta(max_length=64, pattern=f"^(?:{APP_NAME})?$")] = ""
    type: U32 = 0


class MsgRoute(Message, tag="msg_route", frozen=True):
    """The answer to MsgResolve: the matching hosts, or none and why."""

    rid: Id
    hosts: Annotated[list[MsgHostInfo], msgspec.Meta(max_length=100_000)] = []
    reason: Reason = ""
    message: Text = ""


class MsgSend(Message, tag="msg_send", frozen=True):
    """One message for one host (``to``); the payload is the body sealed for
    that host. ``id`` stays the same when the message is sent again."""

    id: str  # the patterns of these text fields: below
    to: str
    app: AppLen
    type: U32
    ticket: str = ""
    from_ticket: str = ""
    reply_to: str = ""


class MsgDeliver(Message, tag="msg_deliver", frozen=True):
    """A message handed on by the hub to the host ``to`` named; ``frm`` and
    ``account`` say who sent it (the hub vouches for the account)."""

    id: str
    frm: str
    account: Name
    app: AppLen
    type: U32
    ticket: str = ""
    from_ticket: str = ""
    reply_to: str = ""


class MsgResult(Message, tag="msg_result", frozen=True):
    """What became of message ``id`` at host ``host``: ``count`` recipients
    took it, or none and ``reason`` (no_host, no_app, no_interest,
    ticket_gone, busy, forbidden, retry, too_large, bad_seal)."""

    id: str
    host: str = ""
    count: NonNeg = 0
    reason: ReasonLen = ""
    message: Text = ""


# The addressing fields of a message, in MsgSend, MsgDeliver and msglocal.
ADDRESSED: Final = {
    "app": APP_NAME,
    "ticket": OPT_TICKET,
    "from_ticket": OPT_TICKET,
    "reply_to": OPT_HEX32,
}
patterns(MsgSend, {"id": HEX32, "to": HEX32, **ADDRESSED})
patterns(MsgDeliver, {"id": HEX32, "frm": HEX32, **ADDRESSED})
patterns(MsgResult, {"id": HEX32, "host": OPT_HEX32, "reason": REASON})


class MsgHeld(Message, tag="msg_held", frozen=True):
    """Applications held until an admin approves them (docs/protocol.md 15.2)."""

    apps: Annotated[dict[App, Held], msgspec.Meta(max_length=MAX_HOST_REGS)] = {}
