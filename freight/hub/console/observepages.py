"""The console's Events and Transfers pages and the dashboard's throughput
chart, over the same JSON API as ``freight events``, ``freight transfers``
and ``freight status``.

Events (``/console/events``): the log's filters as a plain GET form,
column headers that sort, a next-page link by cursor, and export links to
``/v1/admin/events?format=csv|json`` with the same filters; the first
page refreshes on the ``events`` topic of the live stream. Transfers
(``/console/transfers``): what is in flight with a ``<progress>`` bar,
rate and ETA, and the recent finished ones with their digest verdict,
refreshed on ``transfers``. The chart is inline SVG drawn here (no script,
no inline style: the policy forbids both)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .. import eventsapi, observeapi
from .core import Viewer, add_page, api_or_error, fragment

FILTERS = ("kind", "actor", "agent", "address", "since", "until", "q")
PAGE = 50
DONE_SHOWN = 20
CHART_W, CHART_H = 600, 120  # the chart's drawing box (SVG units)


def _params(request: web.Request) -> dict[str, str]:
    """The page's filters, sort and cursor, as the API takes them."""
    q = request.query
    out = {n: ",".join(v for v in q.getall(n) if v) for n in FILTERS if n in q}
    out = {n: v for n, v in out.items() if v}
    if q.get("sort"):
        out["sort"] = q["sort"]
    if q.get("cursor"):
        out["cursor"] = q["cursor"]
    return out


def _sort_links(params: dict[str, str]) -> dict[str, str]:
    """Per sortable column, the page's address sorted by it (again: reversed)."""
    current = params.get("sort", "-ts")
    filters = {n: v for n, v in params.items() if n in FILTERS}
    links = {}
    for col in ("ts", "kind", "actor"):
        sort = ("-" + col) if current != "-" + col else col
        links[col] = "/console/events?" + urlencode({**filters, "sort": sort})
    return links


async def _events(request: web.Request, who: Viewer) -> dict[str, Any]:
    params = _params(request)
    data, error = await api_or_error(
        request, eventsapi.list_events, query={**params, "limit": str(PAGE)}
    )
    base = {n: v for n, v in params.items() if n != "cursor"}
    nxt = data["next"] if data else None
    export = {n: v for n, v in base.items() if n in FILTERS or n == "sort"}
    return {
        "form": {n: request.query.get(n, "") for n in FILTERS},
        "sort": params.get("sort", "-ts"),
        "sort_links": _sort_links(params),
        "events": data["events"] if data else None,
        "error": error,
        "next_link": "/console/events?" + urlencode({**base, "cursor": nxt}) if nxt else "",
        "first_link": "/console/events?" + urlencode(base) if "cursor" in params else "",
        "live": "cursor" not in params,
        "table_src": "/console/events/table?" + urlencode(params),
        "csv_link": "/v1/admin/events?" + urlencode({**export, "format": "csv"}),
        "json_link": "/v1/admin/events?" + urlencode({**export, "format": "json"}),
    }


async def _transfers(request: web.Request, who: Viewer) -> dict[str, Any]:
    live, live_error = await api_or_error(request, observeapi.list_transfers, query={})
    done, done_error = await api_or_error(
        request, observeapi.list_transfers, query={"state": "done", "limit": str(DONE_SHOWN)}
    )
    return {
        "live": live["transfers"] if live else None,
        "live_error": live_error,
        "done": done["transfers"] if done else None,
        "done_error": done_error,
    }


def chart_points(samples: list[dict[str, float]]) -> tuple[str, float]:
    """The SVG polyline points of an hour's one-minute throughputs (the
    last sample at the right edge), and the top of the scale."""
    values = [float(s["bytes_per_second"]) for s in samples][-60:]
    top = max(values, default=0.0) or 1.0
    step = CHART_W / 59
    start = 60 - len(values)
    points = [
        f"{(start + i) * step:.1f},{CHART_H - v / top * CHART_H:.1f}" for i, v in enumerate(values)
    ]
    return " ".join(points), top


async def _throughput(request: web.Request, who: Viewer) -> dict[str, Any]:
    if not who.admin:
        return {"overview": None, "error": ""}
    overview, error = await api_or_error(request, observeapi.overview, query={})
    points, top = chart_points(overview["hour"]) if overview else ("", 0.0)
    return {
        "overview": overview,
        "error": error,
        "points": points,
        "top": top,
        "width": CHART_W,
        "height": CHART_H,
    }


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/events", "Events", "events.html", _events)
    app.router.add_get("/console/events/table", fragment("events_table.html", _events))
    add_page(app, "/console/transfers", "Transfers", "transfers.html", _transfers)
    app.router.add_get("/console/transfers/table", fragment("transfers_table.html", _transfers))
    app.router.add_get(
        "/console/dashboard/throughput", fragment("dashboard_throughput.html", _throughput)
    )
