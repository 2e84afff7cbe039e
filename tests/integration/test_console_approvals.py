"""The console's Approvals page and the Users page's new row actions
against a real hub (``--registration approval``) over real TLS, driven as
the browser drives them: the session cookie, the page's CSRF token, the
JSON bodies htmx sends to the same ``/v1`` endpoints the CLI uses. Without
the CSRF token nothing changes; ordinary users get the admin-only page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.authsupport import rest
from tests.consolesupport import ADMIN_ONLY, Browser, inline_code
from tests.integration.test_console_pages import cells
from tests.relaysupport import Proc, fast
from tests.support import Client, Hub

PASSWORD = "a console password"


@pytest.fixture(scope="module")
def approving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(
        tmp_path_factory.mktemp("console-approvals") / "hub",
        extra=["--registration", "approval", "--app-approval", "--msg-warmup", "0"],
    )
    h.start()
    yield h
    h.stop()


def register(hub: Hub, name: str) -> None:
    status, body = rest(hub, "POST", "/v1/register", {"user": name, "password": PASSWORD})
    assert status == 201 and body["state"] == "pending", body


async def test_a_registration_is_approved_on_the_approvals_page_and_logs_in(
    approving: Hub,
) -> None:
    register(approving, "gina")
    async with Browser(approving) as admin, Browser(approving, "127.0.0.2") as gina:
        status, _, text = await gina.login("gina", PASSWORD)
        assert status == 403 and "your account waits for an administrator&#39;s approval" in text
        await admin.login()
        html = await admin.page("/console/approvals")
        assert 'href="/console/approvals"' in html and inline_code(html) == []
        table = await admin.page("/console/approvals/table")
        assert cells(table, "pending-gina")[0] == "gina"
        assert 'hx-post="/v1/users/gina/approve"' in table
        assert 'hx-post="/v1/users/gina/refuse"' in table
        # The button's request without the session's CSRF token: refused.
        status, body = await admin.api("POST", "/v1/users/gina/approve", csrf="")
        assert status == 403
        assert body["error"]["message"] == "missing or wrong CSRF token: reload the page"
        status, body = await admin.api("POST", "/v1/users/gina/approve", csrf="0" * 64)
        assert status == 403
        assert "pending-gina" in await admin.page("/console/approvals/table")
        # With it: approved, gone from the page, and gina logs in.
        status, body = await admin.api("POST", "/v1/users/gina/approve")
        assert status == 200 and body["state"] == "active", body
        table = await admin.page("/console/approvals/table")
        assert "pending-gina" not in table and "No registration waits for approval." in table
        status, _, _ = await gina.login("gina", PASSWORD)
        assert status == 303
        assert "gina" in await gina.page("/")


async def test_a_registration_refused_on_the_approvals_page_cannot_log_in(
    approving: Hub,
) -> None:
    register(approving, "hugo")
    async with Browser(approving) as admin, Browser(approving, "127.0.0.3") as hugo:
        await admin.login()
        status, text, _ = await admin.htmx("POST", "/v1/users/hugo/refuse")
        assert status == 200 and '"state": "refused"' in text
        assert "pending-hugo" not in await admin.page("/console/approvals/table")
        users = await admin.page("/console/users/table")
        assert cells(users, "user-hugo")[:3] == ["hugo", "user", "refused"]
        status, _, text = await hugo.login("hugo", PASSWORD)
        assert status == 403 and "your registration was refused by an administrator" in text


async def test_users_page_resets_a_password_and_sets_a_role(approving: Hub) -> None:
    status, _ = rest(approving, "POST", "/v1/register", {"user": "ivy", "password": PASSWORD})
    async with Browser(approving) as admin, Browser(approving, "127.0.0.4") as ivy:
        await admin.login()
        await admin.api("POST", "/v1/users/ivy/approve")
        assert (await ivy.login("ivy", PASSWORD))[0] == 303
        table = await admin.page("/console/users/table")
        assert 'hx-post="/v1/users/ivy/password"' in table
        assert 'hx-post="/v1/users/ivy/role"' in table
        assert "/v1/users/admin/role" not in table  # no action against oneself
        assert inline_code(table) == []
        # What the select sends on change: {"role": ...}; ivy is an admin at once.
        status, body = await admin.api("POST", "/v1/users/ivy/role", {"role": "admin"})
        assert status == 200 and body["role"] == "admin"
        assert cells(await admin.page("/console/users/table"), "user-ivy")[1] == "admin"
        assert "ivy" in await ivy.page("/console/approvals")
        status, body = await admin.api("POST", "/v1/users/ivy/role", {"role": "user"})
        assert status == 200
        status, text, _ = await ivy.get("/console/approvals")
        assert status == 403 and ADMIN_ONLY in text
        # The reset form: ivy's console login ends; the new password works.
        new = "ivy's new password"
        status, body = await admin.api("POST", "/v1/users/ivy/password", {"password": new})
        assert status == 200 and body["revoked_tokens"] == 1
        status, _, headers = await ivy.get("/console/users")
        assert status == 303 and headers["Location"] == "/console/login"
        assert (await ivy.login("ivy", PASSWORD))[0] == 401
        assert (await ivy.login("ivy", new))[0] == 303
        # Without the CSRF token the role does not change.
        status, _ = await admin.api("POST", "/v1/users/ivy/role", {"role": "admin"}, csrf="")
        assert status == 403
        assert cells(await admin.page("/console/users/table"), "user-ivy")[1] == "user"
        # The last admin: refused with the API's message.
        status, body = await admin.api("POST", "/v1/users/admin/role", {"role": "user"})
        assert status == 409 and "last enabled admin" in body["error"]["message"]


async def test_the_approvals_page_is_for_admins(approving: Hub) -> None:
    status, _ = rest(approving, "POST", "/v1/register", {"user": "jan", "password": PASSWORD})
    async with Browser(approving) as admin, Browser(approving, "127.0.0.5") as jan:
        await admin.login()
        await admin.api("POST", "/v1/users/jan/approve")
        await jan.login("jan", PASSWORD)
        status, text, _ = await jan.get("/console/approvals")
        assert status == 403 and ADMIN_ONLY in text
        assert ADMIN_ONLY in await jan.page("/console/approvals/table")
        status, _ = await jan.api("POST", "/v1/users/jan/approve")
        assert status == 403
        nav = re.findall(r"<nav>(.*?)</nav>", await admin.page("/"), re.S)[0]
        assert "Approvals" in nav


async def test_an_application_is_approved_on_the_approvals_page(
    approving: Hub, tmp_path: Path
) -> None:
    admin = fast(Client(tmp_path / "admin", approving))
    admin.login()
    admin.run("users", "add", "kim", "--password-stdin", input=PASSWORD + "\n")
    kim = fast(Client(tmp_path / "kim", approving))
    kim.login(user="kim", password=PASSWORD)
    with Proc(kim, "msg", "listen", "console:app", "--count", "1") as listener:
        listener.wait_stderr("Application console:app waits for an administrator's approval")
        async with Browser(approving) as b:
            await b.login()
            table = await b.page("/console/approvals/table")
            assert cells(table, "app-console:app")[:2] == ["console:app", "kim"]
            assert 'hx-post="/v1/apps/console%3Aapp/approve"' in table
            status, body = await b.api("POST", "/v1/apps/console%3Aapp/approve", csrf="")
            assert status == 403
            assert "app-console:app" in await b.page("/console/approvals/table")
            status, body = await b.api("POST", "/v1/apps/console%3Aapp/approve")
            assert status == 200 and body["state"] == "approved", body
            table = await b.page("/console/approvals/table")
            assert "No application waits for approval." in table
        sent = admin.run("msg", "send", "kim", "console:app", "--type", "1", "hello")
        assert sent.stdout == "delivered to 1 recipient(s)\n"
        assert listener.wait(10) == 0, listener.stderr
        assert listener.stdout_lines()[1] == "admin 0x00000001 hello"
