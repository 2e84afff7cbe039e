"""Pushes under way (``streams``: where each resumes) and the files they
become (``files``)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from . import schema as t
from .base import Repository
from .rows import FileRow, StreamRow

RECEIVING = "receiving"  # the one state a stream row has


class Streams(Repository):
    # --- streams ------------------------------------------------------------

    async def get_stream(self, user_id: int, sid: str) -> StreamRow | None:
        q = sa.select(t.streams).where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
        return await self._first(StreamRow, q)

    async def touch_stream(self, user_id: int, sid: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.streams.update()
                .where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
                .values(updated=self.clock())
            )

    async def delete_stream(self, user_id: int, sid: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.streams.delete().where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
            )

    async def publish(
        self, user_id: int, sid: str, *, name: str, size: int, digest: str, mtime: float
    ) -> None:
        """Record a finished file and drop its stream row in one transaction."""
        async with self.engine.begin() as c:
            await c.execute(
                t.files.delete().where(t.files.c.user_id == user_id, t.files.c.name == name)
            )
            await c.execute(
                t.files.insert().values(
                    user_id=user_id,
                    name=name,
                    size=size,
                    digest=digest,
                    mtime=mtime,
                    created=self.clock(),
                    sid=sid,
                )
            )
            await c.execute(
                t.streams.delete().where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
            )

    async def publish_many(
        self, user_id: int, files: Sequence[tuple[str, int, str, float]]
    ) -> None:
        """Record finished files (name, size, digest, mtime) of one batch in
        one transaction, replacing files of the same names."""
        if not files:
            return
        now = self.clock()
        names = [f[0] for f in files]
        async with self.engine.begin() as c:
            for at in range(0, len(names), 500):  # bound the SQL parameters
                await c.execute(
                    t.files.delete().where(
                        t.files.c.user_id == user_id, t.files.c.name.in_(names[at : at + 500])
                    )
                )
            await c.execute(
                t.files.insert(),
                [
                    {
                        "user_id": user_id,
                        "name": name,
                        "size": size,
                        "digest": digest,
                        "mtime": mtime,
                        "created": now,
                        "sid": "",
                    }
                    for name, size, digest, mtime in files
                ],
            )

    async def stale_streams(self, older_than: float) -> list[StreamRow]:
        return await self._all(
            StreamRow, sa.select(t.streams).where(t.streams.c.updated < older_than)
        )

    async def active_streams(self) -> list[StreamRow]:
        return await self._all(StreamRow, sa.select(t.streams))

    async def active_stream_count(self) -> int:
        return int(await self._scalar(sa.select(sa.func.count()).select_from(t.streams)))

    # --- files ------------------------------------------------------------------

    async def list_files(self, user_id: int) -> list[FileRow]:
        q = sa.select(t.files).where(t.files.c.user_id == user_id).order_by(t.files.c.name)
        return await self._all(FileRow, q)

    async def get_file(self, user_id: int, name: str) -> FileRow | None:
        q = sa.select(t.files).where(t.files.c.user_id == user_id, t.files.c.name == name)
        return await self._first(FileRow, q)

    async def files_named(self, user_id: int, names: Sequence[str]) -> dict[str, FileRow]:
        """The account's files of these names (at most a batch's), by name."""
        q = sa.select(t.files).where(t.files.c.user_id == user_id, t.files.c.name.in_(names))
        return {row.name: row for row in await self._all(FileRow, q)}

    async def file_by_sid(self, user_id: int, sid: str) -> FileRow | None:
        q = sa.select(t.files).where(t.files.c.user_id == user_id, t.files.c.sid == sid)
        return await self._first(FileRow, q)

    async def delete_file(self, user_id: int, name: str) -> bool:
        async with self.engine.begin() as c:
            res = await c.execute(
                t.files.delete().where(t.files.c.user_id == user_id, t.files.c.name == name)
            )
            return bool(res.rowcount)

    async def referenced_digests(self, digests: Sequence[str]) -> set[str]:
        """Which of ``digests`` a stored file or collected content names
        (a bucket's content nothing names may be removed)."""
        found: set[str] = set()
        async with self.engine.connect() as c:
            for at in range(0, len(digests), 500):  # bound the SQL parameters
                part = list(digests[at : at + 500])
                for q in (
                    sa.select(t.files.c.digest).where(t.files.c.digest.in_(part)),
                    sa.select(t.content.c.digest).where(
                        t.content.c.digest.in_(part), t.content.c.state == "stored"
                    ),
                ):
                    found.update(str(d) for d in (await c.execute(q)).scalars())
        return found
