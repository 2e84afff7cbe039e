"""This hub process as one node of a cluster sharing a database and a data
folder (docs/cluster.md).

Every node has a row in the database (:mod:`freight.store.nodes`): its
name, the address clients reach it at, its heartbeat. The heartbeat
(every ``beat`` seconds) also renews the leases of the pushes the node
receives, so a node that dies gives its pushes up within three heartbeats
and another node resumes them from their checkpoints; one that is alive but
lost its client gives them up at once (:meth:`StreamService._push`).

A node serves only while it can vouch for what it says:

* it cannot reach a shared database (PostgreSQL) for two heartbeats, or
  another process took its name: it answers ``503 node_unavailable`` to
  every request and stops receiving pushes, rather than serve a split
  view; it serves again once its heartbeat is written (on SQLite, which
  can be busy but not cut off, a slow heartbeat is only logged);
* an admin drains it (``freight admin drain NODE``, a flag in its row): it
  takes no new requests, closes its control channels ``DRAIN_RATE`` a
  second (their clients attach to another node without a stampede) and
  lets the transfers under way finish.

With one node (the embedded default) none of this shows: the node is named
after the machine and its row is the only one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import ConfigError, Conflict, NodeUnavailable, NotFound, UsageError
from ..store.rows import NodeRow
from ..store.watch import SessionWatch, watchable
from ..tasks import Supervisor
from .clusterbus import ClusterBus, NatsBus, NoBus
from .commands import CommandQueue
from .messaging import Messaging
from .observe import EventLog
from .relay import Router
from .requests import admin_user, current_user
from .streams import StreamService

__all__ = ["BEAT", "DRAIN_RATE", "NodeService", "describe_node"]

BEAT = 3.0  # seconds between heartbeats
SOLO_SWEEP = 20  # a node never in company sweeps for commands every this many beats
MISSED = 2  # heartbeats missed before a node stops serving
# A node's own database session (freight.store.watch): pinged this often,
# each ping given this long; a node writes pushes only while its last good
# ping started less than WATCH_HOLD ago. Another node takes a push over
# from a node whose session has been gone for TAKEOVER_AFTER, by then
# surely longer than that node could write.
WATCH_EVERY = 0.5
WATCH_TIMEOUT = 1.0
WATCH_HOLD = 2.5
TAKEOVER_AFTER = WATCH_HOLD + WATCH_EVERY
DRAIN_RATE = 50  # control channels a draining node closes per second
# Requests a node that does not serve still answers: the cluster's own
# administration (an admin may undo a drain through the drained node), and
# its metrics (monitoring watches a drained node empty).
ALWAYS = ("/v1/admin/nodes", "/v1/nodes", "/metrics")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass(frozen=True)
class NodeSettings:
    name: str
    url: str  # where clients reach this node
    beat: float = BEAT

    @property
    def dead_after(self) -> float:
        """Unseen this long, a node is taken for dead (its leases lapse too)."""
        return 3 * self.beat


def describe_node(row: NodeRow, now: float, dead_after: float) -> dict[str, Any]:
    alive = now - row.seen <= dead_after
    return {
        "name": row.name,
        "url": row.url,
        "state": ("draining" if row.draining else "up") if alive else "down",
        "started": row.started,
        "seen": round(now - row.seen, 1),
        "clients": row.clients,
        "transfers": row.transfers,
        "host": row.host,
        "pid": row.pid,
    }


class NodeService:
    def __init__(
        self,
        db: Any,
        events: EventLog,
        relay: Router,
        streams: StreamService,
        commands: CommandQueue,
        settings: NodeSettings,
        *,
        bus: ClusterBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.events = events
        self.relay = relay
        self.streams = streams
        self.commands = commands
        self.bus: ClusterBus = bus or NoBus()
        self.bus_lost: float | None = None  # since when the bus is out of reach
        self.settings = settings
        self.clock = clock
        self.incarnation = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.last_beat = clock()
        self.why_not = ""  # why this node does not serve ("": it serves)
        self.draining = False
        self.lost_name = False
        self.had_company = False  # another node seen alive since this one started
        self.beats = 0
        # Until when (monotonic) this node may go on writing the pushes it
        # holds: a heartbeat short of their leases, renewed by each one. A
        # node alone on its database (no other beat within a lease) has no
        # one to yield to: for it, for ever.
        self.leased_until = float("inf")
        # And WATCH_HOLD past its last good ping, where there is a session to
        # watch (none on SQLite): no writing until the first.
        engine = getattr(db, "engine", None)
        # A database other machines reach too (PostgreSQL): a node that
        # cannot write its heartbeat there may be cut off from the others
        # and stops serving. An embedded one (SQLite) is only ever this
        # machine's: a slow heartbeat means it is busy, and refusing every
        # client (who then all come back at once) would only make it busier.
        self.shared_db = engine is not None and engine.dialect.name != "sqlite"
        self.watch = (
            SessionWatch(engine, self.incarnation)
            if engine is not None and watchable(engine)
            else None
        )
        self.watched_until = float("inf") if self.watch is None else 0.0
        self.session_lost = False
        self.messaging: Messaging | None = None  # set where the hub is composed

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def lease(self) -> float:
        """How long a push stays this node's without a heartbeat."""
        return self.settings.dead_after

    @property
    def held_until(self) -> float:
        """Until when (monotonic) this node may go on writing its pushes."""
        return min(self.leased_until, self.watched_until)

    @property
    def takeover_after(self) -> float:
        """How long another node's session must be gone before its pushes
        are taken over (``inf``: never, wait for their leases)."""
        return float("inf") if self.watch is None else TAKEOVER_AFTER

    # --- start ----------------------------------------------------------------

    async def register(self, url: str, port: int, *, named: bool = True) -> None:
        """Take this node's row, reached at ``url``; refuse to start as a
        node that runs. A hub not given a name (``named`` False) that finds
        its machine's name taken by another hub on the same database takes
        ``MACHINE-PORT`` instead."""
        self.settings = dataclasses.replace(self.settings, url=url)
        if self.watch is not None:
            await self.watch_once()
            if not self.watched_until:
                raise ConfigError(
                    f"node {self.name} cannot open a session of its own on the database"
                )
        row, taken = await self._row()
        if taken and not named:
            self.settings = dataclasses.replace(self.settings, name=f"{self.name}-{port}")
            if isinstance(self.bus, NatsBus):
                self.bus.node = self.name
            row, taken = await self._row()
        if taken:
            assert row is not None
            raise ConfigError(
                f"node {self.name!r} already runs ({row.host}, pid {row.pid}, "
                f"heartbeat {self.clock() - row.seen:.0f} s ago)",
                hint="give each node of a cluster its own name: freight hub --node NAME",
            )
        await self.db.put_node(
            self.name,
            url=self.settings.url,
            host=self.host,
            pid=os.getpid(),
            incarnation=self.incarnation,
            watched=self.watch is not None,
        )
        self.last_beat = self.clock()
        self.draining = bool(row.draining) if row is not None else False
        if self.relay.places is not None:  # what an earlier life of the node held
            await self.relay.places.clear()
        await self.messaging_home()

    async def _row(self) -> tuple[NodeRow | None, bool]:
        """This node's row as it was left (None: new), and whether a live
        process holds the name."""
        row: NodeRow | None = await self.db.node(self.name)
        if row is None or self.clock() - row.seen > self.settings.dead_after:
            return row, False
        gone = row.host == self.host and (row.pid == os.getpid() or not pid_alive(row.pid))
        return row, not gone

    # --- heartbeat ----------------------------------------------------------------

    async def run(self) -> None:
        # A heartbeat may outlive its own timeout (a driver that does not
        # heed the cancellation, e.g. rolling back on a frozen connection):
        # the rule for missed heartbeats is then applied on the clock while
        # it hangs, and the next waits for it. One that fails is logged by
        # the supervisor and the next goes as usual.
        async with Supervisor("node-heartbeat") as beats:
            while True:
                await asyncio.sleep(self.settings.beat)
                beat = beats.spawn(self.beat_once(), name="beat", detached=True)
                while not beat.done():
                    await asyncio.wait({beat}, timeout=self.settings.beat)
                    if not beat.done():
                        self._missed()

    async def beat_once(self) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.beat):
                got = await self.db.beat_and_count(
                    self.name,
                    self.incarnation,
                    clients=len(self.relay.attachments),
                    transfers=len(self.streams.receiving),
                    lease_for=self.lease,
                )
        except Exception as exc:  # the database is out of reach (any driver's error)
            self.events.log.warning("node_heartbeat_failed", node=self.name, error=repr(exc))
            self._missed()
            return
        if got is None:
            self.lost_name = True
            self.leased_until = 0.0
            self._stop_serving(f"another process now runs as node {self.name}")
            return
        row, others = got
        self.leased_until = started + self.lease - self.settings.beat if others else float("inf")
        self.last_beat = self.clock()
        if not self._bus_ok():
            return
        if self.why_not and not self.lost_name:
            self.why_not = ""
            self.events.log.warning("node_serving_again", node=self.name)
        if bool(row.draining) != self.draining:
            self.draining = bool(row.draining)
            await self.events.emit(
                "node_draining" if self.draining else "node_serving", "hub", target=self.name
            )
            if self.draining:
                self.relay.spawn(self._close_channels())
        # Commands queued on another node for agents attached here (the bus
        # tells at once; this catches what it did not). A node alone since it
        # started queued every command itself and handed it over at once or
        # when its agent attached: it asks only every SOLO_SWEEP-th beat, as
        # a safety net (with 10,000 agents attached, asking at every beat was
        # a tenth of an idle hub's CPU).
        self.had_company = self.had_company or others > 0
        self.beats += 1
        if self.had_company or self.beats % SOLO_SWEEP == 0:
            agents = [a.user.id for a in self.relay.attachments if a.commands and not a.closed]
            if agents:
                await self.commands.sweep(agents, created_before=self.clock() - self.settings.beat)
        try:  # relayed connections' ends waiting here for what another node holds
            await self.relay.recheck_places()
            await self.messaging_home()
        except Exception as exc:  # the database went away meanwhile: next beat
            self.events.log.warning("relay_recheck_failed", error=repr(exc))

    async def messaging_home(self) -> None:
        """Messaging happens on one node of a cluster: which one, now (a
        drained node keeps what it knew: it takes no hosts anyway)."""
        if self.relay.places is not None and self.messaging is not None and not self.draining:
            self.messaging.homed(await self.relay.places.home())

    def _missed(self) -> None:
        """No heartbeat written lately: on a shared database, after MISSED
        of them, this node may be cut off from the others and stops serving
        (on SQLite the database is busy, not out of reach: see shared_db)."""
        if self.shared_db and self.clock() - self.last_beat > MISSED * self.settings.beat:
            self._stop_serving(f"node {self.name} cannot reach the database")

    def _bus_ok(self) -> bool:
        """False (and not serving) once the bus is out of reach for two beats."""
        if self.bus.healthy():
            self.bus_lost = None
            return True
        now = self.clock()
        self.bus_lost = self.bus_lost or now
        if now - self.bus_lost > MISSED * self.settings.beat:
            self._stop_serving(f"node {self.name} cannot reach the cluster's bus (NATS)")
            return False
        return True

    def _stop_serving(self, why: str) -> None:
        if self.why_not == why:
            return
        self.why_not = why
        self.events.log.error("node_not_serving", node=self.name, reason=why)
        self._give_up_pushes()
        self.relay.spawn(self._close_channels())

    def _give_up_pushes(self) -> None:
        """Pushes stop before their leases lapse: another node resumes them."""
        for task in list(self.streams.receiving.values()):
            task.cancel()

    # --- this node's own session ------------------------------------------------

    async def watch_run(self) -> None:
        while self.watch is not None:
            await asyncio.sleep(WATCH_EVERY)
            await self.watch_once()

    async def watch_once(self) -> None:
        """Ping this node's session; on failure stop writing pushes at once
        (other nodes may take them over once the session is gone)."""
        assert self.watch is not None
        started = time.monotonic()
        try:
            async with asyncio.timeout(WATCH_TIMEOUT):
                await self.watch.ping()
        except Exception as exc:  # any driver's error, or the timeout
            await self.watch.drop()
            if self.watched_until:
                self.watched_until = 0.0
                self.session_lost = True
                self.events.log.warning("node_session_lost", node=self.name, error=repr(exc))
                self._give_up_pushes()
            return
        if self.session_lost:
            self.session_lost = False
            self.events.log.warning("node_session_back", node=self.name)
        self.watched_until = started + WATCH_HOLD

    async def gone(self, node: str) -> bool:
        """Whether node ``node``'s process surely no longer runs: its
        session left the database (False where that cannot be seen)."""
        if self.watch is None or node == self.name:
            return False
        gone: bool = await self.db.node_gone(node)
        return gone

    async def _close_channels(self) -> None:
        """Close the control channels (their clients attach elsewhere),
        ``DRAIN_RATE`` a second; transfers on data connections go on."""
        for i, att in enumerate(list(self.relay.attachments)):
            if i and i % DRAIN_RATE == 0:
                await asyncio.sleep(1.0)
            if not (self.draining or self.why_not):
                return  # undrained meanwhile
            await att.chan.aclose()

    async def live_nodes(self) -> set[str]:
        """The other nodes whose heartbeat is recent (none for a hub alone)."""
        now = self.clock()
        rows = await self.db.nodes()
        return {
            r.name for r in rows if r.name != self.name and now - r.seen <= self.settings.dead_after
        }

    async def close(self) -> None:
        await self.bus.close()
        if self.watch is not None:
            await self.watch.aclose()

    # --- serving ----------------------------------------------------------------------

    def refusal(self) -> NodeUnavailable | None:
        """Why this node takes no new work now, if it does not."""
        if self.why_not:
            return NodeUnavailable(f"{self.why_not}; try another node")
        if self.draining:
            return NodeUnavailable(f"node {self.name} is being drained; use another node")
        return None

    def middleware(self) -> Any:
        @web.middleware
        async def node_gate(request: web.Request, handler: Any) -> web.StreamResponse:
            refusal = self.refusal()
            if refusal is not None and not request.path.startswith(ALWAYS):
                raise refusal
            return await handler(request)

        return node_gate


