"""Collection (``/console/collection``): the policies (``GET
/v1/collect/policies``), the totals (``GET /v1/collected/stats``) and the
most recently changed collected files (``GET /v1/collected``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import collectapi
from .core import Viewer, add_page, api_or_error, fragment

RECENT = 50  # collected files shown


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


def _newest(entry: dict[str, Any]) -> float:
    return max((float(h.get("mtime") or 0) for h in entry.get("holders", [])), default=0.0)


async def _content(request: web.Request, who: Viewer) -> dict[str, Any]:
    policies, policies_error = await api_or_error(request, collectapi.list_policies)
    stats, stats_error = await api_or_error(request, collectapi.stats)
    files, files_error = await api_or_error(request, collectapi.collected, query={})
    recent = sorted(files or [], key=_newest, reverse=True)[:RECENT]
    return {
        "policies": policies,
        "policies_error": policies_error,
        "stats": stats,
        "stats_error": stats_error,
        "files": recent,
        "total_files": len(files or []),
        "files_error": files_error,
        "newest": _newest,
    }


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/collection", "Collection", "collection.html", _page, admin=True)
    app.router.add_get("/console/collection/content", fragment("collection_content.html", _content))
