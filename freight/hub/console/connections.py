"""Live relayed connections (``/console/connections``): both ends, the
application, how it is carried, bytes and rate each way, start and
elapsed, each with a Kill button (``DELETE /v1/admin/connections/{cid}``);
refreshed on the live feed's ``connections`` events. The newest ``SHOWN``
and how many there are (``GET /v1/admin/connections?limit=``): a busy hub's
thousand connections are never all rendered on each refresh."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import rest
from .core import Viewer, add_page, api_or_error, fragment


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


SHOWN = 100  # the newest connections the table shows


async def _table(request: web.Request, who: Viewer) -> dict[str, Any]:
    page, error = await api_or_error(request, rest.list_connections, query={"limit": str(SHOWN)})
    return {
        "rows": page["connections"] if page else None,
        "total": page["total"] if page else 0,
        "error": error,
    }


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/connections", "Connections", "connections.html", _page, admin=True)
    app.router.add_get("/console/connections/table", fragment("connections_table.html", _table))