# --- routes ---------------------------------------------------------------------------

NODES: web.AppKey[NodeService] = web.AppKey("nodes", NodeService)


def _node_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name or len(name) > 64:
        raise UsageError("a node name has 1 to 64 characters")
    return name


async def list_nodes(request: web.Request) -> web.Response:
    """The nodes a client may attach to, for its list of addresses."""
    await current_user(request)
    svc = request.app[NODES]
    now = svc.clock()
    rows = await svc.db.nodes()
    out = [describe_node(r, now, svc.settings.dead_after) for r in rows]
    return web.json_response(
        {"nodes": [{"name": n["name"], "url": n["url"], "state": n["state"]} for n in out]}
    )


async def admin_nodes(request: web.Request) -> web.Response:
    await admin_user(request)
    svc = request.app[NODES]
    now = svc.clock()
    rows = await svc.db.nodes()
    return web.json_response(
        {"me": svc.name, "nodes": [describe_node(r, now, svc.settings.dead_after) for r in rows]}
    )


async def drain(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    svc = request.app[NODES]
    name = _node_name(request)
    draining = request.method == "POST"
    if not await svc.db.set_draining(name, draining):
        raise NotFound(f"there is no node {name!r}; freight admin nodes lists them")
    await svc.events.emit("node_drain" if draining else "node_undrain", admin.name, target=name)
    if name == svc.name:  # at once here; the others see it at their next heartbeat
        await svc.beat_once()
    return web.json_response({"node": name, "draining": draining})


async def forget(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    svc = request.app[NODES]
    name = _node_name(request)
    if not await svc.db.forget_node(name, unseen_since=svc.clock() - svc.settings.dead_after):
        if await svc.db.node(name) is None:
            raise NotFound(f"there is no node {name!r}")
        raise Conflict(f"node {name!r} is up; drain and stop it before removing it")
    await svc.db.clear_places(name)
    await svc.events.emit("node_removed", admin.name, target=name)
    return web.json_response({"removed": name})


def add_routes(app: web.Application, svc: NodeService) -> None:
    app[NODES] = svc
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/admin/nodes", admin_nodes)
    app.router.add_post("/v1/admin/nodes/{name}/drain", drain)
    app.router.add_delete("/v1/admin/nodes/{name}/drain", drain)
    app.router.add_delete("/v1/admin/nodes/{name}", forget)
