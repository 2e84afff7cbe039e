"""The dashboard (``/``): the hub's version and uptime, agents online,
live relayed connections, active streams, a cluster's nodes, the bandwidth
budget now, free disk of the data folder and recent security events; each block from the
JSON API, refreshed when the live feed says ``dashboard``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import eventsapi, nodes, observeapi, rest, status
from .core import Viewer, add_page, api_json, api_or_error, fragment, page

SECURITY_EVENTS = 10  # shown on the dashboard


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


async def _overview(request: web.Request, who: Viewer) -> dict[str, Any]:
    health = await api_json(request, rest.health)
    bandwidth, bandwidth_error = await api_or_error(request, rest.get_bandwidth)
    out: dict[str, Any] = {
        "health": health,
        "bandwidth": bandwidth,
        "bandwidth_error": bandwidth_error,
    }
    if not who.admin:
        files, files_error = await api_or_error(request, rest.list_files)
        return out | {"files": files, "files_error": files_error}
    hub, hub_error = await api_or_error(request, status.hub_status)
    # Counts, never lists: GET /v1/admin/overview counts agents online and in
    # all, live connections and streams (with 10,000 agents as with one).
    figures, figures_error = await api_or_error(request, observeapi.overview)
    cluster, cluster_error = await api_or_error(request, nodes.admin_nodes)
    return out | {
        "hub": hub,
        "hub_error": hub_error,
        "figures": figures,
        "figures_error": figures_error,
        # Shown for a cluster only (a hub alone is one node).
        "cluster": cluster if cluster is None or len(cluster["nodes"]) > 1 else None,
        "cluster_error": cluster_error,
    }


async def _security(request: web.Request, who: Viewer) -> dict[str, Any]:
    page, error = await api_or_error(
        request, eventsapi.list_events, query={"kind": "security", "limit": str(SECURITY_EVENTS)}
    )
    return {"events": page["events"] if page else None, "error": error}


def add_routes(app: web.Application) -> None:
    add_page(app, "/", "Dashboard", "dashboard.html", _page)
    app.router.add_get("/console", page("dashboard.html", "Dashboard", _page))
    app.router.add_get(
        "/console/dashboard/overview", fragment("dashboard_overview.html", _overview)
    )
    app.router.add_get(
        "/console/dashboard/security", fragment("dashboard_security.html", _security)
    )
