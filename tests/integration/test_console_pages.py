"""The console's pages against a real hub process over real TLS, driven
as the browser drives them (the session cookie, the page's CSRF token,
htmx's JSON bodies): live connections and Kill, users, agents with
enrolment tokens and commands, collection and the bandwidth budget;
ordinary users get the admin-only message; hostile values are escaped."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from freight.protocol import messages as m
from freight.protocol.frames import encode_frame
from tests.agentsupport import enroll
from tests.authsupport import rest
from tests.consolesupport import ADMIN_ONLY, Browser, inline_code
from tests.hostile import RawAgent, control_ws, recv_frame, token_of
from tests.relaysupport import BOB_PASSWORD, FAST_RELAY, fast, sdk
from tests.support import Client, Hub

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)


def cells(html: str, row_id: str) -> list[str]:
    """The text of each cell of the table row ``row_id``."""
    row = re.search(rf'<tr id="{re.escape(row_id)}">(.*?)</tr>', html, re.S)
    assert row, f"no row {row_id} in:\n{html[:3000]}"
    return [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    ]


# --- connections --------------------------------------------------------------------


@pytest.mark.usefixtures("fast_env")
async def test_connections_table_and_kill(shared_hub: Hub, admin: Client, bob: Client) -> None:
    async with sdk(admin) as ca, sdk(bob) as cb:
        listener = await cb.listen("console-kill")
        a, c = await asyncio.wait_for(
            asyncio.gather(ca.connect("bob", "console-kill", timeout=10), listener.accept()), 10
        )
        await c.wait_established(10)
        await a.send(b"y" * 5000)
        assert await asyncio.wait_for(c.recv(), 10) == b"y" * 5000
        async with Browser(shared_hub) as b, Browser(shared_hub) as u:
            await b.login()
            await u.login("bob", BOB_PASSWORD)
            html = await b.page("/console/connections/table")
            assert inline_code(html) == []
            row = cells(html, f"conn-{a.cid}")
            assert row[:5] == ["admin", "bob", "console-kill", row[3], "yes"]
            assert row[3].startswith("relay (dial: ")
            assert re.fullmatch(r"[\d.]+ (B|KiB)", row[5]) and row[5] != "0 B"
            assert row[10] == "connected"
            # The table is the newest 100 and the count (GET ...?limit=100).
            status, every = await b.api("GET", "/v1/admin/connections")
            status, page = await b.api("GET", "/v1/admin/connections?limit=1")
            assert status == 200 and page["total"] == len(every) >= 1
            newest = max(every, key=lambda c: c["started"])
            assert [c["id"] for c in page["connections"]] == [newest["id"]]
            shown = f"{len(every)} live connection" if len(every) <= 100 else "The newest 100 of"
            assert shown in html
            for bad in ("0", "1001", "x"):
                assert (await b.api("GET", f"/v1/admin/connections?limit={bad}"))[0] == 400
            # An ordinary user sees the admin-only message and cannot kill.
            status, _, _ = await u.get("/console/connections")
            assert status == 403
            assert ADMIN_ONLY in (await u.get("/console/connections"))[1]
            assert ADMIN_ONLY in await u.page("/console/connections/table")
            status, body = await u.api("DELETE", f"/v1/admin/connections/{a.cid}")
            assert status == 403 and body["error"]["code"] == "forbidden"
            assert f"conn-{a.cid}" in await b.page("/console/connections/table")
            # Kill needs the page's CSRF token too.
            status, _ = await b.api("DELETE", f"/v1/admin/connections/{a.cid}", csrf="")
            assert status == 403
            status, body = await b.api("DELETE", f"/v1/admin/connections/{a.cid}")
            assert status == 200 and body == {"killed": a.cid}
            await asyncio.wait_for(a.wait_closed(), 10)
            assert f"conn-{a.cid}" not in await b.page("/console/connections/table")


# --- users ----------------------------------------------------------------------------


async def test_users_page_creates_disables_and_enables(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        html = await b.page("/console/users")
        assert 'hx-post="/v1/users"' in html and 'name="admin:bool"' in html
        # What the form sends (json-enc): name, password, admin as a boolean.
        status, body = await b.api(
            "POST", "/v1/users", {"name": "frank", "password": "franks-password", "admin": False}
        )
        assert status == 201, body
        table = await b.page("/console/users/table")
        assert cells(table, "user-frank")[:3] == ["frank", "user", "enabled"]
        assert 'hx-post="/v1/users/frank/disable"' in table
        assert "/v1/users/admin/disable" not in table  # no button against oneself
        status, _ = await b.api("POST", "/v1/users/frank/disable")
        assert status == 200
        table = await b.page("/console/users/table")
        assert cells(table, "user-frank")[2] == "disabled"
        assert 'hx-post="/v1/users/frank/enable"' in table
        async with Browser(shared_hub) as f:
            status, _, text = await f.login("frank", "franks-password")
            assert status == 401 and "wrong user name or password" in text
        status, _ = await b.api("POST", "/v1/users/frank/enable")
        assert status == 200
        async with Browser(shared_hub) as f:
            status, _, _ = await f.login("frank", "franks-password")
            assert status == 303
            status, text, _ = await f.get("/console/users")
            assert status == 403 and ADMIN_ONLY in text
            assert ADMIN_ONLY in await f.page("/console/users/table")
            status, _ = await f.api(
                "POST", "/v1/users", {"name": "frank2", "password": "franks-password"}
            )
            assert status == 403


# --- agents ------------------------------------------------------------------------------


def test_agents_tokens_commands_and_hostile_versions(
    shared_hub: Hub, admin: Client, tmp_path: Path
) -> None:
    async def create_token() -> str:
        async with Browser(shared_hub) as b:
            await b.login()
            status, html, _ = await b.htmx(
                "POST", "/console/agents/tokens", {"name": "lab-9", "ttl": 3600}
            )
            assert status == 200
            token = re.search(r'<code id="new-token">([A-Za-z0-9_-]+)</code>', html)
            assert token, html
            assert 'data-copy="#new-token"' in html
            tokens = await b.page("/console/agents/tokens")
            assert "lab-9" in tokens and "open" in tokens
            assert token.group(1) not in tokens  # shown once, never listed
            # A second token for a name that is taken: the API's message.
            status, html, _ = await b.htmx(
                "POST", "/console/agents/tokens", {"name": "admin", "ttl": 3600}
            )
            assert "the name &#39;admin&#39; is already taken on this hub" in html
            return token.group(1)

    token = asyncio.run(create_token())
    client = fast(Client(tmp_path / "config", shared_hub))
    enroll(client, token, tmp_path)  # the token the console showed enrols the agent
    raw = RawAgent(shared_hub, client.config)

    async def drive() -> None:
        session, ws = await control_ws(shared_hub, await raw.token())
        try:
            await ws.send_bytes(encode_frame(m.Hello(version=1, agent="freight-agent/" + HOSTILE)))
            assert isinstance(await recv_frame(ws), m.Welcome)
            async with Browser(shared_hub) as b:
                await b.login()
                deadline = asyncio.get_running_loop().time() + 10
                while True:
                    table = await b.page("/console/agents/table")
                    if "lab-9" in table and "online" in cells(table, "agent-lab-9")[1]:
                        break
                    assert asyncio.get_running_loop().time() < deadline, table
                    await asyncio.sleep(0.1)
                row = cells(table, "agent-lab-9")
                assert row[3] == "freight-agent/" + ESCAPED and HOSTILE not in table
                assert inline_code(table) == []
                # A command queued through the page's form (json-enc body).
                status, html, _ = await b.htmx(
                    "POST", "/console/agents/lab-9/commands", {"kind": "ping"}
                )
                assert status == 200
                found = re.search(r"Command (\d+) on <strong>lab-9</strong>", html)
                assert found, html
                # The agent here is driven by hand: it answers the command.
                frame = await recv_frame(ws)
                assert isinstance(frame, m.Command) and frame.kind == "ping"
                await ws.send_bytes(
                    encode_frame(
                        m.CommandResult(id=frame.id, ok=True, result=json.dumps({"pong": HOSTILE}))
                    )
                )
                answer = await b.page(f"/console/agents/commands/{found.group(1)}?agent=lab-9")
                assert '<span class="state">done</span>' in answer, answer
                assert "pong" in answer and HOSTILE not in answer
                assert "hx-get" not in answer  # finished: no further polling
        finally:
            await ws.close()
            await session.close()

    asyncio.run(drive())


# --- collection and bandwidth -----------------------------------------------------------


@pytest.mark.usefixtures("bob")
async def test_collection_page_shows_policies_and_totals(shared_hub: Hub, admin: Client) -> None:
    status, body = rest(
        shared_hub,
        "PUT",
        "/v1/collect/policies/photos",
        {"agents": "lab-*", "include": ["**/*.jpg", HOSTILE], "every": 600},
        token=token_of(admin),
    )
    assert status == 200, body
    async with Browser(shared_hub) as b:
        await b.login()
        html = await b.page("/console/collection/content")
        assert "photos" in html and "lab-*" in html and "10m 0s" in html
        assert HOSTILE not in html and ESCAPED in html
        assert re.search(r'id="unique-files">\d+<', html)
        assert inline_code(html) == []
    async with Browser(shared_hub) as u:
        await u.login("bob", BOB_PASSWORD)
        status, text, _ = await u.get("/console/collection")
        assert status == 403 and ADMIN_ONLY in text


@pytest.mark.usefixtures("bob")
async def test_bandwidth_page_shows_and_changes_the_budget(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        html = await b.page("/console/bandwidth")
        assert 'hx-put="/v1/admin/bandwidth"' in html
        status, body = await b.api("PUT", "/v1/admin/bandwidth", {"budget": "00:00,10M 23:59,off"})
        assert status == 200 and body["budget"] == "00:00,10M 23:59,off"
        status_html = await b.page("/console/bandwidth/status")
        assert 'id="budget-spec">00:00,10M 23:59,off<' in status_html
        assert re.search(r"<td>00:00</td><td>10.0 MiB/s</td>", status_html)
        assert re.search(r"<td>23:59</td><td>unlimited</td>", status_html)
        status, body = await b.api("PUT", "/v1/admin/bandwidth", {"budget": "bogus"})
        assert status == 400 and "not a size" in body["error"]["message"]
        status, _ = await b.api("PUT", "/v1/admin/bandwidth", {"budget": "off"})
        assert status == 200
    async with Browser(shared_hub) as u:
        await u.login("bob", BOB_PASSWORD)
        html = await u.page("/console/bandwidth")  # users see it, without the form
        assert "hx-put" not in html
        assert 'id="budget-now">unlimited<' in await u.page("/console/bandwidth/status")
        status, _ = await u.api("PUT", "/v1/admin/bandwidth", {"budget": "1M"})
        assert status == 403
