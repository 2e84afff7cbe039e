"""The console at more accounts than one page holds, against a real hub
process over real TLS: the Agents and Users tables show 100 rows a page
(keyset by name, ``?after=NAME``) with links that lead on, the dashboard
counts agents online and in all without listing them, and an agent
attaching shows online without a reload."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from freight.protocol import messages as m
from freight.protocol.frames import encode_frame
from freight.store import DataLayout
from tests.agentsupport import enroll
from tests.consolesupport import Browser, EventStream
from tests.hostile import RawAgent, control_ws, recv_frame
from tests.support import Client, Hub

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
        status, every = await b.api("GET", "/v1/agents")  # the unpaged form stays
        assert status == 200
        names = [a["name"] for a in every]
        assert len(names) >= AGENTS and names == sorted(names)
        seen: list[str] = []
        page = await b.page("/console/agents")
        while True:
            table = await b.page(table_src(page, "agents"))
            rows = row_ids(table, "agent")
            assert len(rows) == min(100, len(names) - len(seen)), rows
            assert link(table, "first-page") == ("/console/agents" if seen else None)
            seen += rows
            nxt = link(table, "next-page")
            if nxt is None:
                break
            assert nxt == f"/console/agents?after={rows[-1]}"
            page = await b.page(nxt)  # the link the page shows, as a browser follows it
        assert seen == names


async def test_agents_filtered_by_the_start_of_their_names(seeded: Hub) -> None:
    async with Browser(seeded) as b:
        await b.login()
        status, body = await b.api("GET", "/v1/agents?limit=100&prefix=pg-002")
        assert status == 200 and body["next"] is None
        assert [a["name"] for a in body["agents"]] == [f"pg-{i:05d}" for i in range(200, AGENTS)]
        status, every = await b.api("GET", "/v1/agents?prefix=pg-0012")  # unpaged too
        assert [a["name"] for a in every] == [f"pg-{i:05d}" for i in range(120, 130)]
        for bad in ("%3Cx", "pg%25", "x" * 65):
            status, body = await b.api("GET", f"/v1/agents?limit=5&prefix={bad}")
            assert status == 400 and "prefix" in body["error"]["message"], (bad, body)
        # The page's filter: pages of the matching names, the links keep it.
        page = await b.page("/console/agents?prefix=pg-0")
        assert 'name="prefix" value="pg-0"' in page
        table = await b.page(table_src(page, "agents"))
        rows = row_ids(table, "agent")
        assert rows == [f"pg-{i:05d}" for i in range(100)]
        nxt = link(table, "next-page")
        assert nxt == "/console/agents?prefix=pg-0&after=pg-00099"
        table = await b.page(table_src(await b.page(nxt), "agents"))
        assert row_ids(table, "agent") == [f"pg-{i:05d}" for i in range(100, 200)]
        assert link(table, "first-page") == "/console/agents?prefix=pg-0"
        empty = await b.page("/console/agents/table?prefix=zz")
        assert row_ids(empty, "agent") == [] and "No agents named zz" in empty


async def test_users_table_pages_by_name(seeded: Hub) -> None:
    async with Browser(seeded) as b:
        await b.login()
        status, every = await b.api("GET", "/v1/users")  # the unpaged form stays
        assert status == 200 and isinstance(every, list)
        names = sorted(u["name"] for u in every)
        assert len(names) >= AGENTS + USERS + 1
        seen: list[str] = []
        page = await b.page("/console/users")
        while True:
            table = await b.page(table_src(page, "users"))
            rows = row_ids(table, "user")
            assert len(rows) == min(100, len(names) - len(seen)), rows
            seen += rows
            nxt = link(table, "next-page")
            if nxt is None:
                break
            assert nxt == f"/console/users?after={rows[-1]}"
            page = await b.page(nxt)
        assert seen == names


async def test_users_api_pages_by_name(seeded: Hub) -> None:
    async with Browser(seeded) as b:
        await b.login()
        status, every = await b.api("GET", "/v1/users")
        assert status == 200
        pages: list[dict[str, object]] = []
        after = ""
        while True:
            status, body = await b.api(
                "GET", "/v1/users?limit=150" + (f"&after={after}" if after else "")
            )
            assert status == 200 and set(body) == {"users", "next"}, body
            assert len(body["users"]) <= 150
            pages += body["users"]
            if body["next"] is None:
                break
            assert body["next"] == body["users"][-1]["name"]
            after = body["next"]
        assert pages == every  # the same rows, the same bytes used, in the same order
        for bad in ("limit=0", "limit=1001", "limit=%C2%B9", "after=" + "x" * 65):
            status, body = await b.api("GET", f"/v1/users?{bad}")
            assert status == 400, (bad, body)


def overview_figures(html: str) -> tuple[int, int]:
    found = re.search(r'id="agents-online">(\d+) / (\d+)<', html)
    assert found, html
    return int(found.group(1)), int(found.group(2))


def test_an_agent_attaching_is_online_at_once_and_counted(seeded: Hub, tmp_path: Path) -> None:
    """The dashboard's counts come from GET /v1/admin/overview (COUNT and
    the hub's attachments); an agent attaching or going is a change of the
    live feed (``agents`` within a second) and an event of the log."""

    async def token() -> tuple[int, int, str]:
        async with Browser(seeded) as b:
            await b.login()
            status, body = await b.api("GET", "/v1/agents")
            online = sum(1 for a in body if a["online"])
            assert (online, len(body)) == overview_figures(
                await b.page("/console/dashboard/overview")
            )
            status, made = await b.api("POST", "/v1/agents/tokens", {"name": "pg-live"})
            assert status == 200, made
            return online, len(body), made["token"]

    online, enrolled, secret = asyncio.run(token())
    assert enrolled >= AGENTS
    client = Client(tmp_path / "config", seeded)
    enroll(client, secret, tmp_path)
    raw = RawAgent(seeded, client.config)

    async def attach() -> None:
        session, ws = await control_ws(seeded, await raw.token())
        try:
            async with Browser(seeded) as b:
                await b.login()
                assert overview_figures(await b.page("/console/dashboard/overview")) == (
                    online,
                    enrolled + 1,
                )
                async with b.session.get(b.url("/console/stream")) as r:
                    events = EventStream(r)
                    await ws.send_bytes(encode_frame(m.Hello(version=1, agent="freight-agent/t")))
                    assert isinstance(await recv_frame(ws), m.Welcome)
                    attached = time.monotonic()
                    # Its attaching tells the feed: the Agents table and the
                    # dashboard refetch, and find it online.
                    await events.wait_for("agents", 1.0)
                    assert time.monotonic() - attached < 1.0
                    table = await b.page("/console/agents/table?after=pg-00249")
                    assert '<span class="online">online</span>' in row_of(table, "pg-live")
                    figures = (await b.api("GET", "/v1/admin/overview"))[1]
                    assert figures["agents"] == {"online": online + 1, "total": enrolled + 1}
                    html = await b.page("/console/dashboard/overview")
                    assert overview_figures(html) == (online + 1, enrolled + 1)
                    # And its going: offline, as soon.
                    await ws.close()
                    closed = time.monotonic()
                    await events.wait_for("agents", 1.0)
                    assert time.monotonic() - closed < 1.0
                    table = await b.page("/console/agents/table?after=pg-00249")
                    assert '<span class="offline">offline</span>' in row_of(table, "pg-live")
                    status, found = await b.api("GET", "/v1/admin/events?agent=pg-live&limit=5")
                    assert status == 200, found
                    kinds = [e["kind"] for e in found["events"]]
                    assert kinds[:2] == ["agent_detached", "agent_attached"], kinds
        finally:
            await ws.close()
            await session.close()

    asyncio.run(attach())


def row_of(html: str, name: str) -> str:
    found = re.search(rf'<tr id="agent-{re.escape(name)}">(.*?)</tr>', html, re.S)
    assert found, html[:2000]
    return found.group(1)
