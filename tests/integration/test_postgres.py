"""The hub on PostgreSQL instead of the embedded SQLite (skipped without one)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Client, Hub, free_port, random_file, same_bytes

PG_HOST = os.environ.get("FREIGHT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FREIGHT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("FREIGHT_TEST_PG_USER", "postgres")


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = "freight_test_" + secrets.token_hex(4)
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, ImportError) as exc:
        pytest.skip(f"no PostgreSQL reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}")
    except Exception as exc:  # asyncpg's own errors (auth, permissions)
        pytest.skip(f"PostgreSQL at {PG_HOST}:{PG_PORT} refused to create a database: {exc}")
    yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_hub_on_postgresql_pushes_resumes_and_restarts(tmp_path: Path, pg_database: str) -> None:
    hub = Hub(tmp_path / "hub", extra=["--database-url", pg_database]).start()
    try:
        client = Client(tmp_path / "c", hub)
        client.login()
        src = random_file(tmp_path / "pg.bin", 5 * 1024 * 1024 + 3)
        client.run("push", str(src), "--quiet")
        # State lives in PostgreSQL: a restarted hub still knows the file.
        hub.stop()
        hub.start()
        listing = json.loads(client.run("ls", "--json").stdout)
        assert [(f["name"], f["size"]) for f in listing] == [("pg.bin", src.stat().st_size)]
        client.run("pull", "pg.bin", str(tmp_path / "back.bin"))
        assert same_bytes(src, tmp_path / "back.bin")
        kinds = {e["kind"] for e in json.loads(client.run("admin", "events", "--json").stdout)}
        assert {"login", "stream_start", "stream_end", "hub_start"} <= kinds
    finally:
        hub.stop()


def test_registration_and_approvals_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    """Migration 0011 on PostgreSQL: a registration waits, is approved and
    logs in; the last enabled admin keeps its role; an application name is
    recorded and decided."""
    hub = Hub(
        tmp_path / "hub", extra=["--database-url", pg_database, "--registration", "approval"]
    ).start()
    try:
        admin = Client(tmp_path / "admin", hub)
        admin.login()
        dora = Client(tmp_path / "dora", hub)
        password = "doras-password"
        res = dora.run(
            "register", hub.url, "--user", "dora", "--password-stdin",
            "--fingerprint", hub.fingerprint, input=password + "\n",
        )  # fmt: skip
        assert "waits for an administrator's approval" in res.stderr
        waiting = dora.run(
            "login", hub.url, "--user", "dora", "--password-stdin",
            "--fingerprint", hub.fingerprint, input=password + "\n", check=False,
        )  # fmt: skip
        assert waiting.returncode == 3 and "waits for an administrator" in waiting.stderr
        assert "dora" in admin.run("users", "pending").stdout
        admin.run("users", "approve", "dora")
        assert "as dora (user)" in dora.login(user="dora", password=password).stderr
        last = admin.run("users", "role", "admin", "user", check=False)
        assert last.returncode == 7 and "last enabled admin" in last.stderr
        admin.run("apps", "refuse", "pg-app")
        assert '"state": "refused"' in admin.run("apps", "ls", "--json").stdout
    finally:
        hub.stop()


def test_a_database_the_hub_cannot_open_is_one_line_that_says_what_to_check(
    tmp_path: Path,
) -> None:
    """Nothing listens at the address (no PostgreSQL needed): the hub says so
    in one line with the address (password hidden) and what to check, and
    exits 2, rather than printing the driver's traceback."""
    port = free_port()
    url = f"postgresql+asyncpg://freight:s3cret@127.0.0.1:{port}/freight"
    res = Hub(tmp_path / "hub", extra=["--database-url", url]).run_to_exit()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"cannot open the hub's database at 127.0.0.1:{port}/freight" in res.stderr
    assert "s3cret" not in res.stderr
    assert "check --database-url" in res.stderr
