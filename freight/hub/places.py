"""Where the two ends of a relayed connection meet in a cluster.

Each node pairs the ends attached to it (:mod:`freight.hub.relay`); in a
cluster the node that holds a listener, a code's offer or a connection
records it (:mod:`freight.store.places`), and a request that reaches
another node for it (a dial, a claim, a rejoin) is answered ``elsewhere``
with the holder's address: the client attaches there and asks again, so
the records of a connection never cross between nodes (no extra hop, no
second window to keep). When the node of a connection dies, its accepting
end takes it to the node it comes back to and the dialling end is sent
there; a node also sends, at each heartbeat, an end that waits for a
connection or a listener another node now holds to that node.

A hub alone (no ``--node`` and no bus) keeps no places: nothing here runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol import messages as m
from ..protocol.e2e import ACCEPT
from ..protocol.pairing import CODE_APP_PREFIX
from ..protocol.relaycodes import RefusalCode
from ..protocol.tunnel import listen_app
from .relayconn import RelayRefused

__all__ = ["Places", "conn_key", "listen_key", "offer_key"]


def listen_key(user: str, app: str) -> str:
    return f"l:{user}/{app}"


def offer_key(nameplate: str) -> str:
    return f"o:{nameplate}"


def conn_key(cid: str) -> str:
    return f"c:{cid}"


HOME = "m:home"  # the node all messaging hosts attach to


class Places:
    def __init__(
        self,
        db: Any,
        node: Callable[[], str],
        dead_after: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.node = node  # this node's name (fixed once it registered)
        self.dead_after = dead_after
        self.clock = clock

    def _alive_after(self) -> float:
        return self.clock() - self.dead_after

    def _elsewhere(self, name: str, url: str, what: str) -> RelayRefused:
        return RelayRefused(
            RefusalCode.ELSEWHERE, f"{what} is attached to node {name}; attach there", at=url
        )

    async def held(self, key: str) -> None:
        """This node holds ``key`` now (a listen, an offer, a new connection)."""
        await self.db.put_place(key, self.node())

    async def released(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            await self.db.drop_places(keys, self.node())

    async def check_elsewhere(self, key: str, what: str) -> None:
        """Raise ``elsewhere`` if another live node holds ``key``."""
        at = await self.db.place_of(key, alive_after=self._alive_after())
        if at is not None and at[0] != self.node():
            raise self._elsewhere(at[0], at[1], what)

    async def rejoin(self, msg: m.Dial) -> None:
        """A connection this node does not hold comes back. Its accepting
        end (a listener, a code's sender) takes it here: the dialling end
        follows, to the node of the connection's listener or offer if that
        is alive, else to whichever node took the connection first."""
        key = conn_key(msg.cid)
        if msg.role == ACCEPT:
            await self.held(key)
            return
        if msg.app.startswith(CODE_APP_PREFIX):
            follow = offer_key(msg.app[len(CODE_APP_PREFIX) :])
        else:
            follow = listen_key(msg.peer, listen_app(msg.app))
        await self.check_elsewhere(follow, "the other end of this connection")
        for _ in range(2):  # again if its holder died between the two reads
            holder = await self.db.claim_place(key, self.node(), alive_after=self._alive_after())
            if holder == self.node():
                return
            await self.check_elsewhere(key, "the other end of this connection")

    async def elsewhere(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Which of ``keys`` other live nodes hold: (node, address) by key."""
        got = await self.db.places_of(keys, alive_after=self._alive_after())
        return {k: at for k, at in got.items() if at[0] != self.node()}

    async def home(self) -> tuple[str, str] | None:
        """The cluster's messaging node, if another: its name and address.
        It holds the part while it beats; the first node to ask after it
        missed two heartbeats (a live node that misses two stops serving)
        or is drained takes it."""
        alive_after = self.clock() - self.dead_after * 2 / 3  # dead_after: three beats
        holder = await self.db.claim_place(HOME, self.node(), alive_after=alive_after)
        if holder == self.node():
            return None
        at = (await self.db.places_of([HOME], alive_after=alive_after)).get(HOME)
        return at if at is not None and at[0] != self.node() else None

    async def clear(self) -> None:
        """This node starts: what it held in an earlier life is gone."""
        await self.db.clear_places(self.node())
