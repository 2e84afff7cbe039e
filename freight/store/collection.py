"""Collection: policies, the catalogue (which agent holds which content
where) and the content the hub holds or wants. Content states follow the
table of :mod:`freight.protocol.commands`; every state change is a
compare-and-set on the states allowed to move there, so a scheduler round
that read a row before another task changed it cannot undo that change."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..protocol.commands import (
    CONTENT_TABLE,
    ContentInput,
    ContentState,
    InvalidTransition,
    content_sources,
    content_target,
)
from . import schema as t
from .base import IN_SLICE, Repository
from .rows import CatalogueRow, CollectedRow, ContentRow, PolicyRow

# Per state, the states the table may move content from into it.
_INTO: dict[ContentState, frozenset[ContentState]] = {}
for (_before, _event), (_action, _after) in CONTENT_TABLE.items():
    _INTO[_after] = _INTO.get(_after, frozenset()) | {_before}


def _names(states: Any) -> list[str]:
    return sorted(s.value for s in states)


class Collection(Repository):
    # --- policies -------------------------------------------------------------

    async def put_policy(self, row: Mapping[str, Any]) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.policies.delete().where(t.policies.c.name == row["name"]))
            await c.execute(t.policies.insert().values(**row, created=self.clock()))

    async def list_policies(self) -> list[PolicyRow]:
        return await self._all(PolicyRow, sa.select(t.policies).order_by(t.policies.c.name))

    async def delete_policy(self, name: str) -> bool:
        async with self.engine.begin() as c:
            res = await c.execute(t.policies.delete().where(t.policies.c.name == name))
            return bool(res.rowcount)

    # --- the catalogue ----------------------------------------------------------

    async def record_offers(
        self, agent_id: int, policy: str, offers: Sequence[Mapping[str, Any]], now: float
    ) -> int:
        """Put offers in the catalogue (a newer offer for a path replaces
        the older one) and mark content not held yet as wanted. Returns how
        many digests became wanted."""
        cat, con = t.catalogue, t.content
        async with self.engine.begin() as c:
            paths = [str(o["path"]) for o in offers]
            for i in range(0, len(paths), IN_SLICE):
                await c.execute(
                    cat.delete().where(
                        cat.c.agent_id == agent_id, cat.c.path.in_(paths[i : i + IN_SLICE])
                    )
                )
            if offers:
                await c.execute(
                    cat.insert(),
                    [
                        {
                            "agent_id": agent_id,
                            "path": str(o["path"]),
                            "policy": policy,
                            "digest": str(o["digest"]),
                            "size": int(o["size"]),
                            "mtime": float(o["mtime"]),
                            "seen": now,
                        }
                        for o in offers
                    ],
                )
            digests = {str(o["digest"]): int(o["size"]) for o in offers}
            known: set[str] = set()
            keys = list(digests)
            for i in range(0, len(keys), IN_SLICE):
                q = sa.select(con.c.digest).where(con.c.digest.in_(keys[i : i + IN_SLICE]))
                known.update(str(r[0]) for r in (await c.execute(q)).all())
            new = [d for d in keys if d not in known]
            # Content given up on (failed, or superseded when no path held it)
            # is wanted again when someone offers it anew.
            revived = [d for d in keys if d in known]
            revive = ContentInput.REVIVE
            for i in range(0, len(revived), IN_SLICE):
                await c.execute(
                    con.update()
                    .where(
                        con.c.digest.in_(revived[i : i + IN_SLICE]),
                        con.c.state.in_(_names(content_sources(revive))),
                    )
                    .values(state=content_target(revive).value, attempts=0, updated=now)
                )
            if new:
                await c.execute(
                    con.insert(),
                    [
                        {
                            "digest": d,
                            "size": digests[d],
                            "state": ContentState.WANTED.value,
                            "source": 0,
                            "command_id": 0,
                            "issued": 0.0,
                            "attempts": 0,
                            "received": 0,
                            "created": now,
                            "updated": now,
                        }
                        for d in new
                    ],
                )
            return len(new)

    async def forget_paths(self, agent_id: int, paths: list[str]) -> None:
        async with self.engine.begin() as c:
            for i in range(0, len(paths), IN_SLICE):
                await c.execute(
                    t.catalogue.delete().where(
                        t.catalogue.c.agent_id == agent_id,
                        t.catalogue.c.path.in_(paths[i : i + IN_SLICE]),
                    )
                )

    async def forget_holder(self, agent_id: int, path: str, digest: str) -> None:
        """This agent's ``path`` no longer holds ``digest`` (a newer offer
        for the path is kept)."""
        async with self.engine.begin() as c:
            await c.execute(
                t.catalogue.delete().where(
                    t.catalogue.c.agent_id == agent_id,
                    t.catalogue.c.path == path,
                    t.catalogue.c.digest == digest,
                )
            )

    async def holders(self, digest: str) -> list[CatalogueRow]:
        return await self._all(
            CatalogueRow, sa.select(t.catalogue).where(t.catalogue.c.digest == digest)
        )

    async def collected(self, policy: str | None = None) -> list[CollectedRow]:
        q = (
            sa.select(t.catalogue, t.users.c.name.label("agent"), t.content.c.state)
            .join(t.users, t.users.c.id == t.catalogue.c.agent_id)
            .join(t.content, t.content.c.digest == t.catalogue.c.digest)
            .order_by(t.catalogue.c.digest, t.users.c.name, t.catalogue.c.path)
        )
        if policy:
            q = q.where(t.catalogue.c.policy == policy)
        return await self._all(CollectedRow, q)

    # --- content --------------------------------------------------------------------

    async def content_in_state(self, state: str, limit: int = 1000) -> list[ContentRow]:
        q = (
            sa.select(t.content)
            .where(t.content.c.state == ContentState(state).value)
            .order_by(t.content.c.created)
            .limit(limit)
        )
        return await self._all(ContentRow, q)

    async def get_content(self, digest: str) -> ContentRow | None:
        return await self._first(
            ContentRow, sa.select(t.content).where(t.content.c.digest == digest)
        )

    async def content_by_command(self, command_id: int) -> ContentRow | None:
        return await self._first(
            ContentRow, sa.select(t.content).where(t.content.c.command_id == command_id)
        )

    async def update_content(
        self, digest: str, *, state: str | None = None, was: str | None = None, **values: Any
    ) -> bool:
        """Change content's columns; with ``state``, only if the table allows
        a move into it from the state the content is in now (from ``was``
        alone, if given). False, and nothing changed, if it does not."""
        con = t.content
        where = [con.c.digest == digest]
        if state is not None:
            target = ContentState(state)
            sources = _INTO.get(target, frozenset())
            if was is not None:
                if ContentState(was) not in sources:
                    raise InvalidTransition(f"content never moves from {was} to {state}")
                sources = frozenset({ContentState(was)})
            where.append(con.c.state.in_(_names(sources)))
            values["state"] = target.value
        async with self.engine.begin() as c:
            res = await c.execute(con.update().where(*where).values(**values, updated=self.clock()))
            return bool(res.rowcount == 1)

    async def claim_upload(self, command_id: int, agent_id: int) -> ContentRow | None:
        """Take the issued content of an upload command for finishing, once
        and only for the agent it was asked of: of two callers racing (the
        agent's answer, the restart check), only one gets the row."""
        con = t.content
        claim = ContentInput.CLAIM
        async with self.engine.begin() as c:
            res = await c.execute(
                con.update()
                .where(
                    con.c.command_id == command_id,
                    con.c.state.in_(_names(content_sources(claim))),
                    con.c.source == agent_id,
                )
                .values(state=content_target(claim).value, updated=self.clock())
            )
            if res.rowcount != 1:
                return None
            row = (await c.execute(sa.select(con).where(con.c.command_id == command_id))).first()
            return ContentRow(**row._mapping) if row else None

    async def collection_stats(self) -> dict[str, int]:
        con = t.content
        async with self.engine.connect() as c:
            rows = (
                await c.execute(
                    sa.select(
                        con.c.state,
                        sa.func.count(),
                        sa.func.coalesce(sa.func.sum(con.c.size), 0),
                        sa.func.coalesce(sa.func.sum(con.c.received), 0),
                    ).group_by(con.c.state)
                )
            ).all()
        by = {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
        stored = by.get(ContentState.STORED, (0, 0, 0))
        return {
            "unique_files": stored[0],
            "unique_bytes": stored[1],
            "received_bytes": sum(v[2] for v in by.values()),
            "pending": by.get(ContentState.WANTED, (0, 0, 0))[0]
            + by.get(ContentState.ISSUED, (0, 0, 0))[0],
            "failed": by.get(ContentState.FAILED, (0, 0, 0))[0],
        }
