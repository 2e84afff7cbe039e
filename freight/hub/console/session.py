"""Logging in to the console and out: ``POST /console/login`` checks the
password exactly as ``POST /v1/login`` does (the same lockouts) and keeps
the new login's token in the ``freight_session`` cookie, which every
``/v1`` endpoint accepts; ``POST /console/logout`` ends that login as
``POST /v1/logout`` does and clears the cookie."""

from __future__ import annotations

import contextlib

from aiohttp import web

from ...errors import FreightError, NotLoggedIn
from .. import users
from ..requests import SESSION_COOKIE, current_user, error_response
from .core import LOGIN_PAGE, render

MAX_FIELD = 1024  # a name or password longer than this is no login


async def login_page(request: web.Request) -> web.StreamResponse:
    try:
        await current_user(request)
    except NotLoggedIn:
        return render("login.html", title="Log in", error="", name="")
    raise web.HTTPSeeOther("/")  # already logged in


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    name, password = form.get("name", ""), form.get("password", "")
    if not isinstance(name, str) or not isinstance(password, str):
        return render("login.html", 400, title="Log in", error="name and password", name="")
    name = name.strip()[:MAX_FIELD]
    try:
        token, _ = await users.password_login(request, name, password[:MAX_FIELD])
    except FreightError as exc:
        status = error_response(exc).status
        return render("login.html", status, title="Log in", error=exc.message, name=name)
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(
        SESSION_COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/"
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """The same as ``POST /v1/logout`` (the CSRF token is checked there),
    then the cookie goes."""
    with contextlib.suppress(NotLoggedIn):  # already ended: only the cookie is left
        await users.logout(request)
    response = web.Response(status=200, headers={"HX-Redirect": LOGIN_PAGE})
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(LOGIN_PAGE, login_page)
    app.router.add_post(LOGIN_PAGE, login)
    app.router.add_post("/console/logout", logout)
