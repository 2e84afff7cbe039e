"""What the relay knows of one connection, shared by the router
(freight.hub.relay) and the code desk (freight.hub.codes)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..errors import RemoteError
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.pairing import CODE_APP_PREFIX, Pair, Party
from ..protocol.relaycodes import RefusalCode
from ..protocol.tunnel import TUNNEL_PREFIX
from ..tasks import Supervisor

__all__ = ["CODE_APP_PREFIX", "Conn", "RelayRefused"]

RATE_WINDOW = 5.0  # seconds a connection's rates are measured over, at most
SAMPLE_EVERY = 0.5  # seconds between two samples of its byte counts
RATE_SAMPLES = 32
MIN_SPAN = 0.2  # a younger measure says nothing yet


class RelayRefused(RemoteError):
    """A request the hub answers with an Error frame carrying ``code``."""

    def __init__(self, code: RefusalCode, message: str, *, at: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.at = at  # ``elsewhere``: the address of the node to ask instead


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
        # (time, bytes from the dialler, bytes from the acceptor) as last
        # described: the rates are measured over these.
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=RATE_SAMPLES)

    def describe(self, now: float) -> dict[str, Any]:
        sent = self.relayed[DIAL], self.relayed[ACCEPT]
        rate_from, rate_to = self._rates(now, sent)
        return {
            "id": self.cid,
            "from": self.users[DIAL].name,
            "to": self.users[ACCEPT].name,
            "app": self.app,
            "pairing": self.pairing,
            "state": "connected" if self.linked() else "waiting",
            # Through the hub, always: each end's channel (a data connection
            # carries the records when it has one), or "away" between attachments.
            "manner": "relay",
            "carried": {"from": self._carried(DIAL), "to": self._carried(ACCEPT)},
            # Every relayed connection runs an end-to-end handshake (docs/protocol.md
            # 12.4) and its records are sealed with keys the hub never sees.
            "e2e": True,
            "bytes_from": sent[0],
            "bytes_to": sent[1],
            "rate_from": rate_from,
            "rate_to": rate_to,
            "started": self.started,
            "elapsed": round(now - self.started, 3),
        }

    @property
    def pairing(self) -> str:
        """How the ends found each other: a one-time code, a tunnel, or a
        dial to a listening application."""
        if self.nameplate or self.app.startswith(CODE_APP_PREFIX):
            return "code"
        return "tunnel" if self.app.startswith(TUNNEL_PREFIX) else "dial"

    def _carried(self, end: str) -> str:
        att = self.ends.get(end)
        if att is None:
            return "away"
        transport = str(getattr(att, "transport", "") or "control")
        return transport + "+data" if getattr(att, "lane", None) is not None else transport

    def _rates(self, now: float, sent: tuple[int, int]) -> tuple[int, int]:
        """Bytes per second each way, over the last few seconds of samples
        (since the start when there is no older sample yet)."""
        older = [x for x in self.samples if now - x[0] >= MIN_SPAN]
        recent = [x for x in older if now - x[0] <= RATE_WINDOW]
        base = recent[0] if recent else older[-1] if older else (self.started, 0, 0)
        if not self.samples or now - self.samples[-1][0] >= SAMPLE_EVERY:
            self.samples.append((now, *sent))
        span = now - base[0]
        if span < MIN_SPAN:
            return 0, 0
        return int((sent[0] - base[1]) / span), int((sent[1] - base[2]) / span)
