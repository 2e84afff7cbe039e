"""What the relay keeps: the identity keys it vouches for, and the
one-time codes of ``freight send`` (their public nameplates; the words
never reach the hub)."""

from __future__ import annotations

import sqlalchemy as sa

from . import schema as t
from .accounts import MAX_IDENTITY_KEYS
from .base import Repository
from .rows import CodeRow

# An expired number is not handed out again for a day, so that someone
# running an old code does not reach a new sender.
CODE_QUARANTINE = 86400.0
# Finished codes an account keeps valid (its owner may offer one again);
# past this the oldest expires early, so no account grows the table.
MAX_FINISHED_CODES = 1024


class RelayKeys(Repository):
    async def identity_keys(self, user_id: int) -> list[str]:
        """The newest keys, never more than an account may register."""
        ik = t.identity_keys
        q = (
            sa.select(ik.c.key)
            .where(ik.c.user_id == user_id)
            .order_by(ik.c.created.desc())
            .limit(MAX_IDENTITY_KEYS)
        )
        async with self.engine.connect() as c:
            return [str(r[0]) for r in (await c.execute(q)).all()]

    async def create_code(self, user_id: int, ttl: float) -> str:
        """Allocate the smallest free nameplate (short codes are easy to say)."""
        now = self.clock()
        async with self.engine.begin() as c:
            await c.execute(t.codes.delete().where(t.codes.c.expires < now - CODE_QUARANTINE))
            await c.execute(_expire_oldest_finished(user_id, now))
            used = {int(r[0]) for r in (await c.execute(sa.select(t.codes.c.nameplate))).all()}
            number = next(n for n in range(1, len(used) + 2) if n not in used)
            await c.execute(
                t.codes.insert().values(
                    nameplate=str(number),
                    user_id=user_id,
                    created=now,
                    expires=now + ttl,
                    failures=0,
                )
            )
            return str(number)

    async def get_code(self, nameplate: str, *, expired: bool = False) -> CodeRow | None:
        """The code, if still valid (``expired``: also one past its expiry,
        whose connection may still be rejoined)."""
        q = sa.select(t.codes).where(t.codes.c.nameplate == nameplate)
        if not expired:
            q = q.where(t.codes.c.expires >= self.clock())
        return await self._first(CodeRow, q)

    async def count_codes(self, user_id: int) -> int:
        """Codes of ``user_id`` still valid and open (no transfer under
        them finished since they were last offered)."""
        q = sa.select(sa.func.count()).where(
            t.codes.c.user_id == user_id,
            t.codes.c.expires >= self.clock(),
            t.codes.c.finished == 0,
        )
        return int(await self._scalar(q))

    async def set_code_finished(self, nameplate: str, finished: bool) -> None:
        """A transfer under the code finished (``True``), or its owner
        offers it again (``False``: open, counted again)."""
        async with self.engine.begin() as c:
            await c.execute(
                t.codes.update()
                .where(t.codes.c.nameplate == nameplate)
                .values(finished=int(finished))
            )

    async def set_code_claim(self, nameplate: str, cid: str, claimant_id: int) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.codes.update()
                .where(t.codes.c.nameplate == nameplate)
                .values(claim_cid=cid, claimant_id=claimant_id)
            )

    async def code_failed(self, nameplate: str) -> int:
        """Count a wrong guess; return the failures so far."""
        async with self.engine.begin() as c:
            await c.execute(
                t.codes.update()
                .where(t.codes.c.nameplate == nameplate)
                .values(failures=t.codes.c.failures + 1)
            )
            row = (
                await c.execute(
                    sa.select(t.codes.c.failures).where(t.codes.c.nameplate == nameplate)
                )
            ).first()
            return int(row[0]) if row else 0

    async def delete_code(self, nameplate: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.codes.delete().where(t.codes.c.nameplate == nameplate))


def _expire_oldest_finished(user_id: int, now: float) -> sa.Update:
    """Expire the account's finished codes beyond the newest
    :data:`MAX_FINISHED_CODES` - 1 (room for the one being created)."""
    c = t.codes.c
    keep = (
        sa.select(c.nameplate)
        .where(c.user_id == user_id, c.finished == 1, c.expires >= now)
        .order_by(c.created.desc())
        .limit(MAX_FINISHED_CODES - 1)
    )
    return (
        t.codes.update()
        .where(
            c.user_id == user_id,
            c.finished == 1,
            c.expires >= now,
            c.nameplate.not_in(keep.scalar_subquery()),
        )
        .values(expires=now - 1)
    )
