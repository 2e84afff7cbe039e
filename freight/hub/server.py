"""Start-up and shutdown of one hub process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..protocol.limits import CHECKPOINT_INTERVAL
from ..store import Database, DataLayout
from . import auth, tls
from .app import build_app
from .bandwidth import BandwidthManager, Budget
from .caps import DEFAULT_CONNECTIONS, DEFAULT_STREAMS, AccountCaps
from .collect import Collector
from .guard import PortGuard, PortLimits
from .limiter import LoginGuard
from .listener import SharedPortListener
from .observe import EventLog, Metrics, configure_logging
from .relay import Router
from .sessions import LiveSessions
from .state import HubState
from .streams import StreamService

PURGE_EVERY = 3600.0


@dataclass
class HubConfig:
    data: Path
    host: str = "127.0.0.1"
    port: int = 8443
    bandwidth: str | None = None  # None: keep what an admin set last
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
    token_lifetime: float = auth.TOKEN_LIFETIME  # seconds a login lasts
    login_lockout: float = 30.0  # first lockout after too many failures (doubles)
    relay_queue: int = 32 * 1024 * 1024  # bytes held for one attached client before pausing
    max_relay_connections: int = 256  # relayed connections one account may have open
    max_codes: int = 64  # valid one-time codes one account may hold

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


async def build_state(cfg: HubConfig) -> HubState:
    layout = DataLayout(cfg.data)
    layout.create()
    if cfg.cert is None and tls.ensure_certificate(layout.cert_path, layout.key_path):
        say(f"Created a self-signed TLS certificate in {layout.tls_dir}")
    if cfg.database_url:
        db = Database(cfg.database_url)
    else:
        layout.create_database()
        db = Database.sqlite(layout.db_path)
    await db.migrate()
    await ensure_admin(db)
    spec = (
        cfg.bandwidth if cfg.bandwidth is not None else (await db.get_setting("bandwidth") or "off")
    )
    bandwidth = BandwidthManager(Budget.parse(spec))
    events = EventLog(db)
    metrics = Metrics()
    caps = AccountCaps(cfg.account_connections, cfg.account_streams, metrics)
    streams = StreamService(
        db,
        layout,
        bandwidth,
        events,
        metrics,
        checkpoint_interval=cfg.checkpoint_interval,
        caps=caps,
    )
    relay = Router(
        db,
        events,
        metrics,
        cfg.relay_window,
        queue_limit=cfg.relay_queue,
        max_conns=cfg.max_relay_connections,
        max_codes=cfg.max_codes,
    )
    return HubState(
        db,
        layout,
        events,
        metrics,
        bandwidth,
        streams,
        relay,
        sessions=LiveSessions(db, events),
        logins=LoginGuard(cfg.login_lockout),
        token_lifetime=cfg.token_lifetime,
        accounts=caps,
    )


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


async def serve(cfg: HubConfig, *, ready: asyncio.Event | None = None) -> None:
    configure_logging()
    # A file-size limit must surface as EFBIG on write, not kill the hub.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    state = await build_state(cfg)
    cert_path, key_path = cfg.tls_files(state.layout)
    try:
        ssl_context = tls.server_context(cert_path, key_path)
    except BaseException:
        await state.db.close()
        raise
    limits = cfg.limits
    budget = socket_budget(limits.max_connections)
    if budget < limits.max_connections:
        say(f"At most {budget} connections: the process may open only so many files")
        limits = dataclasses.replace(limits, max_connections=budget)
    state.port_guard = PortGuard(limits)
    runner = web.AppRunner(
        build_app(state),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=limits.keepalive,
    )
    await runner.setup()
    listener = SharedPortListener(state, runner.server, ssl_context, state.port_guard)
    port = await listener.start(cfg.host, cfg.port)
    fingerprint = tls.fingerprint_pem(cert_path)
    state.cert_fingerprint = fingerprint  # agents bind their login to it
    state.relay.fingerprint = fingerprint  # identity handshakes bind it
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    say(f"Freight hub listening on https://{host}:{port}")
    say(f"Certificate fingerprint: {fingerprint}")
    say(f"Data folder: {cfg.data.resolve()}")
    await state.events.emit("hub_start", "hub", port=port, fingerprint=fingerprint)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def purge_loop() -> None:
        while True:
            n = await state.streams.purge(cfg.purge_after)
            if n:
                state.events.log.info("purged_streams", count=n)
            n = await state.db.purge_tokens(time.time())
            if n:
                state.events.log.info("purged_tokens", count=n)
            await asyncio.sleep(min(PURGE_EVERY, cfg.purge_after))

    purger = asyncio.create_task(purge_loop())
    sweeper = asyncio.create_task(state.relay.sweep_loop())
    expirer = asyncio.create_task(state.sessions.run())
    state.collector = Collector(state, reserve=cfg.collect_reserve)
    collector = asyncio.create_task(state.collector.run())
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        say("Shutting down: no new connections, closing transfers (they resume later)")
        purger.cancel()
        sweeper.cancel()
        collector.cancel()
        expirer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        with contextlib.suppress(asyncio.CancelledError):
            await expirer
        await listener.stop()
        await runner.cleanup()
        await state.relay.aclose()
        state.passwords.close()
        await state.db.close()
