"""Approvals (``/console/approvals``): the registrations that wait for an
admin (``GET /v1/users?state=pending``) and the application names held
(``GET /v1/apps?state=pending``), each with Approve and Refuse buttons
(``POST /v1/users/{name}/approve|refuse``, ``POST
/v1/apps/{name}/approve|refuse``); admins only, as the API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import approvals, users
from .core import Viewer, add_page, api_or_error, fragment


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


async def _table(request: web.Request, who: Viewer) -> dict[str, Any]:
    pending = {"state": "pending"}
    accounts, error = await api_or_error(request, users.list_users, query=pending)
    apps, apps_error = await api_or_error(request, approvals.list_apps, query=pending)
    return {"accounts": accounts, "apps": apps, "error": error or apps_error}


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/approvals", "Approvals", "approvals.html", _page, admin=True)
    app.router.add_get("/console/approvals/table", fragment("approvals_table.html", _table))
