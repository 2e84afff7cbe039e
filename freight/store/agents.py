"""Agents: their one-time enrolment tokens and what the hub knows of each
(an account with role ``agent``)."""

from __future__ import annotations

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .rows import AgentRow, EnrolTokenRow


class Agents(Repository):
    async def add_enrol_token(self, token_hash: str, name: str, expires: float) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.enrol_tokens.insert().values(
                    token_hash=token_hash,
                    name=name,
                    created=self.clock(),
                    expires=expires,
                    used=False,
                    revoked=False,
                )
            )

    async def list_enrol_tokens(self) -> list[EnrolTokenRow]:
        q = sa.select(t.enrol_tokens).order_by(t.enrol_tokens.c.created)
        return await self._all(EnrolTokenRow, q)

    async def revoke_enrol_tokens(self, name: str) -> int:
        async with self.engine.begin() as c:
            res = await c.execute(
                t.enrol_tokens.update()
                .where(t.enrol_tokens.c.name == name, t.enrol_tokens.c.used.is_(False))
                .values(revoked=True)
            )
            return int(res.rowcount)

    async def enrol_agent(
        self, token_hash: str, key: str, now: float
    ) -> tuple[str, int] | tuple[None, str]:
        """Use a token once and create its agent account with ``key``.
        Returns (name, user id), or (None, why) if refused."""
        et = t.enrol_tokens
        async with self.engine.begin() as c:
            row = (await c.execute(sa.select(et).where(et.c.token_hash == token_hash))).first()
            if row is None:
                return None, "unknown enrolment token"
            if row.revoked:
                return None, "this enrolment token was revoked"
            if row.used:
                return None, "this enrolment token was already used"
            if row.expires < now:
                return None, "this enrolment token has expired"
            taken = (
                await c.execute(sa.select(t.users.c.id).where(t.users.c.name == row.name))
            ).first()
            if taken is not None:
                return None, f"the name {row.name!r} is already taken on this hub"
            await c.execute(et.update().where(et.c.token_hash == token_hash).values(used=True))
            res = await c.execute(
                t.users.insert().values(
                    name=row.name, pw_hash="!", role="agent", disabled=False, created=now
                )
            )
            user_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            await c.execute(t.agents.insert().values(user_id=user_id, enrolled=now))
            await c.execute(t.identity_keys.insert().values(user_id=user_id, key=key, created=now))
            return str(row.name), user_id

    async def list_agents(
        self, *, after: str | None = None, limit: int | None = None, prefix: str = ""
    ) -> list[AgentRow]:
        """Agents by name: all, or a page of ``limit`` after the name
        ``after`` (keyset: the name index, however many agents there are);
        ``prefix``: only names that start with it (a range of the name index
        on SQLite, whose order is by code point; compared exactly on
        PostgreSQL, whose collation may order otherwise)."""
        name = t.users.c.name
        q = (
            sa.select(t.users.c.id, name, t.users.c.disabled, t.agents)
            .join(t.agents, t.agents.c.user_id == t.users.c.id)
            .order_by(name)
        )
        if prefix:
            q = q.where(sa.func.substr(name, 1, len(prefix)) == prefix)
            if self.engine.dialect.name == "sqlite":  # names are ASCII below "~"
                q = q.where(name >= prefix, name < prefix + "~")
        if after is not None:
            q = q.where(t.users.c.name > after)
        if limit is not None:
            q = q.limit(limit)
        return await self._all(AgentRow, q)

    async def agent_count(self) -> int:
        """How many agents are enrolled (one COUNT, never the list)."""
        return int(await self._scalar(sa.select(sa.func.count()).select_from(t.agents)))

    async def touch_agent(self, user_id: int, version: str, address: str, node: str = "") -> None:
        """The agent attached (to cluster node ``node``)."""
        async with self.engine.begin() as c:
            await c.execute(
                t.agents.update()
                .where(t.agents.c.user_id == user_id)
                .values(
                    last_seen=self.clock(), version=version[:64], address=address[:128], node=node
                )
            )

    async def agent_left(self, user_id: int, node: str) -> None:
        """The agent's command channel on ``node`` went (unless it is attached
        to another node already)."""
        a = t.agents.c
        async with self.engine.begin() as c:
            await c.execute(
                t.agents.update()
                .where(a.user_id == user_id, a.node == node)
                .values(node="", last_seen=self.clock())
            )

    async def set_agent_cap(self, user_id: int, cap: int) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.agents.update().where(t.agents.c.user_id == user_id).values(cap=cap))

    async def agent_cap(self, user_id: int) -> int:
        cap = await self._scalar(sa.select(t.agents.c.cap).where(t.agents.c.user_id == user_id))
        return int(cap or 0)
