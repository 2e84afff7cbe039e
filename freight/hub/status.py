"""``GET /v1/admin/status``: the hub itself at a glance, for admins: its
version, node name, when it started and for how long it has run, and the
free and total space of its data folder's file system."""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

from aiohttp import web

from .. import __version__
from ..protocol.limits import PROTOCOL_VERSION
from .requests import admin_user
from .services import STATE

STARTED: web.AppKey[float] = web.AppKey("started", float)


async def hub_status(request: web.Request) -> web.Response:
    await admin_user(request)
    st = request.app[STATE]
    started = request.app[STARTED]
    disk = await asyncio.to_thread(shutil.disk_usage, st.layout.root)
    out: dict[str, Any] = {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "node": st.node,
        "started": started,
        "uptime": round(time.time() - started, 3),
        "data_free": disk.free,
        "data_total": disk.total,
    }
    return web.json_response(out)


def add_routes(app: web.Application) -> None:
    app[STARTED] = time.time()
    app.router.add_get("/v1/admin/status", hub_status)
