"""Accounts: who may log in, with which password and role."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .rows import UserRow


class Users(Repository):
    async def user_count(self) -> int:
        return int(await self._scalar(sa.select(sa.func.count()).select_from(t.users)))

    async def add_user(self, name: str, pw_hash: str, role: str) -> int:
        async with self.engine.begin() as c:
            res = await c.execute(
                t.users.insert().values(
                    name=name, pw_hash=pw_hash, role=role, disabled=False, created=self.clock()
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def create_user(self, name: str, pw_hash: str, role: str) -> int | None:
        """Add a user; ``None`` if the name is taken (also under a race)."""
        try:
            return await self.add_user(name, pw_hash, role)
        except sa.exc.IntegrityError:
            return None

    async def user_by_name(self, name: str) -> UserRow | None:
        return await self._first(UserRow, sa.select(t.users).where(t.users.c.name == name))

    async def user_by_id(self, user_id: int) -> UserRow | None:
        return await self._first(UserRow, sa.select(t.users).where(t.users.c.id == user_id))

    async def list_users(
        self, *, after: str | None = None, limit: int | None = None, state: str | None = None
    ) -> list[UserRow]:
        """Accounts by name (those in ``state`` only, if given): all, or a
        page of ``limit`` after the name ``after`` (keyset: the unique name
        index)."""
        q = sa.select(t.users).order_by(t.users.c.name)
        if state is not None:
            q = q.where(t.users.c.state == state)
        if after is not None:
            q = q.where(t.users.c.name > after)
        if limit is not None:
            q = q.limit(limit)
        return await self._all(UserRow, q)

    async def set_password(self, user_id: int, pw_hash: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.users.update().where(t.users.c.id == user_id).values(pw_hash=pw_hash))

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        """Disable or enable an account. Disabling also revokes its tokens,
        so enabling it again needs a fresh login."""
        async with self.engine.begin() as c:
            await c.execute(
                t.users.update().where(t.users.c.id == user_id).values(disabled=disabled)
            )
            if disabled:
                await c.execute(t.tokens.delete().where(t.tokens.c.user_id == user_id))

    async def change_password(self, user_id: int, pw_hash: str, keep_token_hash: str) -> int:
        """Set a new password and revoke the user's other tokens in one
        transaction; returns how many tokens were revoked."""
        async with self.engine.begin() as c:
            await c.execute(t.users.update().where(t.users.c.id == user_id).values(pw_hash=pw_hash))
            return await _delete_tokens_except(c, user_id, keep_token_hash)

    async def delete_tokens_except(self, user_id: int, keep_token_hash: str) -> int:
        """Revoke all of a user's tokens but one; returns how many went."""
        async with self.engine.begin() as c:
            return await _delete_tokens_except(c, user_id, keep_token_hash)

    async def add_token(self, token_hash: str, user_id: int, expires: float, key: str = "") -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.tokens.insert().values(
                    token_hash=token_hash,
                    user_id=user_id,
                    created=self.clock(),
                    expires=expires,
                    key=key,
                )
            )

    async def delete_user(self, user_id: int) -> None:
        """Remove an account and every row of it."""
        async with self.engine.begin() as c:
            for table in (t.tokens, t.identity_keys, t.agents, t.commands, t.streams, t.files):
                col = table.c.agent_id if table is t.commands else table.c.user_id
                await c.execute(table.delete().where(col == user_id))
            await c.execute(t.users.delete().where(t.users.c.id == user_id))


async def _delete_tokens_except(c: Any, user_id: int, keep_token_hash: str) -> int:
    res = await c.execute(
        t.tokens.delete().where(
            t.tokens.c.user_id == user_id, t.tokens.c.token_hash != keep_token_hash
        )
    )
    return int(res.rowcount)
