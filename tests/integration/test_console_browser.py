"""The web console in a real browser: Debian's Chromium driven by Playwright
against a real hub process over real TLS, with an admin and an ordinary
user. Screenshots of every page visited land in test-artifacts/console/."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from freight import __version__
from tests.browsersupport import Visit, playwright_browser
from tests.support import Client, Hub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_browser() as b:
        yield b


@pytest.fixture
def visit(
    request: pytest.FixtureRequest, browser: object, shared_hub: Hub, admin: Client, bob: Client
) -> Iterator[Visit]:
    """A fresh browser context on the shared hub (its admin and ``bob``, an
    ordinary user, exist)."""
    v = Visit(browser, shared_hub.url, request.node.name)  # type: ignore[arg-type]
    yield v
    v.close()


def test_the_browser_reaches_the_hub_over_its_tls(visit: Visit) -> None:
    response = visit.goto("/v1/health")
    assert response.status == 200
    assert response.url.startswith("https://127.0.0.1:")
    assert json.loads(visit.page.inner_text("body"))["version"] == __version__
    assert sorted(p.name for p in visit.dir.iterdir()) == ["01-v1-health.png"]
