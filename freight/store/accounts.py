"""Logins and identity keys (a repository of :class:`.db.Database`).

A login (a row of ``tokens``) may be bound to an identity key: the one its
device registered through it, or the key an agent logged in with. Removing
a key ends the logins bound to it; the hub then closes what they hold open.
"""

from __future__ import annotations

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .rows import KeyRow, LoginRow

# Identity keys per account: every Linked frame to a peer of the account
# may list them all, and a frame header holds 64 KiB.
MAX_IDENTITY_KEYS = 16


class Logins(Repository):
    async def login_by_token(self, token_hash: str, now: float) -> LoginRow | None:
        """The account a live token stands for, with ``token_expires`` and
        ``token_key`` (the identity key bound to this login, or "")."""
        q = (
            sa.select(
                t.users,
                t.tokens.c.expires.label("token_expires"),
                t.tokens.c.key.label("token_key"),
            )
            .join(t.tokens, t.tokens.c.user_id == t.users.c.id)
            .where(t.tokens.c.token_hash == token_hash, t.tokens.c.expires > now)
        )
        return await self._first(LoginRow, q)

    async def revoke_token(self, token_hash: str) -> bool:
        async with self.engine.begin() as c:
            res = await c.execute(t.tokens.delete().where(t.tokens.c.token_hash == token_hash))
            return bool(res.rowcount)

    async def purge_tokens(self, now: float) -> int:
        """Forget expired logins; how many went."""
        async with self.engine.begin() as c:
            res = await c.execute(t.tokens.delete().where(t.tokens.c.expires <= now))
            return int(res.rowcount)

    async def list_keys(self, user_id: int) -> list[KeyRow]:
        """An account's identity keys with when they came, newest first."""
        ik = t.identity_keys
        q = sa.select(ik.c.key, ik.c.created).where(ik.c.user_id == user_id)
        return await self._all(KeyRow, q.order_by(ik.c.created.desc(), ik.c.key))

    async def register_key(self, user_id: int, token_hash: str, key: str) -> bool:
        """Add ``key`` to the account (unless known) and bind this login to
        it. False, and nothing changed, if the account has no room left."""
        ik = t.identity_keys
        async with self.engine.begin() as c:
            mine = sa.select(ik.c.key).where(ik.c.user_id == user_id)
            keys = {str(r[0]) for r in (await c.execute(mine)).all()}
            if key not in keys:
                if len(keys) >= MAX_IDENTITY_KEYS:
                    return False
                await c.execute(ik.insert().values(user_id=user_id, key=key, created=self.clock()))
            await c.execute(
                t.tokens.update()
                .where(t.tokens.c.token_hash == token_hash, t.tokens.c.user_id == user_id)
                .values(key=key)
            )
            return True

    async def remove_key(self, user_id: int, key: str) -> list[str] | None:
        """Remove an identity key and end the logins bound to it; their
        token hashes, or None if the account has no such key."""
        ik, tok = t.identity_keys, t.tokens
        async with self.engine.begin() as c:
            res = await c.execute(ik.delete().where(ik.c.user_id == user_id, ik.c.key == key))
            if not res.rowcount:
                return None
            bound = sa.select(tok.c.token_hash).where(tok.c.user_id == user_id, tok.c.key == key)
            hashes = [str(r[0]) for r in (await c.execute(bound)).all()]
            await c.execute(tok.delete().where(tok.c.user_id == user_id, tok.c.key == key))
            return hashes

    async def replace_keys(self, user_id: int, key: str) -> int:
        """Make ``key`` the account's only identity key (an agent's login
        key) and end all its logins; how many logins ended."""
        ik, tok = t.identity_keys, t.tokens
        async with self.engine.begin() as c:
            await c.execute(ik.delete().where(ik.c.user_id == user_id))
            await c.execute(ik.insert().values(user_id=user_id, key=key, created=self.clock()))
            res = await c.execute(tok.delete().where(tok.c.user_id == user_id))
            return int(res.rowcount)
