"""What the relay knows of one connection, shared by the router
(freight.hub.relay) and the code desk (freight.hub.codes)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import RemoteError
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.relaycodes import RefusalCode
from ..protocol.switch import Link
from .streams import User

CODE_APP_PREFIX = "code:"


class RelayRefused(RemoteError):
    """A request the hub answers with an Error frame carrying ``code``."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Conn(Link[Any]):
    """A relayed connection: the switch's link (its ends are
    :class:`freight.hub.relay.Attachment` ports) plus who is on it."""

    def __init__(
        self,
        cid: str,
        app: str,
        users: dict[str, User],
        *,
        linked_once: bool = False,
        nameplate: str = "",
        owner: int = 0,
    ) -> None:
        super().__init__(cid, linked_once=linked_once)
        self.app = app
        self.users = users
        self.started = time.time()
        self.nameplate = nameplate
        self.rids: dict[str, str] = {}  # a request waiting for Linked
        self.owner = owner  # the account whose request created it (counts against its cap)
        # Codes: a handshake is running on the current link and not yet
        # verified by the sender (if the link ends now, the claim failed);
        # and whether a handshake of this connection was verified.
        self.hs_pending = False
        self.verified = False

    def linked(self) -> bool:
        return self.complete()

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
