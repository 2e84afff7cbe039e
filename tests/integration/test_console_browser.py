"""The web console in a real browser: Debian's Chromium driven by Playwright
against a real hub process over real TLS, with an admin and an ordinary
user. Screenshots of every page visited land in test-artifacts/console/."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from freight import __version__
from tests.agentsupport import AgentProc, api, enroll, wait_online
from tests.browsersupport import Visit, off_loop, playwright_browser
from tests.relaysupport import BOB_PASSWORD, Proc, fast
from tests.support import ADMIN_PASSWORD, Client, Hub, random_file, wait_until

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect

CAROL_PASSWORD = "carol-secret-pass"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_browser() as b:
        yield b


@pytest.fixture(scope="module")
def carol(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    """A third account, for connections that are neither bob's nor shown to him."""
    admin.run("users", "add", "carol", "--password-stdin", input=CAROL_PASSWORD + "\n")
    c = Client(tmp_path_factory.mktemp("client-carol"), shared_hub)
    c.login(user="carol", password=CAROL_PASSWORD)
    return fast(c)


@pytest.fixture
def visit(
    request: pytest.FixtureRequest, browser: Browser, shared_hub: Hub, admin: Client, bob: Client
) -> Iterator[Visit]:
    """A fresh browser context on the shared hub (its admin and ``bob``, an
    ordinary user, exist)."""
    v = Visit(browser, shared_hub.url, request.node.name)
    yield v
    v.close()


def test_the_browser_reaches_the_hub_over_its_tls(visit: Visit) -> None:
    response = visit.goto("/v1/health")
    assert response.status == 200
    assert response.url.startswith("https://127.0.0.1:")
    assert json.loads(visit.page.inner_text("body"))["version"] == __version__
    assert sorted(p.name for p in visit.dir.iterdir()) == ["01-v1-health.png"]


# --- logging in -------------------------------------------------------------------


def fill_login(page: Page, user: str, password: str) -> None:
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def log_in(visit: Visit, user: str = "admin", password: str = ADMIN_PASSWORD) -> Page:
    """Through the login form, as a person does; lands on the dashboard."""
    page = visit.page
    visit.goto("/console/login")
    fill_login(page, user, password)
    expect(page).to_have_url(f"{visit.base_url}/")
    expect(page.locator("#hub-version")).to_have_text(__version__)
    visit.shot("dashboard")
    return page


def test_log_in_shows_a_wrong_password_then_lands_on_the_dashboard(visit: Visit) -> None:
    page = visit.page
    visit.goto("/")
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.get_by_label("User").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("wrong user name or password")
    visit.shot("wrong-password")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{visit.base_url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    expect(page.locator("#hub-version")).to_have_text(__version__)
    expect(page.locator("header")).to_contain_text("admin")
    visit.shot("dashboard")


def settled(page: Page) -> None:
    """Until htmx has no request in flight (the tables a page loads at once)."""
    page.wait_for_function("() => !document.querySelector('.htmx-request')")


def test_no_page_breaks_the_content_security_policy(visit: Visit) -> None:
    page = log_in(visit)
    hrefs = page.locator("nav a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs[0] == "/", hrefs  # every page the navigation links to is checked
    for href in hrefs:
        response = visit.goto(href)
        assert response.status == 200, href
        assert "script-src 'self'" in response.headers["content-security-policy"], href
        settled(page)
        visit.shot(f"{href}-settled")
    assert visit.csp_violations() == []
    # The watch works: an inline script is refused and reported.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.ran = 1'; document.body.append(s); }"
    )
    assert page.evaluate("() => window.ran") is None
    wait_until(lambda: visit.csp_violations() != [], 5, "the inline script's violation report")


# --- connections -------------------------------------------------------------------


def test_kill_from_the_connections_page_tells_both_ends(
    visit: Visit, admin: Client, bob: Client
) -> None:
    page = log_in(visit)
    visit.goto("/console/connections")
    settled(page)
    app = "console-kill"
    with Proc(bob, "listen", app) as listener:
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "bob", app) as dialer:
            listener.wait_stderr("Connected: admin")
            row = page.locator("tr", has_text=app)
            expect(row).to_contain_text("bob")  # shown without a reload
            visit.shot("connection-shown")
            page.once("dialog", lambda dialog: dialog.accept())
            row.get_by_role("button", name="Kill").click()
            for end in (dialer, listener):
                assert end.wait() == 7, end.stderr
                assert "an admin ended the connection" in end.stderr
            expect(row).to_have_count(0)
            visit.shot("connection-gone")


