"""The hub's composition root: :func:`build_hub` builds every service once
from a :class:`HubConfig`, each with only what it needs, wires the
control-channel handlers into the dispatcher and the command queue's
subscribers; :func:`build_app` puts the services under their typed keys in
the web application and adds every route. Nothing is started here (see
:mod:`.server`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ConfigError, StorageError
from ..protocol.limits import CHECKPOINT_INTERVAL
from ..protocol.msgdirectory import DEFAULT_WARMUP
from ..store import Database, DataLayout
from ..store.bucket import Bucket, BucketSpec
from ..tasks import Supervisor
from . import (
    agents,
    approvals,
    auth,
    channels,
    collectapi,
    console,
    eventsapi,
    httpattach,
    keys,
    messaging,
    nodes,
    observeapi,
    openapi,
    rest,
    status,
    tls,
    tunnels,
    users,
)
from . import links as link_routes
from .appgate import AppGate
from .bandwidth import BandwidthManager, Budget
from .caps import DEFAULT_ATTACH_RATE, DEFAULT_CONNECTIONS, DEFAULT_STREAMS, AccountCaps, AttachPace
from .challenges import ChallengeBook
from .clusterbus import ClusterBus, NatsBus, NoBus
from .collect import Collector
from .commands import CommandQueue
from .compression import CompressionPolicy
from .core import Core
from .dispatch import Dispatcher
from .guard import PortGuard, PortLimits, deadlines_middleware
from .limiter import LoginGuard
from .nodes import BEAT, NodeService, NodeSettings
from .observe import EventLog, Metrics
from .places import Places
from .probe import ProbeService
from .relay import Router
from .requests import errors_middleware
from .services import STATE, Hub, Identity, install
from .sessions import LiveSessions
from .streams import StreamService
from .tickets import TicketBook
from .transfers import TransferBoard


@dataclass
class HubConfig:
    data: Path
    host: str = "127.0.0.1"
    port: int = 8443
    bandwidth: str | None = None  # None: keep what an admin set last
    compress: str | None = None  # the level asked of pushes; None: what an admin set last
    compress_busy: float = 2.0  # load per processor from which that level steps down
    purge_after: float = 72 * 3600.0
    database_url: str | None = None  # default: SQLite inside the data folder
    checkpoint_interval: int = CHECKPOINT_INTERVAL
    # A certificate to serve instead of the self-signed one in the data folder.
    cert: Path | None = None
    key: Path | None = None
    collect_reserve: int = 1 << 30  # free disk below which collection pauses
    relay_window: int = 4 * 1024 * 1024  # bytes held per relayed connection and direction
    limits: PortLimits = field(default_factory=PortLimits)  # sockets and deadlines
    account_connections: int = DEFAULT_CONNECTIONS  # per account, open at once
    account_streams: int = DEFAULT_STREAMS
    attach_rate: float = DEFAULT_ATTACH_RATE  # control channels taken a second (0: any)
    token_lifetime: float = auth.TOKEN_LIFETIME  # seconds a login lasts
    login_lockout: float = 30.0  # first lockout after too many failures (doubles)
    relay_queue: int = 32 * 1024 * 1024  # bytes held for one attached client before pausing
    max_relay_connections: int = 256  # relayed connections one account may have open
    max_codes: int = 64  # valid one-time codes one account may hold
    msg_warmup: float = DEFAULT_WARMUP  # seconds after start when empty routes answer retry
    registration: str = "off"  # POST /v1/register: off, open or approval
    app_approval: bool = False  # a new application name waits for an admin's approval
    max_pending: int = 1000  # registrations (and application names) waiting at once
    node: str = ""  # this node's name in a cluster; default: the machine's name
    advertise: str = ""  # the address clients reach this node at; default: from the listener
    node_beat: float = BEAT  # seconds between a node's heartbeats
    bus: str = ""  # nats://… : the cluster's nodes tell each other at once
    blobs: str = ""  # s3://BUCKET/PREFIX: stored files' bytes there (default: the data folder)
    s3_endpoint: str = ""  # an S3-compatible server's URL (default: AWS's)
    blobs_grace: float = 3600.0  # seconds before unnamed content in the bucket is removed

    def tls_files(self, layout: DataLayout) -> tuple[Path, Path]:
        """The certificate and key the listener serves."""
        if self.cert is not None and self.key is not None:
            return self.cert, self.key
        return layout.cert_path, layout.key_path


def say(text: str) -> None:
    """Start-up messages for the person who started the hub."""
    print(text, file=sys.stderr, flush=True)


async def ensure_admin(db: Database) -> None:
    if await db.user_count():
        return
    password = os.environ.get("FREIGHT_ADMIN_PASSWORD")
    generated = not password
    if not password:
        password = secrets.token_urlsafe(12)
    await db.add_user("admin", await asyncio.to_thread(auth.hash_password, password), "admin")
    if generated:
        say(f"Created user 'admin' with password: {password}  (shown once; change it)")
    else:
        say("Created user 'admin' with the password from FREIGHT_ADMIN_PASSWORD")


def socket_budget(wanted: int) -> int:
    """How many sockets the hub may hold: ``wanted``, within the process's
    file limit (raised towards its hard limit when needed), less a reserve
    for the database, files being written and the listener itself."""
    reserve = 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted + reserve:
        target = wanted + reserve if hard == resource.RLIM_INFINITY else min(hard, wanted + reserve)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - reserve))


def identity(cfg: HubConfig, layout: DataLayout) -> Identity:
    """The certificate the hub serves (a self-signed one created in the data
    folder on first start) and its fingerprint."""
    if cfg.cert is None and tls.ensure_certificate(layout.cert_path, layout.key_path):
        say(f"Created a self-signed TLS certificate in {layout.tls_dir}")
    cert, key = cfg.tls_files(layout)
    return Identity(
        node=cfg.node or socket.gethostname(),
        cert=cert,
        key=key,
        fingerprint=tls.fingerprint_pem(cert),
        ssl_context=tls.server_context(cert, key),
    )


def port_guard(limits: PortLimits) -> PortGuard:
    budget = socket_budget(limits.max_connections)
    if budget < limits.max_connections:
        say(f"At most {budget} connections: the process may open only so many files")
        limits = dataclasses.replace(limits, max_connections=budget)
    return PortGuard(limits)


async def open_database(cfg: HubConfig, layout: DataLayout) -> Database:
    if cfg.database_url:
        db = Database(cfg.database_url)
    else:
        layout.create_database()
        db = Database.sqlite(layout.db_path)
    try:
        await db.migrate()
    except (SQLAlchemyError, OSError) as exc:  # the server, the name, the rights
        await db.close()
        if not cfg.database_url:
            raise
        url = make_url(cfg.database_url)
        where = f"{url.host}:{url.port}" if url.port else f"{url.host}"
        reason = getattr(exc, "orig", None) or exc
        raise ConfigError(
            f"cannot open the hub's database at {where}/{url.database}: "
            f"{str(reason) or type(reason).__name__}",
            hint="check --database-url (server, port, user, password, database name); "
            "a PostgreSQL database is made with: createdb NAME",
        ) from None
    await ensure_admin(db)
    return db


async def open_bucket(cfg: HubConfig, db: Database) -> Bucket | None:
    """The bucket of ``--blobs``, checked to answer; a hub that cannot
    reach it refuses to start (its database is closed)."""
    if not cfg.blobs:
        return None
    try:
        return await Bucket.open(BucketSpec.parse(cfg.blobs, cfg.s3_endpoint or None))
    except (StorageError, ConfigError) as exc:
        await db.close()
        raise ConfigError(exc.message, hint=exc.hint) from None


async def build_hub(cfg: HubConfig) -> Hub:
    """Every service of one hub, built once; nothing runs yet. The certificate
    is checked before the database is opened, so a bad one leaves nothing open."""
    layout = DataLayout(cfg.data)
    layout.create()
    me = identity(cfg, layout)
    db = await open_database(cfg, layout)
    spec = (
        cfg.bandwidth if cfg.bandwidth is not None else (await db.get_setting("bandwidth") or "off")
    )
    bandwidth = BandwidthManager(Budget.parse(spec))
    events = EventLog(db)
    events.node = cfg.node  # named nodes of a cluster say which wrote an event
    metrics = Metrics()
    bucket = await open_bucket(cfg, db)
    core = Core(db, layout, events, metrics, bucket)
    caps = AccountCaps(cfg.account_connections, cfg.account_streams, metrics)
    board = TransferBoard()
    streams = StreamService(
        db,
        layout,
        bandwidth,
        events,
        metrics,
        checkpoint_interval=cfg.checkpoint_interval,
        caps=caps,
        board=board,
    )
    streams.bucket = bucket
    try:
        saved = json.loads(await db.get_setting("compression") or "{}")
    except ValueError:
        saved = {}  # damaged: start from the defaults
    streams.compression = CompressionPolicy.restore(
        saved if isinstance(saved, dict) else {}, cfg.compress, cfg.compress_busy
    )
    relay = Router(
        db,
        events,
        metrics,
        cfg.relay_window,
        queue_limit=cfg.relay_queue,
        max_conns=cfg.max_relay_connections,
        max_codes=cfg.max_codes,
        fingerprint=me.fingerprint,
        bandwidth=bandwidth,  # the budget applies to relayed traffic too
    )
    relay.on_closed.append(board.conn_closed)
    for user_id, cap in (await users.saved_user_caps(db)).items():
        relay.presence.set_cap(user_id, cap)  # relayed connections of the account
        bandwidth.set_cap(user_id, cap)  # its pushes and pulls
    queue = CommandQueue(core, relay.presence)
    bus: ClusterBus = NoBus()
    if cfg.bus:
        nats = NatsBus(cfg.bus, me.node, events.log)
        try:
            await nats.start(db)
        except Exception:
            await db.close()
            raise
        bus = nats
    queue.join(bus)
    collector = Collector(core, relay, queue, reserve=cfg.collect_reserve)
    queue.on_settled(collector.finished)  # an answered upload is stored
    dispatcher = Dispatcher()
    hub = Hub(
        core=core,
        identity=me,
        tasks=Supervisor("hub"),
        dispatcher=dispatcher,
        bandwidth=bandwidth,
        accounts=caps,
        attach_pace=AttachPace(cfg.attach_rate, metrics, time.monotonic()),
        streams=streams,
        relay=relay,
        sessions=LiveSessions(db, events),
        commands=queue,
        collector=collector,
        port_guard=port_guard(cfg.limits),
        tickets=TicketBook(),
        logins=LoginGuard(cfg.login_lockout),
        passwords=auth.PasswordWork(),
        challenges=ChallengeBook(),
        token_lifetime=cfg.token_lifetime,
        messaging=messaging.Messaging(
            relay,
            events,
            metrics,
            warmup=cfg.msg_warmup,
            gate=AppGate(db, events, cfg.max_pending) if cfg.app_approval else None,
        ),
        tunnels=tunnels.TunnelService(relay, events, metrics),
        transfers=board,
        registration=cfg.registration,
        app_approval=cfg.app_approval,
        max_pending=cfg.max_pending,
        nodes=NodeService(
            db,
            events,
            relay,
            streams,
            queue,
            NodeSettings(me.node, cfg.advertise, cfg.node_beat),
            bus=bus,
        ),
    )
    if cfg.bus:  # failed logins count against one limit on every node
        share_login_failures(hub, bus)
    streams.node = hub.nodes
    hub.nodes.messaging = hub.messaging
    hub.messaging.rehome = hub.nodes.messaging_home
    if cfg.node or cfg.bus:  # a cluster's node: the ends of a connection meet on one
        relay.places = Places(db, lambda: hub.nodes.name, hub.nodes.lease)
    # The control channel's handlers, each registered by its service; an
    # attaching agent is recorded (agents) before its commands go (queue).
    channels.register(dispatcher, hub)
    channels.register_relay(dispatcher, hub)
    agents.register(dispatcher, hub)
    queue.register(dispatcher)
    hub.messaging.register(dispatcher)
    ProbeService().register(dispatcher)  # bandwidth probes: docs/protocol.md 20
    return hub


def share_login_failures(hub: Hub, bus: ClusterBus) -> None:
    """Each failed login (and each success clearing an account's count)
    told to the other nodes, and what they tell counted here."""

    def told(kind: str, keys: list[tuple[str, ...]]) -> None:
        with contextlib.suppress(RuntimeError):  # the hub is closing
            body = {kind: [list(key) for key in keys]}
            hub.tasks.spawn(bus.tell("logins", body), name="tell-logins", detached=True)

    async def heard(body: dict[str, object]) -> None:
        hub.logins.heard(body, time.time())

    hub.logins.told = told
    bus.on("logins", heard)


def build_app(hub: Hub) -> web.Application:
    app = web.Application(
        # Errors outermost: what the deadlines answer (408, 413) is JSON too.
        middlewares=[
            errors_middleware,
            deadlines_middleware(lambda r: r.app[STATE].port_guard),
            hub.nodes.middleware(),  # a drained node, or one cut from the database, refuses
        ],
        client_max_size=1024 * 1024,
    )
    install(app, hub)
    rest.add_routes(app)
    eventsapi.add_routes(app)
    observeapi.add_routes(app)
    users.add_routes(app)
    approvals.add_routes(app)
    agents.add_routes(app)
    collectapi.add_routes(app)
    keys.add_routes(app)
    link_routes.add_routes(app)
    rest.add_admin_routes(app)
    app[messaging.MESSAGING] = hub.messaging
    messaging.add_routes(app)
    tunnels.add_routes(app, hub.tunnels)
    app.router.add_get("/v1/control", channels.control)
    httpattach.add_routes(
        app,
        channels.serve_http_attachment,
        admit=lambda: hub.attach_pace.take(time.monotonic()),
    )
    status.add_routes(app)
    nodes.add_routes(app, hub.nodes)
    console.add_routes(app)  # the web console, over the routes above
    openapi.add_routes(app)  # describes every route above: add a new one there too
    return app


async def close_hub(hub: Hub) -> None:
    """Stop every background task and release what the hub holds."""
    await hub.tasks.aclose()
    await hub.nodes.close()
    await hub.relay.aclose()
    hub.passwords.close()
    if hub.bucket is not None:
        await hub.bucket.close()
    await hub.db.close()
