"""What the relay knows of one connection, shared by the router
(freight.hub.relay) and the code desk (freight.hub.codes)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import RemoteError
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.pairing import CODE_APP_PREFIX, Pair, Party
from ..protocol.relaycodes import RefusalCode
from ..tasks import Supervisor

__all__ = ["CODE_APP_PREFIX", "Conn", "RelayRefused"]


class RelayRefused(RemoteError):
    """A request the hub answers with an Error frame carrying ``code``."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Conn(Pair):
    """A relayed connection: the pairing's (its ends are
    :class:`freight.hub.relay.Attachment` seats), when it started, the state
    of a code's handshake, and the supervisor of its background work (its
    ``linked`` announcement and events), closed when it ends."""

    def __init__(
        self,
        cid: str,
        app: str,
        users: dict[str, Party],
        owner: int,
        linked_once: bool,
        nameplate: str,
    ) -> None:
        super().__init__(cid, app, users, owner=owner, linked_once=linked_once, nameplate=nameplate)
        self.started = time.time()
        # Codes: a handshake is running on the current link and not yet
        # verified by the sender (if the link ends now, the claim failed).
        self.hs_pending = False
        self.tasks = Supervisor(f"conn/{cid}")

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
