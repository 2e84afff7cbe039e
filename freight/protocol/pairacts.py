"""The records of the relay pairing (:mod:`freight.protocol.pairing`):
an account, an attachment (:class:`Seat`), a connection (:class:`Pair`), how
an ended one ended (:class:`Gone`); and what the pairing asks its adapter to
do, one small immutable value per action, in the order to perform them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .relaycodes import RefusalCode
from .switch import Link, Port


class Party(Protocol):
    """An account as the pairing sees it."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


class Seat(Port):
    """One attachment as the pairing sees it: a switch port of one account."""

    def __init__(self, user: Party) -> None:
        super().__init__()
        self.user = user
        self.ends: dict[str, str] = {}  # cid -> the role this attachment holds
        self.apps: set[str] = set()  # applications it listens for
        self.offers: set[str] = set()  # nameplates it offers


class Pair(Link[Any]):
    """One relayed connection as the pairing sees it: the switch's link and
    who is on it. Its ends are :class:`Seat` objects."""

    def __init__(
        self,
        cid: str,
        app: str,
        users: dict[str, Party],
        *,
        owner: int = 0,
        linked_once: bool = False,
        nameplate: str = "",
    ) -> None:
        super().__init__(cid, linked_once=linked_once)
        self.app = app
        self.users = users
        self.owner = owner  # the account whose request created it (counts against its cap)
        self.nameplate = nameplate  # the code's, for send/receive
        self.rids: dict[str, str] = {}  # per end, a request waiting for Linked
        self.waits_for: tuple[str, str] | None = None  # in the waiting-dial index
        self.pair_key: tuple[int, int, str] | None = None  # in the by-pair index
        self.verified = False  # a code's handshake on it was verified by the sender

    def linked(self) -> bool:
        return self.complete()


@dataclass(frozen=True, slots=True)
class Refuse:
    code: RefusalCode
    message: str


@dataclass(frozen=True, slots=True)
class Done:
    rid: str


@dataclass(frozen=True, slots=True)
class Granted:
    rid: str
    nameplate: str
    expires: float


@dataclass(frozen=True, slots=True)
class Waiting:
    rid: str
    cid: str


@dataclass(frozen=True, slots=True)
class Ready:
    conn: Pair


@dataclass(frozen=True, slots=True)
class Hangup:
    seat: Seat
    cid: str
    code: str
    message: str
    by: str


@dataclass(frozen=True, slots=True)
class Ended:
    conn: Pair
    code: str
    message: str
    by: str


@dataclass(frozen=True, slots=True)
class Away:
    conn: Pair


@dataclass(frozen=True, slots=True)
class ResolvePeer:
    name: str


@dataclass(frozen=True, slots=True)
class RejoinCode:
    nameplate: str


Action = (
    Refuse | Done | Granted | Waiting | Ready | Hangup | Ended | Away | ResolvePeer | RejoinCode
)


class Gone(NamedTuple):
    """How a connection ended, kept for an end that rejoins late."""

    code: str
    message: str
    by: str
    owners: frozenset[int]
