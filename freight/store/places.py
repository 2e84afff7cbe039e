"""Where the relay's rendezvous are held in a cluster (``relay_places``):
which node holds a listener (``l:USER/APP``), a code's offer
(``o:NAMEPLATE``) or a connection (``c:CID``). A listener or an offer is
wherever it was made last; a connection belongs to the node that opened it
until that node is dead or drained (or its accepting end comes back to
another), and then to the first node one of its ends comes back to, so both
ends of it always meet on one node (:mod:`freight.hub.places`)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import IN_SLICE, Repository

__all__ = ["RelayPlaces"]


class RelayPlaces(Repository):
    async def put_place(self, key: str, node: str) -> None:
        """``key`` is held by ``node`` now, whoever held it before."""
        p = t.relay_places.c
        async with self.engine.begin() as c:
            done = await c.execute(
                t.relay_places.update().where(p.key == key).values(node=node, since=self.clock())
            )
            if not done.rowcount:
                await c.execute(
                    t.relay_places.insert().values(key=key, node=node, since=self.clock())
                )

    async def claim_place(self, key: str, node: str, *, alive_after: float) -> str:
        """Make ``node`` the holder of ``key`` unless a node that beat after
        ``alive_after`` holds it: the holder's name, after."""
        p, n = t.relay_places.c, t.nodes.c
        for _ in range(2):  # a second time if another node inserted it meanwhile
            try:
                async with self.engine.begin() as c:
                    holder = await c.scalar(sa.select(p.node).where(p.key == key))
                    if holder is None:
                        await c.execute(
                            t.relay_places.insert().values(key=key, node=node, since=self.clock())
                        )
                        return node
                    if holder == node:
                        return node
                    held = (
                        await c.execute(sa.select(n.seen, n.draining).where(n.name == holder))
                    ).first()
                    if held is not None and held.seen > alive_after and not held.draining:
                        return str(holder)
                    done = await c.execute(
                        t.relay_places.update()
                        .where(p.key == key, p.node == holder)
                        .values(node=node, since=self.clock())
                    )
                    if done.rowcount:
                        return node
            except IntegrityError:
                pass
        holder = await self._scalar(sa.select(p.node).where(p.key == key))
        return str(holder or node)

    async def place_of(self, key: str, *, alive_after: float) -> tuple[str, str] | None:
        """The node holding ``key`` and its address, if that node is alive
        and not drained (a drained node's connections go to the others)."""
        return (await self.places_of([key], alive_after=alive_after)).get(key)

    async def places_of(
        self, keys: Iterable[str], *, alive_after: float
    ) -> dict[str, tuple[str, str]]:
        """:meth:`place_of` for each of ``keys`` held by such a node."""
        keys = list(keys)
        p, n = t.relay_places.c, t.nodes.c
        out: dict[str, tuple[str, str]] = {}
        async with self.engine.connect() as c:
            for i in range(0, len(keys), IN_SLICE):
                rows = await c.execute(
                    sa.select(p.key, n.name, n.url)
                    .select_from(t.relay_places.join(t.nodes, p.node == n.name))
                    .where(p.key.in_(keys[i : i + IN_SLICE]), n.seen > alive_after, n.draining == 0)
                )
                out.update({str(r.key): (str(r.name), str(r.url)) for r in rows})
        return out

    async def drop_places(self, keys: Iterable[str], node: str) -> None:
        """``node`` no longer holds ``keys`` (those another node took stay)."""
        keys = list(keys)
        p = t.relay_places.c
        async with self.engine.begin() as c:
            for i in range(0, len(keys), IN_SLICE):
                await c.execute(
                    t.relay_places.delete().where(p.key.in_(keys[i : i + IN_SLICE]), p.node == node)
                )

    async def clear_places(self, node: str) -> None:
        """Forget everything ``node`` held (it starts again, or is removed)."""
        async with self.engine.begin() as c:
            await c.execute(t.relay_places.delete().where(t.relay_places.c.node == node))
