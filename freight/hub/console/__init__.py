"""The hub's web console: server-rendered pages (Jinja2, htmx, server-sent
events) over the same JSON API the CLI uses. :func:`add_routes` puts it in
the hub's web application (:func:`freight.hub.compose.build_app`)."""

from __future__ import annotations

from aiohttp import web

from ..requests import CSRF, CsrfKey
from ..services import STATE
from . import (
    agents_page,
    approvals_page,
    bandwidth_page,
    collection,
    connections,
    dashboard,
    observepages,
    session,
    users_page,
)
from .core import STATIC, security_headers
from .stream import FEED, Feed, stream

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    hub = app[STATE]
    app[CSRF] = CsrfKey(hub.db)
    feed = Feed()
    app[FEED] = feed
    hub.events.listen(feed.changed)

    async def stop_streams(_: web.Application) -> None:
        feed.close()

    app.on_shutdown.append(stop_streams)
    app.on_response_prepare.append(security_headers)
    app.router.add_static("/console/static", STATIC, append_version=False)
    app.router.add_get("/console/stream", stream)
    session.add_routes(app)
    dashboard.add_routes(app)  # first: the navigation bar follows this order
    connections.add_routes(app)
    users_page.add_routes(app)
    approvals_page.add_routes(app)
    agents_page.add_routes(app)
    collection.add_routes(app)
    bandwidth_page.add_routes(app)
    observepages.add_routes(app)