def test_a_user_does_not_see_another_users_connections(
    browser: Browser, shared_hub: Hub, visit: Visit, admin: Client, bob: Client, carol: Client
) -> None:
    app = "console-private"
    with Proc(carol, "listen", app) as listener:
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "carol", app) as dialer:
            listener.wait_stderr("Connected: admin")
            page = log_in(visit, "bob", BOB_PASSWORD)
            visit.goto("/console/connections")
            settled(page)
            visit.shot("bob-connections")
            assert app not in page.locator("main").inner_text()
            assert page.get_by_role("button", name="Kill").count() == 0
            # The admin's view of the same moment has it.
            other = Visit(browser, shared_hub.url, "admin-view-of-" + visit.dir.name)
            try:
                admin_page = log_in(other)
                other.goto("/console/connections")
                expect(admin_page.locator("tr", has_text=app)).to_contain_text("carol")
            finally:
                other.close()
            dialer.kill()


# --- agents ------------------------------------------------------------------------


def test_an_agent_enrolled_with_a_token_from_the_agents_page_comes_online(
    visit: Visit, tmp_path: Path, shared_hub: Hub, admin: Client
) -> None:
    page = log_in(visit)
    visit.goto("/console/agents")
    page.get_by_label("Agent name").fill("console-lab")
    page.get_by_role("button", name="Create token").click()
    shown = page.locator("#new-token")
    expect(shown).to_be_visible()
    token = shown.inner_text().strip()
    visit.shot("token")
    root = tmp_path / "console-root"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    agent = fast(Client(tmp_path / "agent-config", shared_hub))
    enroll(agent, token, root)
    row = page.locator("#agent-console-lab")
    expect(row).to_contain_text("offline")  # enrolled: shown without a reload
    with AgentProc(agent, tmp_path / "agent.log") as proc:
        off_loop(wait_online, admin, "console-lab", True, 15, proc)
        # Its attaching is a change of the live feed: the row turns online
        # without a reload, within the live tables' second.
        expect(row.locator(".online")).to_have_text("online", timeout=1_500)
        visit.shot("attached")
        # The page asks the agent itself, and shows its answer, still
        # without a reload.
        page.get_by_label("command").select_option("list_dir")
        page.get_by_label("arguments").fill('{"path": "/"}')
        row.get_by_role("button", name="Run").click()
        answer = page.locator("#command-result .command")
        expect(answer.locator(".state")).to_have_text("done", timeout=15_000)
        expect(answer.locator("pre")).to_contain_text("console-root")
        expect(row.locator(".online")).to_have_text("online")
        visit.shot("online")


# --- CSRF --------------------------------------------------------------------------


def test_a_state_change_without_the_csrf_token_is_refused(visit: Visit, admin: Client) -> None:
    page = log_in(visit)
    body = {"name": "mallory", "password": "mallory-password", "role": "admin"}
    refused = page.request.post("/v1/users", data=body)
    assert refused.status == 403
    assert "CSRF" in refused.json()["error"]["message"]
    wrong = page.request.post("/v1/users", data=body, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status == 403
    assert "mallory" not in {u["name"] for u in off_loop(api, admin, "GET", "/v1/users")}
    # The page's own token is what makes it work.
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    body["name"] = "csrf-holder"
    made = page.request.post("/v1/users", data=body, headers={"X-CSRF-Token": token})
    assert made.status == 201, made.text()
    assert "csrf-holder" in {u["name"] for u in off_loop(api, admin, "GET", "/v1/users")}


# --- events ------------------------------------------------------------------------


def test_events_filter_sort_and_export_csv(visit: Visit, admin: Client) -> None:
    names = ["evtalpha", "evtbravo", "evtcharlie"]
    for name in names:  # three user_added events, oldest first
        body = {"name": name, "password": "event-test-pass"}
        off_loop(api, admin, "POST", "/v1/users", body)
    page = log_in(visit)
    visit.goto("/console/events")
    page.get_by_label("Kind").fill("user_added")
    page.get_by_label("Actor").fill("admin")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"kind=user_added"))
    rows = page.locator("#events-table tbody tr")
    expect(rows.first).to_be_visible()
    visit.shot("filtered")
    kinds = rows.locator("td:nth-child(2)").all_inner_texts()
    assert set(kinds) == {"user_added"}, kinds

    def order() -> list[str]:
        details = rows.locator("td.detail").all_inner_texts()
        return [n for d in details for n in names if f'"{n}"' in d]

    assert order() == names[::-1]  # newest first
    page.locator("#sort-ts").click()
    expect(page).to_have_url(re.compile(r"sort=ts"))
    expect(page.locator("#events-table th").first).to_contain_text("▲")
    assert order() == names
    visit.shot("oldest-first")

    with page.expect_download() as download:
        page.locator("#export-csv").click()
    text = Path(download.value.path()).read_text()
    exported = list(csv.DictReader(io.StringIO(text)))
    assert {r["kind"] for r in exported} == {"user_added"}
    assert {r["actor"] for r in exported} == {"admin"}
    assert [n for r in exported for n in names if f'"{n}"' in r["detail"]] == names
    assert len(exported) == rows.count()


