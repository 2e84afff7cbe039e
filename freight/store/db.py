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
from .accounts import MAX_IDENTITY_KEYS, AccountQueries

MIGRATIONS = Path(__file__).parent / "migrations"
CODE_QUARANTINE = 86400.0
OPEN_COMMAND_STATES = ("queued", "delivered", "acked")  # not yet answered


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes every
    # commit durable, which a checkpoint promise relies on.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Database(AccountQueries):
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

        sqlite = self.engine.dialect.name == "sqlite"
        async with self.engine.begin() as conn:
            if sqlite:
                # A migration that rebuilds a table drops the old one, which
                # with foreign keys on deletes every row referring to it.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.run_sync(run)
        if sqlite:  # new connections turn foreign keys on again
            await self.engine.dispose()

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

    async def user_by_id(self, user_id: int) -> Mapping[str, Any] | None:
        return await self._first(sa.select(t.users).where(t.users.c.id == user_id))

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

    async def add_token(self, token_hash: str, user_id: int, expires: float, key: str = "") -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.tokens.insert().values(
                    token_hash=token_hash,
                    user_id=user_id,
                    created=time.time(),
                    expires=expires,
                    key=key,
                )
            )

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

    # --- relay: identity keys and one-time codes ------------------------------

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
        now = time.time()
        async with self.engine.begin() as c:
            # An expired number is not handed out again for a day, so that
            # someone running an old code does not reach a new sender.
            await c.execute(t.codes.delete().where(t.codes.c.expires < now - CODE_QUARANTINE))
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

    async def get_code(self, nameplate: str, *, expired: bool = False) -> Mapping[str, Any] | None:
        """The code, if still valid (``expired``: also one past its expiry,
        whose connection may still be rejoined)."""
        q = sa.select(t.codes).where(t.codes.c.nameplate == nameplate)
        if not expired:
            q = q.where(t.codes.c.expires >= time.time())
        return await self._first(q)

    async def count_codes(self, user_id: int) -> int:
        """Codes of ``user_id`` still valid."""
        q = sa.select(sa.func.count()).where(
            t.codes.c.user_id == user_id, t.codes.c.expires >= time.time()
        )
        async with self.engine.connect() as c:
            return int((await c.execute(q)).scalar_one())

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

    # --- agents: enrolment, status, commands ------------------------------------

    async def add_enrol_token(self, token_hash: str, name: str, expires: float) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.enrol_tokens.insert().values(
                    token_hash=token_hash,
                    name=name,
                    created=time.time(),
                    expires=expires,
                    used=False,
                    revoked=False,
                )
            )

    async def list_enrol_tokens(self) -> list[Mapping[str, Any]]:
        q = sa.select(t.enrol_tokens).order_by(t.enrol_tokens.c.created)
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

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
            user_id = int(res.inserted_primary_key[0])
            await c.execute(t.agents.insert().values(user_id=user_id, enrolled=now))
            await c.execute(t.identity_keys.insert().values(user_id=user_id, key=key, created=now))
            return str(row.name), user_id

    async def list_agents(self) -> list[Mapping[str, Any]]:
        q = (
            sa.select(t.users.c.id, t.users.c.name, t.users.c.disabled, t.agents)
            .join(t.agents, t.agents.c.user_id == t.users.c.id)
            .order_by(t.users.c.name)
        )
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

    async def touch_agent(self, user_id: int, version: str, address: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.agents.update()
                .where(t.agents.c.user_id == user_id)
                .values(last_seen=time.time(), version=version[:64], address=address[:128])
            )

    async def set_agent_cap(self, user_id: int, cap: int) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.agents.update().where(t.agents.c.user_id == user_id).values(cap=cap))

    async def agent_cap(self, user_id: int) -> int:
        row = await self._first(sa.select(t.agents.c.cap).where(t.agents.c.user_id == user_id))
        return int(row["cap"]) if row else 0

    async def delete_user(self, user_id: int) -> None:
        async with self.engine.begin() as c:
            for table in (t.tokens, t.identity_keys, t.agents, t.commands, t.streams, t.files):
                col = table.c.agent_id if table is t.commands else table.c.user_id
                await c.execute(table.delete().where(col == user_id))
            await c.execute(t.users.delete().where(t.users.c.id == user_id))

    async def add_command(self, agent_id: int, kind: str, args: str, requested_by: str) -> int:
        now = time.time()
        async with self.engine.begin() as c:
            res = await c.execute(
                t.commands.insert().values(
                    agent_id=agent_id,
                    kind=kind,
                    args=args,
                    state="queued",
                    result="null",
                    requested_by=requested_by,
                    created=now,
                    updated=now,
                )
            )
            return int(res.inserted_primary_key[0])

    async def open_command_counts(self) -> dict[int, int]:
        """Per agent id, how many commands wait for its answer."""
        q = (
            sa.select(t.commands.c.agent_id, sa.func.count())
            .where(t.commands.c.state.in_(OPEN_COMMAND_STATES))
            .group_by(t.commands.c.agent_id)
        )
        async with self.engine.connect() as c:
            return {int(a): int(n) for a, n in (await c.execute(q)).all()}

    async def open_commands(self, agent_id: int) -> list[Mapping[str, Any]]:
        """Commands the agent has not answered yet, oldest first."""
        q = (
            sa.select(t.commands)
            .where(
                t.commands.c.agent_id == agent_id,
                t.commands.c.state.in_(OPEN_COMMAND_STATES),
            )
            .order_by(t.commands.c.id)
        )
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

    async def get_command(self, command_id: int) -> Mapping[str, Any] | None:
        return await self._first(sa.select(t.commands).where(t.commands.c.id == command_id))

    # --- collection ---------------------------------------------------------------

    async def put_policy(self, row: Mapping[str, Any]) -> None:
        async with self.engine.begin() as c:
            await c.execute(t.policies.delete().where(t.policies.c.name == row["name"]))
            await c.execute(t.policies.insert().values(**row, created=time.time()))

    async def list_policies(self) -> list[Mapping[str, Any]]:
        async with self.engine.connect() as c:
            q = sa.select(t.policies).order_by(t.policies.c.name)
            return [r._mapping for r in (await c.execute(q)).all()]

    async def delete_policy(self, name: str) -> bool:
        async with self.engine.begin() as c:
            res = await c.execute(t.policies.delete().where(t.policies.c.name == name))
            return bool(res.rowcount)

    async def record_offers(
        self, agent_id: int, policy: str, offers: list[Mapping[str, Any]], now: float
    ) -> int:
        """Put offers in the catalogue (a newer offer for a path replaces
        the older one) and mark content not held yet as wanted. Returns how
        many digests became wanted."""
        cat, con = t.catalogue, t.content
        async with self.engine.begin() as c:
            paths = [str(o["path"]) for o in offers]
            for i in range(0, len(paths), 500):
                await c.execute(
                    cat.delete().where(
                        cat.c.agent_id == agent_id, cat.c.path.in_(paths[i : i + 500])
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
            for i in range(0, len(keys), 500):
                q = sa.select(con.c.digest).where(con.c.digest.in_(keys[i : i + 500]))
                known.update(str(r[0]) for r in (await c.execute(q)).all())
            new = [d for d in keys if d not in known]
            # Content given up on (failed, or superseded when no path held it)
            # is wanted again when someone offers it anew.
            revived = [d for d in keys if d in known]
            for i in range(0, len(revived), 500):
                await c.execute(
                    con.update()
                    .where(
                        con.c.digest.in_(revived[i : i + 500]),
                        con.c.state.in_(("failed", "superseded")),
                    )
                    .values(state="wanted", attempts=0, updated=now)
                )
            if new:
                await c.execute(
                    con.insert(),
                    [
                        {
                            "digest": d,
                            "size": digests[d],
                            "state": "wanted",
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
            for i in range(0, len(paths), 500):
                await c.execute(
                    t.catalogue.delete().where(
                        t.catalogue.c.agent_id == agent_id,
                        t.catalogue.c.path.in_(paths[i : i + 500]),
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

    async def content_in_state(self, state: str, limit: int = 1000) -> list[Mapping[str, Any]]:
        q = (
            sa.select(t.content)
            .where(t.content.c.state == state)
            .order_by(t.content.c.created)
            .limit(limit)
        )
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

    async def holders(self, digest: str) -> list[Mapping[str, Any]]:
        q = sa.select(t.catalogue).where(t.catalogue.c.digest == digest)
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

    async def update_content(self, digest: str, **values: Any) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                t.content.update()
                .where(t.content.c.digest == digest)
                .values(**values, updated=time.time())
            )

    async def claim_upload(self, command_id: int, agent_id: int) -> Mapping[str, Any] | None:
        """Take the issued content of an upload command for finishing, once
        and only for the agent it was asked of: of two callers racing (the
        agent's answer, the restart check), only one gets the row."""
        con = t.content
        async with self.engine.begin() as c:
            res = await c.execute(
                con.update()
                .where(
                    con.c.command_id == command_id,
                    con.c.state == "issued",
                    con.c.source == agent_id,
                )
                .values(state="finishing", updated=time.time())
            )
            if res.rowcount != 1:
                return None
            row = (await c.execute(sa.select(con).where(con.c.command_id == command_id))).first()
            return row._mapping if row else None

    async def content_by_command(self, command_id: int) -> Mapping[str, Any] | None:
        return await self._first(sa.select(t.content).where(t.content.c.command_id == command_id))

    async def get_content(self, digest: str) -> Mapping[str, Any] | None:
        return await self._first(sa.select(t.content).where(t.content.c.digest == digest))

    async def collected(self, policy: str | None = None) -> list[Mapping[str, Any]]:
        q = (
            sa.select(t.catalogue, t.users.c.name.label("agent"), t.content.c.state)
            .join(t.users, t.users.c.id == t.catalogue.c.agent_id)
            .join(t.content, t.content.c.digest == t.catalogue.c.digest)
            .order_by(t.catalogue.c.digest, t.users.c.name, t.catalogue.c.path)
        )
        if policy:
            q = q.where(t.catalogue.c.policy == policy)
        async with self.engine.connect() as c:
            return [r._mapping for r in (await c.execute(q)).all()]

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
        stored = by.get("stored", (0, 0, 0))
        return {
            "unique_files": stored[0],
            "unique_bytes": stored[1],
            "received_bytes": sum(v[2] for v in by.values()),
            "pending": by.get("wanted", (0, 0, 0))[0] + by.get("issued", (0, 0, 0))[0],
            "failed": by.get("failed", (0, 0, 0))[0],
        }
