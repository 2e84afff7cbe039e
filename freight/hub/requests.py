"""Request helpers every HTTP handler of the hub shares: who is asking
(bearer token or the web console's session cookie → account), JSON bodies
read within bounds, and errors answered as ``{"error": {"code",
"message"}}`` with a stable code and an HTTP status.

The console's cookie holds an ordinary login token, so every endpoint
accepts it; a request authenticated by the cookie that may change
something (any method but GET, HEAD, OPTIONS) must also carry the
session's CSRF token in ``X-CSRF-Token``: a page of another site can make
the browser send the cookie, never that header with the right value.

A leaf: it imports no hub module but the leaves :mod:`.auth` and
:mod:`.streams` (for :class:`User`), so every handler module and the
composition root can import it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from ..errors import (
    AuthError,
    BadCredentials,
    Conflict,
    Forbidden,
    FreightError,
    Gone,
    LimitReached,
    NodeUnavailable,
    NotFound,
    NotLoggedIn,
    RateLimited,
    RemoteError,
    UsageError,
)
from . import auth
from .streams import User

log = logging.getLogger("freight.hub")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoginLookup(Protocol):
    """How a request's login is found: the database's one query for it."""

    async def login_by_token(self, token_hash: str, now: float) -> Mapping[str, Any] | None: ...


LOGINS: web.AppKey[LoginLookup] = web.AppKey("logins")

SESSION_COOKIE = "freight_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_SETTING = "console_csrf_key"


class Settings(Protocol):
    async def get_setting(self, key: str) -> str | None: ...

    async def set_setting(self, key: str, value: str) -> None: ...


class CsrfKey:
    """The hub's secret for CSRF tokens, kept in the settings so a page
    stays usable across a hub restart (read once, created on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    saved = await self.settings.get_setting(CSRF_SETTING)
                    try:
                        key = bytes.fromhex(saved or "")
                    except ValueError:
                        key = b""  # damaged: a new one (open pages reload)
                    if len(key) < 32:
                        key = secrets.token_bytes(32)
                        await self.settings.set_setting(CSRF_SETTING, key.hex())
                    self._key = key
        return self._key

    async def token(self, token_hash: str) -> str:
        """The CSRF token of the login whose token hashes to ``token_hash``."""
        return csrf_token(await self.get(), token_hash)


CSRF: web.AppKey[CsrfKey] = web.AppKey("csrf", CsrfKey)


def csrf_token(key: bytes, token_hash: str) -> str:
    return hmac.new(key, b"csrf\0" + token_hash.encode(), hashlib.sha256).hexdigest()


_STATUS = {
    UsageError: 400,
    NotLoggedIn: 401,
    BadCredentials: 401,
    Forbidden: 403,
    NotFound: 404,
    Gone: 410,
    Conflict: 409,
    RateLimited: 429,
    LimitReached: 429,
    AuthError: 401,
    NodeUnavailable: 503,
}


def error_response(exc: FreightError) -> web.Response:
    """The answer for an error: its stable code, its message, its status."""
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(int(exc.retry_after or 30) + 1)
    return web.json_response(
        {"error": {"code": exc.code, "message": exc.message}}, status=status, headers=headers
    )


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FreightError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(exc)  # aiohttp's own answers (404 for an unknown route, 405 …)
    except Exception as exc:
        if isinstance(exc, UnicodeEncodeError) and _LONE_SURROGATE.search(str(exc.object)):
            # JSON may escape half of a surrogate pair ("\ud800"): text that no
            # file name, password or database column can hold.
            return error_response(
                UsageError("the request holds text that is not Unicode (half of a surrogate pair)")
            )
        # A bug, not an answer: logged with its traceback here, and still a
        # typed error for the client (never aiohttp's plain-text 500).
        log.exception("request failed: %s %s", request.method, request.path)
        return error_response(RemoteError("the hub failed on this request; its log says why"))


# Codes of aiohttp's own error answers (an unknown route, a wrong method,
# a body too large or too slow, a range outside the file).
_HTTP_CODES = {
    400: UsageError.code,
    404: NotFound.code,
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    416: "range_not_satisfiable",
}


def http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's error answer as the hub's JSON error, with its status and
    headers (Allow, Content-Range …)."""
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
    message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=exc.status, headers=headers
    )


def bearer_hash(request: web.Request) -> str:
    """The hash of the request's bearer token (as the database keeps it)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise NotLoggedIn("no token: log in first")
    return auth.token_hash(header[7:].strip())


async def login_hash(request: web.Request) -> str:
    """The hash of the request's login token: the bearer token, else the
    console's session cookie (whose state-changing requests must carry the
    session's CSRF token)."""
    if request.headers.get("Authorization", "").startswith("Bearer "):
        return bearer_hash(request)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not cookie:
        raise NotLoggedIn("no token: log in first")
    token = auth.token_hash(cookie)
    if request.method not in SAFE_METHODS:
        keys = request.app.get(CSRF)
        given = request.headers.get(CSRF_HEADER, "").encode(errors="replace")
        if keys is None or not hmac.compare_digest(given, (await keys.token(token)).encode()):
            raise Forbidden("missing or wrong CSRF token: reload the page")
    return token


async def current_login(request: web.Request) -> tuple[User, float]:
    """The request's account (with its login) and when that login expires."""
    token = await login_hash(request)
    row = await request.app[LOGINS].login_by_token(token, time.time())
    if row is None:
        raise NotLoggedIn(
            "the saved login is unknown, expired or revoked, or the account is disabled; "
            "log in again"
        )
    if row.disabled:
        raise NotLoggedIn(f"account {row.name!r} is disabled; ask an admin to enable it")
    user = User(int(row.id), str(row.name), str(row.role), token, str(row.token_key))
    return user, float(row.token_expires)


async def current_user(request: web.Request) -> User:
    return (await current_login(request))[0]


async def admin_user(request: web.Request) -> User:
    user = await current_user(request)
    if user.role != "admin":
        raise Forbidden("this needs an admin account")
    return user


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object (aiohttp bounds its size by the
    application's ``client_max_size``)."""
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the body must be a JSON object")
    return body


async def json_fields(request: web.Request, *names: str) -> dict[str, Any]:
    """A JSON object whose fields ``names`` are present (read as strings)."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise TypeError
        for name in names:
            body[name] = str(body[name])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"this needs a JSON body with {', '.join(names)}") from None
    return body


def name_page(query: Mapping[str, str], default: int, most: int) -> tuple[int, str | None] | None:
    """A page of a list ordered by name (keyset): ``(limit, after)`` when
    the query has ``limit`` (1..``most``) or ``after`` (a name, the
    previous page's ``next``); None when it has neither (the whole list)."""
    if "limit" not in query and "after" not in query:
        return None
    limit = query.get("limit", str(default))
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 9) or not 1 <= int(limit) <= most:
        raise UsageError(f"limit must be a whole number from 1 to {most}")
    after = query.get("after")
    if after is not None and len(after) > 64:
        raise UsageError("after must be a name (the 'next' of the previous page)")
    return int(limit), after
