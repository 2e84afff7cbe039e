"""The web console's core against a real hub process over real TLS: the
login form and its cookie, CSRF on cookie-authenticated changes, the
security headers and the absence of inline code, admin-only blocks, the
live event stream (timely, coalesced, resumable, bounded) and hostile
values escaped."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from freight.hub.console.stream import COUNTERS
from tests.agentsupport import Agent
from tests.authsupport import rest
from tests.consolesupport import ADMIN_ONLY, CSP, Browser, EventStream, csrf_of, inline_code
from tests.hostile import RawAgent, insecure_ssl, token_of
from tests.relaysupport import FAST_RELAY, sdk
from tests.support import Client, Hub

VERSION = re.escape(__import__("freight").__version__)


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)


@contextlib.asynccontextmanager
async def stream(browser: Browser, last_id: str = "") -> AsyncIterator[tuple[int, EventStream]]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    async with browser.session.get(browser.url("/console/stream"), headers=headers) as r:
        yield r.status, EventStream(r)


def add_user(admin: Client, name: str, password: str = "a-long-password") -> None:
    status, body = rest(
        admin.hub,
        "POST",
        "/v1/users",
        {"name": name, "password": password},
        token=token_of(admin),
    )
    assert status == 201, body


# --- login -------------------------------------------------------------------------


async def test_login_sets_a_strict_session_cookie(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        status, cookie, _ = await b.login()
        assert status == 303
        parts = [p.strip() for p in cookie.split(";")]
        assert re.fullmatch(r"freight_session=[A-Za-z0-9_-]{20,}", parts[0]), cookie
        assert sorted(parts[1:]) == ["HttpOnly", "Path=/", "SameSite=Strict", "Secure"]
        # The cookie is a login token: the /v1 API takes it too.
        status, body = await b.api("GET", "/v1/bandwidth")
        assert status == 200 and "budget" in body


async def test_wrong_password_shows_the_error_and_shares_the_lockout(
    shared_hub: Hub, admin: Client
) -> None:
    add_user(admin, "carol", "carols-password")
    source = "127.0.0.31"  # its own address: the lockout stays with this test
    async with Browser(shared_hub, source) as b:
        for _ in range(4):
            status, cookie, text = await b.login("carol", "wrong-password")
            assert status == 401 and not cookie
            assert "wrong user name or password" in text
        # The fifth failure, through the JSON API, locks the account here.
        status, body = rest(
            shared_hub,
            "POST",
            "/v1/login",
            {"user": "carol", "password": "wrong"},
            source=source,
        )
        assert status == 401, body
        status, cookie, text = await b.login("carol", "carols-password")
        assert status == 429 and not cookie
        assert re.search(r"too many failed logins; try again in \d+ s", text), text
    async with Browser(shared_hub, "127.0.0.32") as elsewhere:
        status, _, _ = await elsewhere.login("carol", "carols-password")
        assert status == 303  # the lockout is of carol at that address only


async def test_pages_need_a_session(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        status, _, headers = await b.get("/")
        assert status == 303 and headers["Location"] == "/console/login"
        status, _, headers = await b.get("/console/dashboard/overview", **{"HX-Request": "true"})
        assert status == 200 and headers["HX-Redirect"] == "/console/login"
        status, _, _ = await b.get("/console/stream")
        assert status == 401
        await b.login()
        html = await b.page("/")
        assert re.search(r'<span class="who">admin <span class="role">\(admin\)', html)
        assert re.search(rf"<footer>Freight {VERSION}</footer>", html)
        overview = await b.page("/console/dashboard/overview")
        assert re.search(rf'id="hub-version">{VERSION}<', overview)
        assert re.search(r'id="agents-online">\d+ / \d+<', overview)
        assert 'id="disk-free">' in overview and 'id="hub-uptime">' in overview
        # The login page of a logged-in browser goes to the dashboard.
        status, _, headers = await b.get("/console/login")
        assert status == 303 and headers["Location"] == "/"


async def test_logout_ends_the_login_and_clears_the_cookie(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        status, _, _ = await b.htmx("POST", "/console/logout", csrf="")
        assert status == 403  # a page of another site cannot log anyone out
        cookie = next(c for c in b.session.cookie_jar if c.key == "freight_session").value
        status, _, headers = await b.htmx("POST", "/console/logout")
        assert status == 200 and headers["HX-Redirect"] == "/console/login"
        assert "freight_session" not in {c.key for c in b.session.cookie_jar}
        status, _, headers = await b.get("/")
        assert status == 303
    # The token itself is revoked, not only forgotten by the browser.
    async with Browser(shared_hub) as replay:
        replay.session.cookie_jar.update_cookies(
            {"freight_session": cookie}, response_url=replay.session._build_url(shared_hub.url)
        )
        status, _ = await replay.api("GET", "/v1/bandwidth")
        assert status == 401


# --- CSRF ----------------------------------------------------------------------------


async def test_cookie_changes_need_the_csrf_token(shared_hub: Hub, admin: Client) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        user = {"name": "csrf-victim", "password": "a-long-password"}
        for token in ("", "0" * 64, b.csrf[:-1] + ("0" if b.csrf[-1] != "0" else "1")):
            status, body = await b.api("POST", "/v1/users", user, csrf=token)
            assert status == 403
            assert body["error"]["message"] == "missing or wrong CSRF token: reload the page"
        _, users = await b.api("GET", "/v1/users")
        assert "csrf-victim" not in {u["name"] for u in users}
        status, body = await b.api("POST", "/v1/users", user)
        assert status == 201 and body["name"] == "csrf-victim"
        # A bearer request needs no CSRF token.
        status, body = rest(
            shared_hub,
            "POST",
            "/v1/users",
            {"name": "bearer-made", "password": "a-long-password"},
            token=token_of(admin),
        )
        assert status == 201, body
        # The token belongs to the login: another login of the same account
        # has another one.
        async with Browser(shared_hub) as other:
            await other.login()
            assert other.csrf != b.csrf
            status, _ = await other.api("POST", "/v1/users/bearer-made/disable", csrf=b.csrf)
            assert status == 403


# --- headers and markup -----------------------------------------------------------


async def test_every_console_response_has_the_policy_and_no_inline_code(
    shared_hub: Hub,
) -> None:
    async with Browser(shared_hub) as b:
        status, html, headers = await b.get("/console/login")
        assert status == 200 and headers["Content-Security-Policy"] == CSP
        assert inline_code(html) == []
        await b.login()
        for path in (
            "/",
            "/console/dashboard/overview",
            "/console/dashboard/security",
            "/console/static/console.js",
            "/console/static/htmx.min.js",
            "/console/static/console.css",
            "/console/no-such-page",
        ):
            status, text, headers = await b.get(path)
            assert headers["Content-Security-Policy"] == CSP, path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Referrer-Policy"] == "no-referrer", path
            if path.startswith("/console/static/"):
                assert status == 200
            elif path != "/console/no-such-page":
                assert status == 200 and inline_code(text) == [], (path, inline_code(text))
        html = await b.page("/")
        assert '<meta name="htmx-config" content=\'{"includeIndicatorStyles": false' in html
        assert csrf_of(html) == b.csrf


# --- ordinary users ---------------------------------------------------------------------


async def test_an_ordinary_user_sees_no_admin_blocks(shared_hub: Hub, admin: Client) -> None:
    add_user(admin, "dave", "daves-password")
    async with Browser(shared_hub) as b:
        await b.login("dave", "daves-password")
        html = await b.page("/")
        assert re.search(r'<span class="who">dave <span class="role">\(user\)', html)
        overview = await b.page("/console/dashboard/overview")
        assert re.search(rf'id="hub-version">{VERSION}<', overview)
        assert 'id="my-files">0<' in overview
        assert "agents-online" not in overview and "disk-free" not in overview
        security = await b.page("/console/dashboard/security")
        assert ADMIN_ONLY in security
        status, _ = await b.api("GET", "/v1/admin/status")
        assert status == 403


# --- the live stream --------------------------------------------------------------------


@pytest.mark.usefixtures("fast_env")
async def test_stream_tells_of_a_new_connection_within_a_second(
    shared_hub: Hub, admin: Client, bob: Client
) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        async with stream(b) as (status, events), sdk(admin) as ca, sdk(bob) as cb:
            assert status == 200
            # Nothing is live yet: no connections event comes on its own.
            assert [m for m in await events.drain(0.3) if m["event"] == "connections"] == []
            listener = await cb.listen("console-watch")
            dialled = time.monotonic()
            a, c = await asyncio.wait_for(
                asyncio.gather(ca.connect("bob", "console-watch", timeout=10), listener.accept()),
                10,
            )
            opened = time.monotonic()
            await events.wait_for("connections", 1.0)
            seen = time.monotonic()
            assert seen - opened < 1.0
            print(
                f"connections event {(seen - dialled) * 1000:.0f} ms after the dial, "
                f"the connection itself took {(opened - dialled) * 1000:.0f} ms"
            )
            # While it is live and nothing changes, nothing is sent but its
            # counters' refresh every COUNTERS["connections"] seconds (the
            # dashboard's figures did not change: never).
            await a.send(b"x" * 1000)
            assert await asyncio.wait_for(c.recv(), 10) == b"x" * 1000
            await events.drain(0.2)  # the rest of the open's own message
            quiet = await events.drain(COUNTERS["connections"] - 1.2)
            assert [m for m in quiet if m["event"] in ("connections", "dashboard")] == [], quiet
            await events.wait_for("connections", 2.0)  # the counters, once
            overview = await b.page("/console/dashboard/overview")
            assert re.search(r'id="live-connections">[1-9]\d*<', overview)
            # Its end is a change: sent within the second.
            await a.close()
            closed = time.monotonic()
            await events.wait_for("connections", 1.0)
            assert time.monotonic() - closed < 1.0


async def test_stream_coalesces_a_burst(shared_hub: Hub, admin: Client) -> None:
    headers = {"Authorization": f"Bearer {token_of(admin)}"}
    async with Browser(shared_hub) as b, aiohttp.ClientSession(headers=headers) as api:
        await b.login()
        async with stream(b) as (_, events):
            await events.drain(0.6)  # what the other tests left moving
            gate = asyncio.Semaphore(16)

            async def change(i: int) -> int:
                async with (
                    gate,
                    api.put(
                        shared_hub.url + "/v1/admin/bandwidth",
                        json={"budget": "off" if i % 2 else "1G"},
                        ssl=insecure_ssl(),
                    ) as r,
                ):
                    return r.status

            started = time.monotonic()
            # 200 events, as fast as the hub records them.
            assert await asyncio.gather(*(change(i) for i in range(200))) == [200] * 200
            took = time.monotonic() - started
            messages = await events.drain(1.2)
        dashboard = [m for m in messages if m["event"] == "dashboard"]
        assert dashboard, messages
        # At most one per topic per half second, however many events: a
        # burst of 200 is a handful of refetches.
        assert len(dashboard) <= took / 0.5 + 3, (len(dashboard), took)
        assert {m["event"] for m in messages} == {"dashboard", "events"}
        assert len(messages) <= 2 * (took / 0.5 + 3), (len(messages), took)
        print(f"200 events in {took:.2f} s: {len(messages)} stream messages")


async def test_stream_resumes_with_last_event_id(shared_hub: Hub, admin: Client) -> None:
    token = token_of(admin)
    async with Browser(shared_hub) as b:
        await b.login()
        async with stream(b) as (_, events):
            rest(shared_hub, "PUT", "/v1/admin/bandwidth", {"budget": "off"}, token=token)
            last = (await events.wait_for("dashboard", 2.0))["id"]
        assert re.fullmatch(r"[0-9a-f]{8}-\d+", last)
        # Away: a user is added meanwhile.
        add_user(admin, "erin", "erins-password")
        async with stream(b, last) as (_, events):
            got = await events.wait_for("users", 1.0)
            assert got["id"] != last
        # An id from another run of the hub: every topic at once.
        async with stream(b, "00000000-5") as (_, events):
            names = {m["event"] for m in await events.drain(0.4)}
            assert names >= {"connections", "transfers", "agents", "events", "users", "dashboard"}


async def test_streams_are_bounded_per_login(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(8):
                status, _ = await stack.enter_async_context(stream(b))
                assert status == 200
            async with b.session.get(b.url("/console/stream")) as r:
                assert r.status == 429
                body = await r.json()
                assert "at most 8 live pages per login" in body["error"]["message"]
            async with Browser(shared_hub) as other:  # another login is not affected
                await other.login()
                async with stream(other) as (status, _):
                    assert status == 200
        # Closed streams are given back (the hub notices within its tick).
        deadline = time.monotonic() + 3
        while True:
            async with stream(b) as (status, _):
                if status == 200:
                    break
            assert time.monotonic() < deadline, "the closed streams were not given back"
            await asyncio.sleep(0.1)


async def test_stream_ends_with_its_login(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        async with stream(b) as (_, events):
            status, _, _ = await b.htmx("POST", "/console/logout")
            assert status == 200
            with pytest.raises(AssertionError, match="the stream ended"):
                await events.drain(5)


async def test_open_streams_do_not_hold_up_a_hub_stop(hub: Hub) -> None:
    async with Browser(hub) as b:
        await b.login()
        async with stream(b) as (_, one), stream(b) as (_, two):
            assert hub.proc is not None
            hub.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            for events in (one, two):
                with pytest.raises(AssertionError, match="the stream ended"):
                    await events.drain(10)
            await asyncio.to_thread(hub.proc.wait, 10)
            assert time.monotonic() - started < 5


# --- hostile values ------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_hostile_values_are_escaped(shared_hub: Hub, admin: Client, tmp_path: Path) -> None:
    agent = Agent(admin, shared_hub, "reporter-x", tmp_path, tmp_path)
    raw = RawAgent(shared_hub, agent.client.config)

    async def go() -> None:
        # An agent reports a security event with markup in every field.
        status, body = rest(
            shared_hub,
            "POST",
            "/v1/agents/security",
            {"op": HOSTILE, "path": "/x" + HOSTILE, "peer": '"><img src=x>', "reason": HOSTILE},
            token=await raw.token(),
        )
        assert status == 200, body
        async with Browser(shared_hub) as b:
            await b.login()
            html = await b.page("/console/dashboard/security")
            assert "reporter-x" in html
            assert HOSTILE not in html and ESCAPED in html
            assert "<img" not in html and "&#34;&gt;&lt;img src=x&gt;" in html
            # The Last-Event-ID header is the client's: junk is no resume point.
            async with stream(b, HOSTILE * 10) as (status, events):
                assert status == 200
                names = {m["event"] for m in await events.drain(0.4)}
                assert "users" in names  # as an id of another run: everything
        # The login form shows a hostile name back escaped.
        async with Browser(shared_hub, "127.0.0.33") as c:
            status, _, text = await c.login(HOSTILE, "x")
            assert status == 400
            assert HOSTILE not in text and ESCAPED in text

    asyncio.run(go())
