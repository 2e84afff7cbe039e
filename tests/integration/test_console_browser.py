"""The web console in a real browser: Debian's Chromium driven by Playwright
against a real hub process over real TLS, with an admin and an ordinary
user. Screenshots of every page visited land in test-artifacts/console/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from freight import __version__
from tests.agentsupport import api
from tests.browsersupport import Visit, off_loop, playwright_browser
from tests.relaysupport import fast
from tests.support import ADMIN_PASSWORD, Client, Hub, wait_until

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


def log_in(visit: Visit, user: str = "admin", password: str = ADMIN_PASSWORD) -> Page:
    """Through the login form, as a person does; lands on the dashboard."""
    page = visit.page
    visit.goto("/console/login")
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
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
