"""Tunnels at the hub (docs/protocol.md §18): which names each user exposes
and to whom, the checks on every dial of a tunnel connection, the admin's
list of tunnel connections, and their metrics.

A tunnel connection is a relayed connection (§12) whose application is
``tunnel.TAG.PROTO:SERVICE``; the relay pairs and forwards it like any
other, and this service is asked first, on every dial of one (fresh or
rejoin), whether it may exist:

* ``SERVICE`` = ``HOST:PORT``: only an agent serves it (the agent checks
  its own allow list and refuses anything else, §18.3);
* ``SERVICE`` = ``NAME``: the peer must expose ``NAME`` now and list the
  dialling account (``--allow``); otherwise ``forbidden``, recorded as a
  ``security`` event.

Every table here is bounded: exposed names per account and in all,
metric label sets (tunnels beyond the bound are counted under ``other``).
The registry lives in memory: an exposing client registers its names again
after every re-attach (a hub restart forgets them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from ..errors import LimitReached, NotFound, UsageError
from ..names import check_user_name
from ..protocol import messages as m
from ..protocol.e2e import ACCEPT, DIAL
from ..protocol.relaycodes import RefusalCode
from ..protocol.tunnel import (
    EXPOSE_PREFIX,
    MalformedTunnelMessage,
    TunnelApp,
    parse_app,
    parse_name,
)
from .observe import EventLog, Metrics
from .relayconn import Conn, RelayRefused
from .requests import admin_user, current_user
from .requests import json_object as _json
from .streams import User

MAX_EXPOSED_PER_USER = 64
MAX_EXPOSED = 10_000
MAX_ALLOWED = 64  # accounts one exposed name lists
MAX_LABELS = 1000  # distinct tunnels counted by name in /metrics


@dataclass
class Exposed:
    owner: str
    name: str
    allow: frozenset[str]  # account names; "*": every account
    since: float = field(default_factory=time.time)

    def allows(self, user: str) -> bool:
        return "*" in self.allow or user in self.allow

    def describe(self) -> dict[str, Any]:
        return {"owner": self.owner, "name": self.name, "allow": sorted(self.allow)}


class TunnelMetrics:
    """Bytes, connections and errors per tunnel (``DIALLER>PEER:SERVICE``)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.conns = Counter(
            "freight_tunnel_connections", "Tunnel connections opened", ["tunnel"], registry=r
        )
        self.bytes = Counter(
            "freight_tunnel_bytes",
            "Bytes relayed by ended tunnel connections",
            ["tunnel"],
            registry=r,
        )
        self.errors = Counter(
            "freight_tunnel_errors",
            "Tunnel connections refused or ended by an error",
            ["tunnel"],
            registry=r,
        )
        self._labels: set[str] = set()

    def label(self, dialler: str, peer: str, service: str) -> str:
        name = f"{dialler}>{peer}:{service}"
        if name in self._labels:
            return name
        if len(self._labels) >= MAX_LABELS:
            return "other"
        self._labels.add(name)
        return name


