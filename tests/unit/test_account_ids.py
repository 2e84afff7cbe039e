"""The accounts migration on a real SQLite database that already holds
accounts: every row survives the rebuild of ``users`` (none is deleted by a
cascading foreign key), and afterwards a deleted account's id is never
handed out again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from freight.store.db import MIGRATIONS, Database


def upgrade_to(path: Path, revision: str) -> None:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_migration_keeps_rows_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "freight.db"
    upgrade_to(path, "0005")
    now = time.time()
    con = sqlite3.connect(path)
    with con:
        for i, name in enumerate(("admin", "ann", "lab"), start=1):
            role = "agent" if name == "lab" else "user"
            con.execute(
                "INSERT INTO users (id, name, pw_hash, role, disabled, created) "
                "VALUES (?, ?, 'h', ?, 0, ?)",
                (i, name, role, now),
            )
            con.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", (f"tok{i}", i, now, now + 3600))
            con.execute("INSERT INTO identity_keys VALUES (?, ?, ?)", (i, f"{i:064x}", now))
        con.execute("INSERT INTO agents (user_id, enrolled) VALUES (3, ?)", (now,))
    con.close()

    async def go() -> tuple[int, int]:
        db = Database.sqlite(path)
        try:
            await db.migrate()
            await db.delete_user(3)  # the largest id
            new = await db.add_user("bob", "h", "user")
            async with db.engine.connect() as c:
                fk = (await c.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
            return new, int(fk)
        finally:
            await db.close()

    new_id, foreign_keys = asyncio.run(go())
    assert new_id == 4 and foreign_keys == 1
    con = sqlite3.connect(path)
    try:
        (ddl,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'users'").fetchone()
        assert "AUTOINCREMENT" in ddl
        assert con.execute("SELECT name FROM users ORDER BY id").fetchall() == [
            ("admin",),
            ("ann",),
            ("bob",),
        ]
        # The rows of the other accounts survived the rebuild.
        assert con.execute("SELECT token_hash, key FROM tokens ORDER BY 1").fetchall() == [
            ("tok1", ""),
            ("tok2", ""),
        ]
        assert [r[0] for r in con.execute("SELECT user_id FROM identity_keys")] == [1, 2]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        # The name stays unique after the rebuild.
        try:
            con.execute("INSERT INTO users (name, pw_hash, role, disabled, created) "
                        "VALUES ('ann', 'h', 'user', 0, 0)")  # fmt: skip
            raise AssertionError("a second 'ann' was accepted")
        except sqlite3.IntegrityError:
            pass
    finally:
        con.close()
