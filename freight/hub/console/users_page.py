"""Accounts (``/console/users``): the list from ``GET /v1/users``, a form
that creates one (``POST /v1/users``) and disable/enable buttons
(``POST /v1/users/{name}/disable|enable``); admins only, as the API.
The table is a page of 100 accounts by name (``?after=NAME``), as the
Agents table."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import users
from .core import PAGE, Viewer, add_page, after_of, api_or_error, fragment, table_src


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {"table_src": table_src("/console/users/table", after_of(request))}


async def _table(request: web.Request, who: Viewer) -> dict[str, Any]:
    after = after_of(request)
    query = {"limit": str(PAGE)} | ({"after": after} if after else {})
    page, error = await api_or_error(request, users.list_users, query=query)
    rows = page["users"] if page else None
    return {"rows": rows, "error": error, "after": after, "next": page["next"] if page else None}


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/users", "Users", "users.html", _page, admin=True)
    app.router.add_get("/console/users/table", fragment("users_table.html", _table))
