"""The console at more accounts than one page holds, against a real hub
process over real TLS: the Agents and Users tables show 100 rows a page
(keyset by name, ``?after=NAME``) with links that lead on, and the
dashboard counts agents online and in all without listing them."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator

import pytest

from freight.store import DataLayout
from tests.consolesupport import Browser
from tests.support import Hub

AGENTS = 250  # two full pages and a half
USERS = 150


@pytest.fixture(scope="module")
def seeded(shared_hub: Hub) -> Iterator[Hub]:
    """The shared hub with AGENTS agent accounts (pg-00000...) and USERS
    user accounts (pu-00000...) written into its database as it runs."""
    now = time.time()
    con = sqlite3.connect(DataLayout(shared_hub.data).db_path, timeout=30)
    try:
        with con:
            first = con.execute("SELECT COALESCE(MAX(id), 0) FROM users").fetchone()[0] + 1
            con.executemany(
                "INSERT INTO users (id, name, pw_hash, role, disabled, created, quota) "
                "VALUES (?, ?, '!', ?, 0, ?, 0)",
                [(first + i, f"pg-{i:05d}", "agent", now) for i in range(AGENTS)]
                + [(first + AGENTS + i, f"pu-{i:05d}", "user", now) for i in range(USERS)],
            )
            con.executemany(
                "INSERT INTO agents (user_id, enrolled, last_seen, version, address, cap) "
                "VALUES (?, ?, ?, '0.1.0', '10.0.0.1', 0)",
                [(first + i, now, now) for i in range(AGENTS)],
            )
    finally:
        con.close()
    yield shared_hub


def row_ids(html: str, prefix: str) -> list[str]:
    return re.findall(rf'<tr id="{prefix}-([^"]+)">', html)


def link(html: str, cls: str) -> str | None:
    found = re.search(rf'<a class="{cls}" href="([^"]+)">', html)
    return found.group(1).replace("&amp;", "&") if found else None


def table_src(html: str, box: str) -> str:
    found = re.search(rf'<div id="{box}" hx-get="([^"]+)"', html)
    assert found, html
    return found.group(1).replace("&amp;", "&")


async def test_agents_table_pages_by_name(seeded: Hub) -> None:
    async with Browser(seeded) as b:
        await b.login()
        seen: list[str] = []
        page = await b.page("/console/agents")
        for n in (100, 100, AGENTS - 200):
            table = await b.page(table_src(page, "agents"))
            names = row_ids(table, "agent")
            assert len(names) == n, names
            seen += names
            nxt = link(table, "next-page")
            if len(seen) < AGENTS:
                assert nxt == f"/console/agents?after={names[-1]}"
                assert link(table, "first-page") == ("/console/agents" if len(seen) > 100 else None)
                page = await b.page(nxt)  # the link the page shows, as a browser follows it
            else:
                assert nxt is None and link(table, "first-page") == "/console/agents"
        assert seen == [f"pg-{i:05d}" for i in range(AGENTS)]
