"""Live relayed connections (``/console/connections``): both ends, the
application, how it is carried, bytes and rate each way, start and
elapsed, each with a Kill button (``DELETE /v1/admin/connections/{cid}``);
refreshed on the live feed's ``connections`` events."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import rest
from .core import Viewer, add_page, api_or_error, fragment


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


async def _table(request: web.Request, who: Viewer) -> dict[str, Any]:
    rows, error = await api_or_error(request, rest.list_connections)
    if rows is not None:
        rows.sort(key=lambda r: r.get("started", 0), reverse=True)
    return {"rows": rows, "error": error}


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/connections", "Connections", "connections.html", _page, admin=True)
    app.router.add_get("/console/connections/table", fragment("connections_table.html", _table))
