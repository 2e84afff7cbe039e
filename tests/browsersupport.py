"""Browser tests: Debian's Chromium driven by Playwright's sync API against a
real hub process. The sync API runs its own event loop in a greenlet; the
tests that use it are plain sync functions, so pytest-asyncio (``asyncio_mode
= "auto"``) never has a loop running in the same thread.

Nothing is downloaded: the browser is ``/usr/bin/chromium`` (``make test``
installs the ``chromium`` package when it is missing, as root with apt-get);
without it the tests skip and say why. Every page a test visits is saved as
a screenshot under ``test-artifacts/console/`` (ignored by git)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright

T = TypeVar("T")
CHROMIUM = Path(os.environ.get("FREIGHT_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
# Playwright's own waits (clicks, selectors, expect) fail after this many ms.
TIMEOUT_MS = 8_000
NAVIGATION_TIMEOUT_MS = 10_000
VIEWPORT = {"width": 1280, "height": 800}


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} not found: install Debian's chromium package (make test does, as root)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed: make venv installs the dev extras"
    return None


def launch(pw: Playwright) -> Browser:
    """Headless Chromium; ``--no-sandbox`` only as root (Chromium refuses its
    sandbox to root)."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return pw.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=args, timeout=30_000
    )


@contextmanager
def playwright_browser() -> Iterator[Browser]:
    """Playwright and one browser; skips the test when either is missing."""
    why = missing()
    if why:
        pytest.skip(why)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            yield browser
        finally:
            browser.close()


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread of its own: while the sync API is in use its
    event loop counts as running in this thread, so helpers that call
    ``asyncio.run`` (the SDK's) must run elsewhere."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=60)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "page"


class Visit:
    """One browser context for one test: trusts the hub's self-signed
    certificate (``ignore_https_errors``, for this context only; the hub
    listens on 127.0.0.1), collects the console messages of every page, and
    saves a screenshot of each page visited under ``ARTIFACTS/<test>/``."""

    def __init__(self, browser: Browser, base_url: str, test: str) -> None:
        self.base_url = base_url
        self.dir = ARTIFACTS / slug(test)
        shutil.rmtree(self.dir, ignore_errors=True)  # the last run's
        self.dir.mkdir(parents=True)
        self.shots = 0
        self.messages: list[ConsoleMessage] = []
        self.context: BrowserContext = browser.new_context(
            base_url=base_url,
            ignore_https_errors=True,
            viewport=VIEWPORT,  # type: ignore[arg-type]
            accept_downloads=True,
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
        self.context.on("page", self._watch)
        self.page: Page = self.context.new_page()

    def _watch(self, page: Page) -> None:
        # Playwright wraps handlers written in Python only (not a bound builtin).
        page.on("console", lambda message: self.messages.append(message))

    def goto(self, path: str, page: Page | None = None) -> Any:
        """Open ``path`` (relative to the hub), wait for it to load, save a
        screenshot; returns the main document's response."""
        page = page or self.page
        response = page.goto(path, wait_until="load")
        self.shot(path, page)
        return response

    def shot(self, name: str, page: Page | None = None) -> Path:
        page = page or self.page
        self.shots += 1
        path = self.dir / f"{self.shots:02d}-{slug(name)}.png"
        page.screenshot(path=str(path), timeout=TIMEOUT_MS)
        return path

    def errors(self) -> list[str]:
        """Console messages of type error, with the address they came from."""
        return [
            f"{m.text} ({m.location.get('url', '')})" for m in self.messages if m.type == "error"
        ]

    def csp_violations(self) -> list[str]:
        """What Chromium reported as refused by the Content-Security-Policy."""
        return [e for e in self.errors() if "Content Security Policy" in e]

    def close(self) -> None:
        self.context.close()
