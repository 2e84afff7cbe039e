"""The console's core, shared by every page module: templates, the
security headers, who is looking at a page, and :func:`api_json`, through
which every table and action goes to the same JSON API the CLI uses.

A page module adds its routes with :func:`page` (a full page: without a
session it redirects to the login page) and :func:`fragment` (a piece an
htmx request swaps in: an API error becomes a one-line message), and gets
its data only from the ``/v1`` handlers, called with the page's own
request so the same authentication and authorisation apply."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from yarl import URL

from ... import __version__
from ...errors import FreightError, NotLoggedIn
from ...units import format_bytes, format_rate
from ..requests import CSRF, current_user, error_response
from ..streams import User

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

LOGIN_PAGE = "/console/login"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ADMIN_ONLY = "this page needs an admin account"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class NavItem:
    href: str
    label: str


# The pages in the navigation bar, in order: each page module adds its own.
NAV: web.AppKey[list[NavItem]] = web.AppKey("console_nav", list)


def add_page(
    app: web.Application,
    path: str,
    label: str,
    template: str,
    load: Callable[[web.Request, Viewer], Awaitable[dict[str, Any]]],
    *,
    admin: bool = False,
) -> None:
    """A page at ``path`` with ``label`` in the navigation bar; ``admin``:
    other accounts get the page saying it needs an admin (the API it shows
    refuses them anyway)."""
    app.router.add_get(path, page(template, label, load, admin=admin))
    app.setdefault(NAV, []).append(NavItem(path, label))


def is_console(path: str) -> bool:
    return path == "/" or path == "/console" or path.startswith("/console/")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every console response (pages, fragments, static files, the stream,
    errors) carries the strict policy: no inline script or style, no
    framing, nothing loaded from elsewhere."""
    if is_console(request.path):
        response.headers.update(SECURITY_HEADERS)
        # Static files are revalidated (they carry Last-Modified); pages
        # and fragments hold account data and are never stored.
        static = request.path.startswith("/console/static/")
        response.headers.setdefault("Cache-Control", "no-cache" if static else "no-store")


# --- templates ------------------------------------------------------------------


def _when(value: Any) -> str:
    """A Unix time as UTC, to the second ("" for none)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return ""
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return ""
    s = int(value)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    return f"{minutes}m {s}s" if minutes else f"{s}s"


def _size(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return format_bytes(value)


def _rate(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return str(format_rate(int(value)))


def _speed(value: Any) -> str:
    """A measured rate: bytes per second (0 is 0, not "unlimited")."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return f"{format_bytes(value)}/s"


def _compact(value: Any) -> str:
    """A JSON value on one line (an event's detail, a command's answer)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every value from the database or a peer is escaped
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    when=_when, duration=_duration, size=_size, rate=_rate, speed=_speed, compact=_compact
)
ENV.globals.update(version=__version__)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks at a page: the account and the CSRF token of its login."""

    user: User
    csrf: str

    @property
    def admin(self) -> bool:
        return self.user.role == "admin"


async def viewer(request: web.Request) -> Viewer:
    """The page's account (NotLoggedIn without a valid session)."""
    user = await current_user(request)
    return Viewer(user, await request.app[CSRF].token(user.token))


def render(template: str, status: int = 200, /, **context: Any) -> web.Response:
    html = ENV.get_template(template).render(**context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


# --- the JSON API, called in process -----------------------------------------


class ApiError(Exception):
    """An error answer of a ``/v1`` handler: its code, message and status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def api_json(
    request: web.Request, handler: Handler, *, query: Mapping[str, str] | None = None
) -> Any:
    """Call the JSON API ``handler`` with ``request`` (the same session,
    the same checks) and return its decoded body; an error answer raises
    :class:`ApiError`. ``query`` replaces the request's query string (one
    page calls several endpoints)."""
    if query is not None:
        request = request.clone(rel_url=URL(request.path).with_query(dict(query)))
    try:
        response = await handler(request)
    except FreightError as exc:
        response = error_response(exc)
    body = response.body if isinstance(response, web.Response) else None
    try:
        data = json.loads(body) if isinstance(body, bytes | bytearray) else None
    except ValueError:
        data = None
    if response.status >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            err = {"code": "error", "message": f"the hub answered {response.status}"}
        raise ApiError(response.status, str(err.get("code", "")), str(err.get("message", "")))
    return data


async def api_or_error(
    request: web.Request, handler: Handler, *, query: Mapping[str, str] | None = None
) -> tuple[Any, str]:
    """``(data, "")`` or ``(None, the error's one-line message)``; a login
    that ended is not a message: it goes to the login page."""
    try:
        return await api_json(request, handler, query=query), ""
    except ApiError as exc:
        if exc.status == 401:
            raise NotLoggedIn(exc.message) from None
        return None, admin_only(exc)


def admin_only(exc: ApiError) -> str:
    return ADMIN_ONLY if exc.code == "forbidden" and "admin" in exc.message else exc.message


# --- tables paged by name ---------------------------------------------------------

PAGE = 100  # rows per page of the Agents and Users tables


def after_of(request: web.Request) -> str:
    """The name a paged table starts after ("" for the first page)."""
    return request.query.get("after", "")[:64]


def table_src(path: str, after: str, **filters: str) -> str:
    """The address of a paged table's fragment starting after ``after``,
    with the ``filters`` that are set."""
    query = {k: v for k, v in {**filters, "after": after}.items() if v}
    return str(URL(path).with_query(query)) if query else path


# --- routes ------------------------------------------------------------------------


def to_login(request: web.Request) -> web.Response:
    """Where a request without a valid session goes: a page is redirected,
    an htmx request is told to load the login page."""
    if request.headers.get("HX-Request") == "true":
        return web.Response(status=200, headers={"HX-Redirect": LOGIN_PAGE})
    raise web.HTTPSeeOther(LOGIN_PAGE)


def page(
    template: str,
    title: str,
    load: Callable[[web.Request, Viewer], Awaitable[dict[str, Any]]],
    *,
    admin: bool = False,
) -> Handler:
    """A full page: ``load`` gathers its context through the API."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            who = await viewer(request)
            context = await load(request, who) if who.admin or not admin else {}
        except NotLoggedIn:
            return to_login(request)
        return render(
            template if who.admin or not admin else "admin_only.html",
            403 if admin and not who.admin else 200,
            title=title,
            nav=request.app.get(NAV, []),
            me=who.user,
            csrf=who.csrf,
            now=time.time(),
            message=ADMIN_ONLY,
            **context,
        )

    return handler


def fragment(
    template: str, load: Callable[[web.Request, Viewer], Awaitable[dict[str, Any]]]
) -> Handler:
    """A piece of a page for htmx: ``load``'s context rendered with
    ``template``, or the login page when the session ended."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            who = await viewer(request)
            context = await load(request, who)
        except NotLoggedIn:
            return to_login(request)
        return render(template, me=who.user, now=time.time(), **context)

    return handler
