"""Accounts (``/console/users``): the list from ``GET /v1/users``, a form
that creates one (``POST /v1/users``) and disable/enable buttons
(``POST /v1/users/{name}/disable|enable``); admins only, as the API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import users
from .core import Viewer, add_page, api_or_error, fragment


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


async def _table(request: web.Request, who: Viewer) -> dict[str, Any]:
    rows, error = await api_or_error(request, users.list_users)
    return {"rows": rows, "error": error}


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/users", "Users", "users.html", _page, admin=True)
    app.router.add_get("/console/users/table", fragment("users_table.html", _table))
