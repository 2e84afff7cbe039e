"""The hub nodes sharing this database (``nodes``: each node's address and
heartbeat) and which node receives each push (``streams.owner`` and
``streams.lease``). A node's heartbeat renews the leases of the pushes it
receives; another node may take a push over only once its lease lapsed or
its owner gave it back, so two nodes never write the same partial file."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import Repository
from .rows import NodeRow, StreamRow
from .streams import RECEIVING
from .watch import SESSION_PREFIX, watchable

__all__ = ["Nodes"]


class Nodes(Repository):
    # --- nodes ---------------------------------------------------------------

    async def node(self, name: str) -> NodeRow | None:
        return await self._first(NodeRow, sa.select(t.nodes).where(t.nodes.c.name == name))

    async def nodes(self) -> list[NodeRow]:
        return await self._all(NodeRow, sa.select(t.nodes).order_by(t.nodes.c.name))

    async def put_node(
        self, name: str, *, url: str, host: str, pid: int, incarnation: str, watched: bool = False
    ) -> None:
        """Record this process as node ``name`` (replacing whoever was);
        ``watched``: it keeps a session of its own (:mod:`.watch`)."""
        now = self.clock()
        values = {
            "url": url,
            "host": host,
            "pid": pid,
            "incarnation": incarnation,
            "watched": int(watched),
            "started": now,
            "seen": now,
            "clients": 0,
            "transfers": 0,
        }
        async with self.engine.begin() as c:
            done = await c.execute(t.nodes.update().where(t.nodes.c.name == name).values(**values))
            if not done.rowcount:
                await c.execute(t.nodes.insert().values(name=name, draining=0, **values))
            # A new process receives nothing yet: what an earlier one held
            # under this name may be resumed by any node at once.
            await c.execute(t.streams.update().where(t.streams.c.owner == name).values(lease=0.0))

    async def node_gone(self, name: str) -> bool:
        """Whether node ``name`` kept a session of its own (:mod:`.watch`)
        and it has ended: its process no longer runs. False where that
        cannot be seen, and for an unknown node or one that keeps none (of
        an earlier version)."""
        if not watchable(self.engine):
            return False
        query = sa.text(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity"
            " WHERE application_name = :prefix || n.incarnation)"
            " FROM nodes n WHERE n.name = :name AND n.watched = 1"
        )
        async with self.engine.connect() as c:
            return bool(await c.scalar(query, {"prefix": SESSION_PREFIX, "name": name}))

    async def beat(
        self, name: str, incarnation: str, *, clients: int, transfers: int, lease_for: float
    ) -> NodeRow | None:
        """Node ``name`` is alive: its heartbeat, and the leases of the pushes
        it receives renewed. None if the row is no longer this process's
        (another process started as ``name``, or an admin removed it)."""
        got = await self.beat_and_count(
            name, incarnation, clients=clients, transfers=transfers, lease_for=lease_for
        )
        return got[0] if got is not None else None

    async def beat_and_count(
        self, name: str, incarnation: str, *, clients: int, transfers: int, lease_for: float
    ) -> tuple[NodeRow, int] | None:
        """:meth:`beat`, and how many other nodes beat within ``lease_for``."""
        now = self.clock()
        async with self.engine.begin() as c:
            done = await c.execute(
                t.nodes.update()
                .where(t.nodes.c.name == name, t.nodes.c.incarnation == incarnation)
                .values(seen=now, clients=clients, transfers=transfers)
            )
            if not done.rowcount:
                return None
            await c.execute(
                t.streams.update().where(t.streams.c.owner == name).values(lease=now + lease_for)
            )
            row = (await c.execute(sa.select(t.nodes).where(t.nodes.c.name == name))).first()
            others = await c.scalar(
                sa.select(sa.func.count())
                .select_from(t.nodes)
                .where(t.nodes.c.name != name, t.nodes.c.seen > now - lease_for)
            )
        return (NodeRow(**row._mapping), int(others or 0)) if row is not None else None

    async def set_draining(self, name: str, draining: bool) -> bool:
        async with self.engine.begin() as c:
            done = await c.execute(
                t.nodes.update().where(t.nodes.c.name == name).values(draining=int(draining))
            )
        return bool(done.rowcount)

    async def forget_node(self, name: str, *, unseen_since: float) -> bool:
        """Remove node ``name`` if it has not beaten since ``unseen_since``."""
        async with self.engine.begin() as c:
            done = await c.execute(
                t.nodes.delete().where(t.nodes.c.name == name, t.nodes.c.seen < unseen_since)
            )
        return bool(done.rowcount)

    # --- who receives a push ---------------------------------------------------

    def _free_for(self, owner: str, now: float) -> sa.ColumnElement[bool]:
        s = t.streams.c
        return sa.or_(s.owner == "", s.owner == owner, s.lease < now)

    async def claim_stream(
        self, user_id: int, sid: str, owner: str, lease_for: float, *, dead: str = ""
    ) -> tuple[bool, StreamRow | None]:
        """Make ``owner`` the node receiving push ``sid`` if nobody else holds
        it, or if node ``dead`` (known to be gone) still does: (claimed, the
        row as it is now; None if there is none)."""
        now = self.clock()
        s = t.streams.c
        free = self._free_for(owner, now)
        if dead:
            free = sa.or_(free, s.owner == dead)
        async with self.engine.begin() as c:
            done = await c.execute(
                t.streams.update()
                .where(s.user_id == user_id, s.sid == sid, free)
                .values(owner=owner, lease=now + lease_for)
            )
            row = (
                await c.execute(sa.select(t.streams).where(s.user_id == user_id, s.sid == sid))
            ).first()
        return bool(done.rowcount), (StreamRow(**row._mapping) if row is not None else None)

    async def start_stream(
        self,
        user_id: int,
        sid: str,
        *,
        name: str,
        size: int,
        mtime: float,
        owner: str,
        lease_for: float,
    ) -> bool:
        """A push from its first byte, received by ``owner``; False if another
        node holds push ``sid`` (its row stays)."""
        now = self.clock()
        s = t.streams.c
        try:
            async with self.engine.begin() as c:
                await c.execute(
                    t.streams.delete().where(
                        s.user_id == user_id, s.sid == sid, self._free_for(owner, now)
                    )
                )
                await c.execute(
                    t.streams.insert().values(
                        user_id=user_id,
                        sid=sid,
                        name=name,
                        size=size,
                        mtime=mtime,
                        checkpoint=0,
                        state=RECEIVING,
                        created=now,
                        updated=now,
                        owner=owner,
                        lease=now + lease_for,
                    )
                )
        except IntegrityError:  # held by another node: its row was not deleted
            return False
        return True

    async def checkpoint_owned(self, user_id: int, sid: str, checkpoint: int, owner: str) -> bool:
        """Record a checkpoint if ``owner`` still receives the push; False if
        another node took it over (this one must stop writing)."""
        s = t.streams.c
        async with self.engine.begin() as c:
            done = await c.execute(
                t.streams.update()
                .where(s.user_id == user_id, s.sid == sid, s.owner == owner)
                .values(checkpoint=checkpoint, updated=self.clock())
            )
        return bool(done.rowcount)

    async def release_stream(self, user_id: int, sid: str, owner: str) -> None:
        """``owner`` no longer receives push ``sid``: any node may resume it."""
        s = t.streams.c
        async with self.engine.begin() as c:
            await c.execute(
                t.streams.update()
                .where(s.user_id == user_id, s.sid == sid, s.owner == owner)
                .values(lease=0.0)
            )