# --- transfers ---------------------------------------------------------------------


def test_a_push_shows_its_progress_moving_on_the_transfers_page(
    visit: Visit, admin: Client, tmp_path: Path
) -> None:
    src = random_file(tmp_path / "paced.bin", 6 * 1024 * 1024)
    page = log_in(visit)
    visit.goto("/console/transfers")
    with Proc(admin, "push", str(src), "--as", "console-paced.bin", "--limit", "1M") as push:
        bar = page.locator("tr", has_text="console-paced.bin").locator("progress")
        expect(bar).to_be_visible(timeout=15_000)  # shown without a reload
        assert bar.get_attribute("max") == str(6 * 1024 * 1024)
        first = bar.get_attribute("value")
        visit.shot("in-flight")
        expect(bar).not_to_have_attribute("value", first or "")  # it moves on its own
        later = bar.get_attribute("value")
        assert int(later or 0) > int(first or 0)
        visit.shot("moved")
        assert push.wait(30) == 0, push.stderr


# --- registration and approvals ------------------------------------------------------


@pytest.fixture(scope="module")
def approving_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub where a registration waits for an admin's approval."""
    h = Hub(
        tmp_path_factory.mktemp("browser-approvals") / "hub",
        extra=["--registration", "approval"],
    ).start()
    yield h
    h.stop()


def test_a_registration_waits_is_approved_on_the_approvals_page_and_logs_in(
    request: pytest.FixtureRequest, browser: Browser, approving_hub: Hub, tmp_path: Path
) -> None:
    password = "lena's own password"
    lena = Client(tmp_path / "lena", approving_hub)
    res = lena.run(
        "register", approving_hub.url, "--user", "lena", "--password-stdin",
        "--fingerprint", approving_hub.fingerprint, input=password + "\n",
    )  # fmt: skip
    assert "waits for an administrator's approval" in res.stderr
    user = Visit(browser, approving_hub.url, request.node.name + "-lena")
    admin = Visit(browser, approving_hub.url, request.node.name + "-admin")
    try:
        # Before the approval: the right password is told it waits.
        user.goto("/console/login")
        fill_login(user.page, "lena", password)
        expect(user.page.get_by_role("alert")).to_have_text(
            "your account waits for an administrator's approval"
        )
        user.shot("waiting")
        # The admin approves it on the Approvals page, reached from the navigation.
        page = log_in(admin)
        page.locator("nav").get_by_role("link", name="Approvals").click()
        expect(page).to_have_url(f"{admin.base_url}/console/approvals")
        row = page.locator("#pending-lena")
        expect(row).to_contain_text("lena")
        admin.shot("pending")
        row.get_by_role("button", name="Approve").click()
        expect(page.locator("#pending-lena")).to_have_count(0)
        expect(page.locator("#approvals")).to_contain_text("No registration waits for approval.")
        admin.shot("approved")
        # Now lena logs in and lands on the dashboard.
        fill_login(user.page, "lena", password)
        expect(user.page).to_have_url(f"{user.base_url}/")
        expect(user.page.locator("header")).to_contain_text("lena")
        user.shot("dashboard")
        assert admin.csp_violations() == [] and user.csp_violations() == []
    finally:
        user.close()
        admin.close()
