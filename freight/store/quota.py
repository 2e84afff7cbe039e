"""Disk quotas: what an account may hold on the hub (its files and the
unfinished pushes it has started), and what it holds now."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import sqlalchemy as sa

from . import schema as t
from .base import Repository


async def set_quota(db: Repository, user_id: int, quota: int) -> None:
    async with db.engine.begin() as c:
        await c.execute(t.users.update().where(t.users.c.id == user_id).values(quota=quota))


async def quota_of(db: Repository, user_id: int) -> int:
    async with db.engine.connect() as c:
        value = (
            await c.execute(sa.select(t.users.c.quota).where(t.users.c.id == user_id))
        ).scalar()
    return int(value or 0)


async def usage(
    db: Repository,
    user_id: int,
    *,
    but_sid: str = "",
    but_name: str = "",
    but_names: Sequence[str] = (),
) -> int:
    """Bytes the account's files and unfinished pushes take, leaving out the
    push ``but_sid`` (being started again) and the file ``but_name`` (which
    the push will replace), or the files ``but_names`` (a batch replaces)."""
    files = sa.select(sa.func.coalesce(sa.func.sum(t.files.c.size), 0)).where(
        t.files.c.user_id == user_id,
        t.files.c.name.not_in([but_name, *but_names]),
    )
    streams = sa.select(sa.func.coalesce(sa.func.sum(t.streams.c.size), 0)).where(
        t.streams.c.user_id == user_id, t.streams.c.sid != but_sid
    )
    async with db.engine.connect() as c:
        return int((await c.execute(files)).scalar_one()) + int(
            (await c.execute(streams)).scalar_one()
        )


async def usage_by_user(db: Repository, user_ids: Collection[int] | None = None) -> dict[int, int]:
    """Per account id (of ``user_ids``, or every account), the bytes its
    files and unfinished pushes take."""
    out: dict[int, int] = {}
    async with db.engine.connect() as c:
        for table in (t.files, t.streams):
            q = sa.select(table.c.user_id, sa.func.sum(table.c.size)).group_by(table.c.user_id)
            if user_ids is not None:
                q = q.where(table.c.user_id.in_(list(user_ids)))
            for user_id, size in (await c.execute(q)).all():
                out[int(user_id)] = out.get(int(user_id), 0) + int(size or 0)
    return out
