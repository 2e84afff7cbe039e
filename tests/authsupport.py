"""Helpers for the account tests: raw REST calls to a real hub from a chosen
loopback source address (the hub keys its login limits by address, and
127.0.0.2 is another machine as far as it can tell), one at a time or many
at once, and the hub's saved state as a client or the database sees it."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import Client, Hub

OTHER_ADDRESS = "127.0.0.2"


def _insecure() -> ssl.SSLContext:
    # The tests reach the hub by its pinned fingerprint elsewhere; here
    # only what the hub answers matters.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Rest:
    """One keep-alive HTTPS connection to ``hub`` from ``source``."""

    def __init__(self, hub: Hub, source: str = "127.0.0.1") -> None:
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", hub.port, source_address=(source, 0), context=_insecure(), timeout=30
        )

    def call(
        self, method: str, path: str, body: Any = None, *, token: str = ""
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.getheaders())

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Rest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rest(
    hub: Hub,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str = "",
    source: str = "127.0.0.1",
) -> tuple[int, Any]:
    with Rest(hub, source) as r:
        status, answer, _ = r.call(method, path, body, token=token)
        return status, answer


def burst(hub: Hub, path: str, bodies: list[Any], source: str = "127.0.0.1") -> list[int]:
    """POST every body at once (one connection each); the statuses."""

    async def go() -> list[int]:
        connector = aiohttp.TCPConnector(ssl=_insecure(), local_addr=(source, 0), limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(body: Any) -> int:
                async with http.post(f"{hub.url}{path}", json=body) as resp:
                    await resp.read()
                    return resp.status

            return list(await asyncio.gather(*(one(b) for b in bodies)))

    return asyncio.run(go())


def token_of(client: Client) -> str:
    """The bearer token ``client`` saved at login."""
    cfg = json.loads((client.config / "config.json").read_text())
    return str(cfg["hubs"][cfg["hub"]]["token"])


def events(hub: Hub, admin_token: str, kind: str) -> list[dict[str, Any]]:
    status, page = rest(hub, "GET", f"/v1/admin/events?kind={kind}&limit=1000", token=admin_token)
    assert status == 200, page
    return list(page["events"])


def db_rows(hub: Hub, sql: str) -> list[tuple[Any, ...]]:
    """Read the hub's SQLite database directly (WAL lets us beside it)."""
    con = sqlite3.connect(f"file:{Path(hub.data) / 'freight.db'}?mode=ro", uri=True)
    try:
        return list(con.execute(sql).fetchall())
    finally:
        con.close()
