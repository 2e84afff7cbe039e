"""What the relay knows of one connection, shared by the router
(freight.hub.relay) and the code desk (freight.hub.codes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError
from ..protocol.e2e import ACCEPT, DIAL
from .streams import User

if TYPE_CHECKING:
    from .relay import Attachment

CODE_APP_PREFIX = "code:"


def other(role: str) -> str:
    return ACCEPT if role == DIAL else DIAL


class RelayRefused(RemoteError):
    """A request the hub answers with an Error frame carrying ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Conn:
    cid: str
    app: str
    users: dict[str, User]
    ends: dict[str, Attachment | None] = field(default_factory=lambda: {DIAL: None, ACCEPT: None})
    queued: dict[str, int] = field(default_factory=lambda: {DIAL: 0, ACCEPT: 0})
    paused: dict[str, bool] = field(default_factory=lambda: {DIAL: False, ACCEPT: False})
    # Bytes a sender relayed since it was told to pause (what it had in flight).
    overshoot: dict[str, int] = field(default_factory=lambda: {DIAL: 0, ACCEPT: 0})
    relayed: dict[str, int] = field(default_factory=lambda: {DIAL: 0, ACCEPT: 0})
    started: float = field(default_factory=time.time)
    linked_once: bool = False
    detached_since: float = 0.0
    nameplate: str = ""
    rids: dict[str, str] = field(default_factory=dict)  # a request waiting for Linked
    owner: int = 0  # the account whose request created it (counts against its cap)
    # Codes: a handshake is running on the current link and not yet verified
    # by the sender (if the link ends now, the claim failed); and whether a
    # handshake of this connection was verified.
    hs_pending: bool = False
    verified: bool = False

    def linked(self) -> bool:
        return self.ends[DIAL] is not None and self.ends[ACCEPT] is not None

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.cid,
            "from": self.users[DIAL].name,
            "to": self.users[ACCEPT].name,
            "app": self.app,
            "state": "connected" if self.linked() else "waiting",
            "bytes_from": self.relayed[DIAL],
            "bytes_to": self.relayed[ACCEPT],
            "started": self.started,
            "elapsed": round(now - self.started, 3),
        }
