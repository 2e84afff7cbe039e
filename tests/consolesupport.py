"""A scripted browser for the console tests: an aiohttp session with a
cookie jar that keeps the hub's cookies over https to 127.0.0.1, the
console's login form, its CSRF token, its pages, and its event stream read
message by message."""

from __future__ import annotations

import asyncio
import re
import time
from html.parser import HTMLParser
from typing import Any

import aiohttp

from tests.hostile import insecure_ssl
from tests.support import ADMIN_PASSWORD, Hub

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
ADMIN_ONLY = "this page needs an admin account"


class Browser:
    """One browser profile: its own cookies, from its own source address
    (the hub counts failed logins per address)."""

    def __init__(self, hub: Hub, source: str = "127.0.0.1") -> None:
        self.hub = hub
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=insecure_ssl(), local_addr=(source, 0)),
        )
        self.csrf = ""

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def url(self, path: str) -> str:
        return self.hub.url + path

    async def login(
        self, name: str = "admin", password: str = ADMIN_PASSWORD
    ) -> tuple[int, str, str]:
        """Submit the login form: (status, Set-Cookie header, page text)."""
        async with self.session.post(
            self.url("/console/login"),
            data={"name": name, "password": password},
            allow_redirects=False,
        ) as r:
            text = await r.text()
            cookie = r.headers.get("Set-Cookie", "")
            status = r.status
        if status == 303:
            self.csrf = csrf_of(await self.page("/"))
        return status, cookie, text

    async def get(self, path: str, **headers: str) -> tuple[int, str, Any]:
        async with self.session.get(self.url(path), headers=headers, allow_redirects=False) as r:
            return r.status, await r.text(), r.headers

    async def page(self, path: str) -> str:
        status, text, _ = await self.get(path)
        assert status == 200, (path, status, text[:500])
        return text

    async def api(
        self, method: str, path: str, body: Any = None, *, csrf: str | None = None
    ) -> tuple[int, Any]:
        """A /v1 request with the session cookie; ``csrf``: the header sent
        (None: the page's token, "": none)."""
        token = self.csrf if csrf is None else csrf
        headers = {"X-CSRF-Token": token} if token else {}
        async with self.session.request(
            method, self.url(path), json=body, headers=headers, allow_redirects=False
        ) as r:
            return r.status, await r.json(content_type=None)

    async def htmx(
        self, method: str, path: str, body: Any = None, *, csrf: str | None = None
    ) -> tuple[int, str, Any]:
        """A request as htmx makes it (its header, the CSRF token, a JSON body)."""
        token = self.csrf if csrf is None else csrf
        headers = {"HX-Request": "true"}
        if token:
            headers["X-CSRF-Token"] = token
        async with self.session.request(
            method, self.url(path), json=body, headers=headers, allow_redirects=False
        ) as r:
            return r.status, await r.text(), r.headers


def csrf_of(html: str) -> str:
    m = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert m, html[:1000]
    return m.group(1)


class InlineFinder(HTMLParser):
    """Script elements with a body or without ``src``, ``<style>`` elements,
    ``style`` and ``on…`` attributes: what the console's policy forbids."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        for name in names:
            if name == "style" or name.startswith("on"):
                self.found.append(f"{tag} {name}=")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("script body " + data.strip()[:40])


def inline_code(html: str) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    return finder.found


class EventStream:
    """``GET /console/stream`` read message by message."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buffer = ""

    async def next(self, timeout: float) -> dict[str, str] | None:
        """The next message with an event name (comments and ``retry`` are
        skipped), or None when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            if "\n\n" in self.buffer:
                block, self.buffer = self.buffer.split("\n\n", 1)
                fields: dict[str, str] = {}
                for line in block.split("\n"):
                    if line and not line.startswith(":"):
                        key, _, value = line.partition(":")
                        fields[key] = value.lstrip(" ")
                if "event" in fields:
                    return fields
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(self.response.content.readany(), left)
            except TimeoutError:
                return None
            if not chunk:
                raise AssertionError("the stream ended")
            self.buffer += chunk.decode()

    async def wait_for(self, event: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = await self.next(left)
            if msg is not None and msg["event"] == event:
                return msg
        raise AssertionError(f"no {event!r} event within {timeout} s")

    async def drain(self, seconds: float) -> list[dict[str, str]]:
        """Every message that arrives within ``seconds``."""
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = await self.next(left)
            if msg is not None:
                out.append(msg)
        return out
