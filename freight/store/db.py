"""The hub's database: SQLAlchemy Core (async) on SQLite or PostgreSQL.

All SQL lives here so the rest of the hub speaks in plain method calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import schema as t

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes every
    # commit durable, which a checkpoint promise relies on.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(f"sqlite+aiosqlite:///{path}")

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config(str(MIGRATIONS / "alembic.ini"))
        cfg.set_main_option("script_location", str(MIGRATIONS))

        def run(sync_conn: sa.Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            await conn.run_sync(run)

    async def _first(self, query: Any) -> Mapping[str, Any] | None:
        """The first row of a query as a mapping, or None."""
        async with self.engine.connect() as c:
            row = (await c.execute(query)).first()
            return row._mapping if row else None

    async def close(self) -> None:
        await self.engine.dispose()

    # --- users and tokens -------------------------------------------------

    async def user_count(self) -> int:
        async with self.engine.connect() as c:
            return int(
                (await c.execute(sa.select(sa.func.count()).select_from(t.users))).scalar_one()
            )

    async def add_user(self, name: str, pw_hash: str, role: str) -> int:
        async with self.engine.begin() as c:
            res = await c.execute(
                t.users.insert().values(
                    name=name, pw_hash=pw_hash, role=role, disabled=False, created=time.time()
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def user_by_name(self, name: str) -> Mapping[str, Any] | None:
        return await self._first(sa.select(t.users).where(t.users.c.name == name))

    async def set_password(self, user_id: int, pw_hash: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.users.update().where(t.users.c.id == user_id).values(pw_hash=pw_hash))

    async def create_user(self, name: str, pw_hash: str, role: str) -> int | None:
        """Add a user; ``None`` if the name is taken (also under a race)."""
        try:
            return await self.add_user(name, pw_hash, role)
        except sa.exc.IntegrityError:
            return None

    async def list_users(self) -> list[Mapping[str, Any]]:
        q = sa.select(t.users).order_by(t.users.c.name)
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

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
            return await self._delete_tokens_except(c, user_id, keep_token_hash)

    async def delete_tokens_except(self, user_id: int, keep_token_hash: str) -> int:
        """Revoke all of a user's tokens but one; returns how many went."""
        async with self.engine.begin() as c:
            return await self._delete_tokens_except(c, user_id, keep_token_hash)

    @staticmethod
    async def _delete_tokens_except(c: Any, user_id: int, keep_token_hash: str) -> int:
        res = await c.execute(
            t.tokens.delete().where(
                t.tokens.c.user_id == user_id, t.tokens.c.token_hash != keep_token_hash
            )
        )
        return int(res.rowcount)

    async def add_token(self, token_hash: str, user_id: int, expires: float) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.tokens.insert().values(
                    token_hash=token_hash, user_id=user_id, created=time.time(), expires=expires
                )
            )

    async def user_by_token(self, token_hash: str, now: float) -> Mapping[str, Any] | None:
        q = (
            sa.select(t.users)
            .join(t.tokens, t.tokens.c.user_id == t.users.c.id)
            .where(t.tokens.c.token_hash == token_hash, t.tokens.c.expires > now)
        )
        return await self._first(q)

    # --- streams ------------------------------------------------------------

    async def get_stream(self, user_id: int, sid: str) -> Mapping[str, Any] | None:
        q = sa.select(t.streams).where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
        return await self._first(q)

    async def put_stream(
        self, user_id: int, sid: str, *, name: str, size: int, mtime: float
    ) -> None:
        now = time.time()
        async with self.engine.begin() as c:
            await c.execute(
                t.streams.delete().where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
            )
            await c.execute(
                t.streams.insert().values(
                    user_id=user_id,
                    sid=sid,
                    name=name,
                    size=size,
                    mtime=mtime,
                    checkpoint=0,
                    state="receiving",
                    created=now,
                    updated=now,
                )
            )

    async def set_checkpoint(self, user_id: int, sid: str, checkpoint: int) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.streams.update()
                .where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
                .values(checkpoint=checkpoint, updated=time.time())
            )

    async def touch_stream(self, user_id: int, sid: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.streams.update()
                .where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
                .values(updated=time.time())
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
                    created=time.time(),
                    sid=sid,
                )
            )
            await c.execute(
                t.streams.delete().where(t.streams.c.user_id == user_id, t.streams.c.sid == sid)
            )

    async def stale_streams(self, older_than: float) -> list[Mapping[str, Any]]:
        q = sa.select(t.streams).where(t.streams.c.updated < older_than)
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

    async def active_streams(self) -> list[Mapping[str, Any]]:
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(sa.select(t.streams))).all()]

    # --- files ------------------------------------------------------------------

    async def list_files(self, user_id: int) -> list[Mapping[str, Any]]:
        q = sa.select(t.files).where(t.files.c.user_id == user_id).order_by(t.files.c.name)
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

    async def get_file(self, user_id: int, name: str) -> Mapping[str, Any] | None:
        q = sa.select(t.files).where(t.files.c.user_id == user_id, t.files.c.name == name)
        return await self._first(q)

    async def file_by_sid(self, user_id: int, sid: str) -> Mapping[str, Any] | None:
        q = sa.select(t.files).where(t.files.c.user_id == user_id, t.files.c.sid == sid)
        return await self._first(q)

    async def delete_file(self, user_id: int, name: str) -> bool:
        async with self.engine.begin() as c:
            res = await c.execute(
                t.files.delete().where(t.files.c.user_id == user_id, t.files.c.name == name)
            )
            return bool(res.rowcount)

    # --- events and settings ------------------------------------------------

    async def add_event(self, kind: str, actor: str, detail: Mapping[str, Any]) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.events.insert().values(
                    ts=time.time(), kind=kind, actor=actor, detail=json.dumps(dict(detail))
                )
            )

    async def list_events(self, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = sa.select(t.events).order_by(t.events.c.id.desc()).limit(limit)
        if kind:
            q = q.where(t.events.c.kind == kind)
        async with self.engine.connect() as c:
            rows = (await c.execute(q)).all()
        return [{**r._mapping, "detail": json.loads(r.detail)} for r in rows]

    async def get_setting(self, key: str) -> str | None:
        async with self.engine.connect() as c:
            row = (
                await c.execute(sa.select(t.settings.c.value).where(t.settings.c.key == key))
            ).first()
            return str(row[0]) if row else None

    async def set_setting(self, key: str, value: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.settings.delete().where(t.settings.c.key == key))
            await c.execute(t.settings.insert().values(key=key, value=value))
