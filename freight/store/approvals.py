"""Self-registration, approvals and roles (a repository of
:class:`.db.Database`): accounts that wait for an admin, the rule that
keeps one enabled admin, and the application names admins approve.

Each check and its change share one transaction: two admins demoting each
other at once cannot both pass the last-admin rule, and a flood of
registrations cannot pass the bound on pending accounts together."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .rows import AppRow, UserRow

ACTIVE, PENDING, REFUSED = "active", "pending", "refused"
ACCOUNT_STATES = (ACTIVE, PENDING, REFUSED)
APPROVED = "approved"
APP_STATES = (PENDING, APPROVED, REFUSED)

Registered = int | Literal["taken", "full"]


class Approvals(Repository):
    async def register_user(
        self, name: str, pw_hash: str, state: str, max_pending: int
    ) -> Registered:
        """Add an ordinary account in ``state`` (active or pending): its id,
        ``"taken"`` if the name is, ``"full"`` if ``max_pending`` accounts
        already wait (for a pending one)."""
        try:
            async with self.engine.begin() as c:
                if state == PENDING and await _count(c, t.users, PENDING) >= max_pending:
                    return "full"
                res = await c.execute(
                    t.users.insert().values(
                        name=name,
                        pw_hash=pw_hash,
                        role="user",
                        disabled=False,
                        created=self.clock(),
                        state=state,
                    )
                )
                return int(res.inserted_primary_key[0])  # type: ignore[index]
        except sa.exc.IntegrityError:
            return "taken"

    async def users_in_state(self, state: str) -> list[UserRow]:
        return await self._all(
            UserRow, sa.select(t.users).where(t.users.c.state == state).order_by(t.users.c.name)
        )

    async def decide_user(self, user_id: int, state: str) -> bool:
        """A pending account becomes ``state`` (active or refused); False if
        it was not pending (decided already)."""
        async with self.engine.begin() as c:
            res = await c.execute(
                t.users.update()
                .where(t.users.c.id == user_id, t.users.c.state == PENDING)
                .values(state=state)
            )
            return bool(res.rowcount)

    async def reset_password(self, user_id: int, pw_hash: str) -> int:
        """Set another account's password and end every login of it; how
        many logins ended."""
        async with self.engine.begin() as c:
            await c.execute(t.users.update().where(t.users.c.id == user_id).values(pw_hash=pw_hash))
            res = await c.execute(t.tokens.delete().where(t.tokens.c.user_id == user_id))
            return int(res.rowcount)

    async def set_role(self, user_id: int, role: str) -> bool:
        """Make an account ``role`` (admin or user); False, and nothing
        changed, if that would leave no enabled active admin."""
        async with self.engine.begin() as c:
            if role != "admin" and await _admins(c) == {user_id}:
                return False
            await c.execute(t.users.update().where(t.users.c.id == user_id).values(role=role))
            return True

    async def disable_unless_last_admin(self, user_id: int) -> bool:
        """Disable an account and revoke its logins; False, and nothing
        changed, if it is the last enabled active admin."""
        async with self.engine.begin() as c:
            if await _admins(c) == {user_id}:
                return False
            await c.execute(t.users.update().where(t.users.c.id == user_id).values(disabled=True))
            await c.execute(t.tokens.delete().where(t.tokens.c.user_id == user_id))
            return True

    # --- applications -----------------------------------------------------------

    async def app_row(self, name: str) -> AppRow | None:
        return await self._first(AppRow, sa.select(t.apps).where(t.apps.c.name == name))

    async def list_apps(self, state: str | None = None, limit: int = 1000) -> list[AppRow]:
        q = sa.select(t.apps).order_by(t.apps.c.name).limit(limit)
        if state is not None:
            q = q.where(t.apps.c.state == state)
        return await self._all(AppRow, q)

    async def request_app(self, name: str, by: str, max_pending: int) -> tuple[str, bool] | None:
        """The state of application ``name`` and whether this request
        recorded it (pending, first asked by ``by``); None if it is unknown
        and ``max_pending`` names already wait."""
        async with self.engine.begin() as c:
            for _ in range(2):  # a racing first request: read what it wrote
                q = sa.select(t.apps.c.state).where(t.apps.c.name == name)
                row = (await c.execute(q)).first()
                if row is not None:
                    return str(row[0]), False
                if await _count(c, t.apps, PENDING) >= max_pending:
                    return None
                try:
                    async with c.begin_nested():
                        await c.execute(
                            t.apps.insert().values(
                                name=name, state=PENDING, requested_by=by, requested=self.clock()
                            )
                        )
                    return PENDING, True
                except sa.exc.IntegrityError:
                    continue
            return None

    async def decide_app(self, name: str, state: str, by: str) -> AppRow:
        """Approve or refuse application ``name`` (recorded if never asked
        for: an admin may decide ahead)."""
        async with self.engine.begin() as c:
            now = self.clock()
            res = await c.execute(
                t.apps.update()
                .where(t.apps.c.name == name)
                .values(state=state, decided_by=by, decided=now)
            )
            if not res.rowcount:
                await c.execute(
                    t.apps.insert().values(
                        name=name,
                        state=state,
                        requested_by=by,
                        requested=now,
                        decided_by=by,
                        decided=now,
                    )
                )
            row = (await c.execute(sa.select(t.apps).where(t.apps.c.name == name))).first()
            assert row is not None
            return AppRow(**row._mapping)


async def _count(c: Any, table: sa.Table, state: str) -> int:
    q = sa.select(sa.func.count()).select_from(table).where(table.c.state == state)
    return int((await c.execute(q)).scalar() or 0)


async def _admins(c: Any) -> set[int]:
    """The enabled active admins, their rows locked until the transaction
    ends (PostgreSQL: a racing demotion waits, then sees this one's outcome;
    SQLite has one writer at a time)."""
    q = (
        sa.select(t.users.c.id)
        .where(
            t.users.c.role == "admin",
            t.users.c.disabled == sa.false(),
            t.users.c.state == ACTIVE,
        )
        .with_for_update()
    )
    return {int(r[0]) for r in (await c.execute(q)).all()}
