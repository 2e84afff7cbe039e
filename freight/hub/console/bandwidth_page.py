"""The bandwidth budget (``/console/bandwidth``): what is in force now and
the day's timetable (``GET /v1/bandwidth``), and a form that changes it
(``PUT /v1/admin/bandwidth``, admins)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import UsageError
from ...units import format_rate
from .. import rest
from ..bandwidth import Budget
from ..streams import minute_of_day
from .core import Viewer, add_page, api_or_error, fragment


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    return {}


def timetable(spec: str) -> list[dict[str, Any]]:
    """The entries of a budget as the API gave it, the one in force marked."""
    try:
        budget = Budget.parse(spec)
    except UsageError:
        return []
    now = minute_of_day()
    current = budget.timetable[-1][0]
    for start, _ in budget.timetable:
        if start <= now:
            current = start
    return [
        {
            "from": f"{start // 60:02d}:{start % 60:02d}",
            "rate": format_rate(rate),
            "now": start == current,
        }
        for start, rate in budget.timetable
    ]


async def _status(request: web.Request, who: Viewer) -> dict[str, Any]:
    status, error = await api_or_error(request, rest.get_bandwidth)
    rows = timetable(str(status["budget"])) if status else []
    return {"status": status, "error": error, "rows": rows}


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/bandwidth", "Bandwidth", "bandwidth.html", _page)
    app.router.add_get("/console/bandwidth/status", fragment("bandwidth_status.html", _status))
