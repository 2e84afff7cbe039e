"""Links to stored files (``freight share``, by-reference jobs). A link is
kept by the hash of its token; it names the owner's file and the digest
the file had when the link was made."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from . import schema as t
from .base import Repository
from .rows import LinkRow, LinkView

# Expired or used links are kept this long (their tokens answer "gone",
# not "unknown", and count as no guess), then forgotten.
LINK_KEEP = 86400.0


class Links(Repository):
    async def create_link(
        self,
        token_hash: str,
        *,
        user_id: int,
        name: str,
        size: int,
        digest: str,
        to_id: int | None,
        uses: int,
        expires: float,
    ) -> LinkRow:
        now = self.clock()
        values = {
            "token_hash": token_hash,
            "user_id": user_id,
            "name": name,
            "size": size,
            "digest": digest,
            "to_id": to_id,
            "uses": uses,
            "used": 0,
            "served": 0,
            "created": now,
            "expires": expires,
        }
        async with self.engine.begin() as c:
            await c.execute(t.links.delete().where(t.links.c.expires < now - LINK_KEEP))
            await c.execute(t.links.insert().values(**values))
        return LinkRow(**values)  # type: ignore[arg-type]

    async def count_live_links(self, user_id: int) -> int:
        q = sa.select(sa.func.count()).where(
            t.links.c.user_id == user_id,
            t.links.c.expires >= self.clock(),
            t.links.c.used < t.links.c.uses,
        )
        return int(await self._scalar(q))

    async def get_link(self, token_hash: str) -> LinkRow | None:
        return await self._first(
            LinkRow, sa.select(t.links).where(t.links.c.token_hash == token_hash)
        )

    async def list_links(self, user_id: int) -> list[LinkView]:
        """Links made by ``user_id`` or made for it, newest first (used and
        expired ones while they are kept)."""
        owner = aliased(t.users)
        to = aliased(t.users)
        q = (
            sa.select(t.links, owner.c.name.label("owner"), to.c.name.label("to_name"))
            .join(owner, owner.c.id == t.links.c.user_id)
            .outerjoin(to, to.c.id == t.links.c.to_id)
            .where(sa.or_(t.links.c.user_id == user_id, t.links.c.to_id == user_id))
            .order_by(t.links.c.created.desc())
        )
        return await self._all(LinkView, q)

    async def count_served(self, token_hash: str, sent: int, *, whole: bool) -> None:
        """Bytes a response sent; ``whole``: it reached the end of the file,
        which spends one use."""
        async with self.engine.begin() as c:
            await c.execute(
                t.links.update()
                .where(t.links.c.token_hash == token_hash)
                .values(
                    served=t.links.c.served + sent,
                    used=t.links.c.used + (1 if whole else 0),
                )
            )

    async def revoke_links(self, user_id: int, token_hash: str | None, prefix: str) -> int:
        """Delete the owner's link with this token hash, or whose hash
        starts with ``prefix`` (the id links are listed by); how many."""
        where = t.links.c.user_id == user_id
        if token_hash is not None:
            where = sa.and_(where, t.links.c.token_hash == token_hash)
        else:
            where = sa.and_(where, t.links.c.token_hash.startswith(prefix, autoescape=True))
        async with self.engine.begin() as c:
            res = await c.execute(t.links.delete().where(where))
            return int(res.rowcount)