class TunnelService:
    def __init__(self, relay: Any, events: EventLog, metrics: Metrics) -> None:
        self.relay = relay
        self.events = events
        self.metrics = TunnelMetrics(metrics)
        self.exposed: dict[tuple[str, str], Exposed] = {}
        self.per_user: dict[str, int] = {}
        relay.dial_checks.append(self.check_dial)
        relay.on_linked.append(self.linked)
        relay.on_closed.append(self.closed)
        relay.detach_hooks.append(self.detached)

    # --- the registry ---------------------------------------------------------

    def expose(self, owner: str, name: str, allow: list[str], takeover: bool = False) -> Exposed:
        """Register (or update) ``owner``'s ``name``. ``takeover``: the
        account's listener for it on another attachment (a process that
        died before the hub noticed) is dropped, so this one may listen."""
        key = (owner, name)
        if takeover:
            self.relay.drop_listener(owner, EXPOSE_PREFIX + name)
        if key not in self.exposed:
            if self.per_user.get(owner, 0) >= MAX_EXPOSED_PER_USER:
                raise LimitReached(
                    f"you expose {MAX_EXPOSED_PER_USER} names already (the hub's limit); "
                    "stop one first"
                )
            if len(self.exposed) >= MAX_EXPOSED:
                raise LimitReached("the hub holds as many exposed names as it may; try later")
            self.per_user[owner] = self.per_user.get(owner, 0) + 1
        entry = Exposed(owner, name, frozenset(allow))
        self.exposed[key] = entry
        return entry

    def unexpose(self, owner: str, name: str) -> bool:
        if self.exposed.pop((owner, name), None) is None:
            return False
        left = self.per_user.get(owner, 1) - 1
        if left:
            self.per_user[owner] = left
        else:
            self.per_user.pop(owner, None)
        return True

    def detached(self, att: Any) -> None:
        """An attachment went: the names its account exposes that nobody of
        the account listens for any more are forgotten (a client that comes
        back registers them again)."""
        owner = att.user.name
        if owner not in self.per_user:
            return
        for key in [k for k in self.exposed if k[0] == owner]:
            if (owner, EXPOSE_PREFIX + key[1]) not in self.relay.listeners:
                self.unexpose(owner, key[1])

    # --- dials ------------------------------------------------------------------

    async def check_dial(self, att: Any, msg: m.Dial, peer: User | None) -> User | None:
        """Raise RelayRefused if ``msg`` (a dial of a tunnel connection by
        ``att``) may not exist. Other applications pass. Returns the peer's
        account when it was looked up (the relay then needs no second look)."""
        try:
            app = parse_app(msg.app)
        except MalformedTunnelMessage as exc:
            raise RelayRefused(RefusalCode.USAGE, exc.message) from None
        if app is None or msg.role != DIAL:
            return peer
        me = att.user.name
        label = self.metrics.label(me, msg.peer, app.service)
        if app.name and msg.rejoin:
            return peer  # a connection that existed (the exposing end checks its peer again)
        if app.name:
            entry = self.exposed.get((msg.peer, app.name))
            if entry is None:
                self.metrics.errors.labels(label).inc()
                raise RelayRefused(
                    RefusalCode.FORBIDDEN,
                    f"{msg.peer} exposes no tunnel named {app.name!r} (or is not running it)",
                )
            if not entry.allows(me):
                self.metrics.errors.labels(label).inc()
                await self.events.emit(
                    "security",
                    me,
                    op="tunnel",
                    peer=msg.peer,
                    path=app.name,
                    reason="not on the exposed name's --allow list",
                )
                raise RelayRefused(
                    RefusalCode.FORBIDDEN,
                    f"{msg.peer} does not allow you to use tunnel {app.name!r}",
                )
            return peer
        if peer is None:
            peer = await self.relay.user_named(msg.peer)
        if peer.role != "agent":
            self.metrics.errors.labels(label).inc()
            raise RelayRefused(
                RefusalCode.USAGE,
                f"{msg.peer} is not an agent: only agents forward to HOST:PORT; ask "
                f"{msg.peer} to run: freight expose NAME {app.service}",
            )
        return peer

    def linked(self, conn: Conn, rejoined: bool) -> None:
        app = _app(conn)
        if app is not None and not rejoined:
            self.metrics.conns.labels(self._label(conn, app)).inc()

    def closed(self, conn: Conn, code: str, by: str) -> None:
        app = _app(conn)
        if app is None:
            return
        label = self._label(conn, app)
        self.metrics.bytes.labels(label).inc(conn.relayed[DIAL] + conn.relayed[ACCEPT])
        if code not in ("closed", "replaced"):
            self.metrics.errors.labels(label).inc()

    def _label(self, conn: Conn, app: TunnelApp) -> str:
        return self.metrics.label(conn.users[DIAL].name, conn.users[ACCEPT].name, app.service)

    # --- the admin's view --------------------------------------------------------------

    def live(self) -> Iterator[tuple[Conn, TunnelApp]]:
        for conn in self.relay.live():
            app = _app(conn)
            if app is not None:
                yield conn, app

    def describe(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for conn, app in self.live():
            row = conn.describe(now)
            elapsed = max(now - conn.started, 1e-3)
            row.update(
                proto="udp" if app.udp else "tcp",
                target=app.service,
                kind="expose" if app.name else "forward",
                rate=round((conn.relayed[DIAL] + conn.relayed[ACCEPT]) / elapsed),
            )
            rows.append(row)
        return rows


def _app(conn: Conn) -> TunnelApp | None:
    try:
        return parse_app(conn.app)
    except MalformedTunnelMessage:
        return None


# --- REST ---------------------------------------------------------------------------

TUNNELS: web.AppKey[TunnelService] = web.AppKey("tunnels", TunnelService)


async def put_exposed(request: web.Request) -> web.Response:
    """``PUT /v1/tunnels/exposed/{name}`` ``{"allow": [USER, …]}``."""
    user = await current_user(request)
    try:
        name = parse_name(request.match_info["name"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    body = await _json(request)
    allow = body.get("allow", [])
    if (
        not isinstance(allow, list)
        or not allow
        or len(allow) > MAX_ALLOWED
        or not all(isinstance(a, str) for a in allow)
    ):
        raise UsageError(f"allow: a list of 1 to {MAX_ALLOWED} account names (or '*')")
    names = [a if a == "*" else check_user_name(a) for a in allow]
    takeover = body.get("takeover") is True
    entry = request.app[TUNNELS].expose(user.name, name, names, takeover)
    return web.json_response(entry.describe())


async def delete_exposed(request: web.Request) -> web.Response:
    user = await current_user(request)
    if not request.app[TUNNELS].unexpose(user.name, request.match_info["name"]):
        raise NotFound(f"you expose no tunnel named {request.match_info['name']!r}")
    return web.json_response({"ok": True})


async def list_exposed(request: web.Request) -> web.Response:
    user = await current_user(request)
    svc = request.app[TUNNELS]
    everyone = user.role == "admin" and request.query.get("all") == "1"
    rows = [e.describe() for e in svc.exposed.values() if everyone or e.owner == user.name]
    return web.json_response(rows)


async def list_tunnels(request: web.Request) -> web.Response:
    await admin_user(request)
    return web.json_response(request.app[TUNNELS].describe(time.time()))


def add_routes(app: web.Application, service: TunnelService) -> None:
    app[TUNNELS] = service
    app.router.add_get("/v1/tunnels/exposed", list_exposed)
    app.router.add_put("/v1/tunnels/exposed/{name}", put_exposed)
    app.router.add_delete("/v1/tunnels/exposed/{name}", delete_exposed)
    app.router.add_get("/v1/admin/tunnels", list_tunnels)
