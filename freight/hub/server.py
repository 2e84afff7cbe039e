"""Start-up and shutdown of one hub process: build the hub
(:mod:`.compose`), start its background tasks under the hub's supervisor,
listen, and on a signal stop accepting, close, and cancel what runs."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

from aiohttp import web

from .blobfiles import sweep
from .compose import HubConfig, build_app, build_hub, close_hub, say
from .gcpolicy import FrozenOld
from .listener import SharedPortListener
from .observe import configure_logging
from .services import Hub

__all__ = ["PURGE_EVERY", "HubConfig", "serve"]

PURGE_EVERY = 3600.0
MAX_REQUEST_LINE = 32 * 1024  # bytes


async def purge_loop(hub: Hub, purge_after: float) -> None:
    """Forget abandoned uploads and expired logins, once an hour."""
    while True:
        n = await hub.streams.purge(purge_after)
        if n:
            hub.events.log.info("purged_streams", count=n)
        n = await hub.db.purge_tokens(time.time())
        if n:
            hub.events.log.info("purged_tokens", count=n)
        await asyncio.sleep(min(PURGE_EVERY, purge_after))


async def sweep_loop(hub: Hub, grace: float) -> None:
    """Remove what the bucket holds that nothing needs any more (every
    node does it: removing twice is harmless)."""
    assert hub.bucket is not None
    while True:
        await asyncio.sleep(min(PURGE_EVERY, max(grace, 5.0)))
        try:
            content, segments = await sweep(hub.bucket, hub.db, grace=grace)
        except Exception as exc:  # the bucket's or the database's: try again later
            hub.events.log.warning("bucket_sweep_failed", error=str(exc)[:200])
            continue
        if content or segments:
            hub.events.log.info("bucket_swept", content=content, segments=segments)


def start(hub: Hub, cfg: HubConfig) -> None:
    """The hub's background work, each a task of its supervisor (detached:
    one that fails is logged with its name and counted, and the hub goes on
    serving)."""
    for work, name in (
        (purge_loop(hub, cfg.purge_after), "purge"),
        (hub.relay.sweep_loop(), "relay-sweep"),
        (hub.sessions.run(), "login-expiry"),
        (hub.collector.run(), "collector"),
        (hub.transfers.run(hub.relay.live), "transfer-sampler"),
        (hub.nodes.run(), "node-heartbeat"),
        (hub.nodes.watch_run(), "node-watch"),
        (FrozenOld().run(), "gc-policy"),
    ):
        hub.tasks.spawn(work, name=name, detached=True)
    if hub.bucket is not None:
        hub.tasks.spawn(sweep_loop(hub, cfg.blobs_grace), name="bucket-sweep", detached=True)


def advertised(host: str, port: int) -> str:
    """Where clients reach this node unless ``--advertise`` says: the
    listening address, or the machine's name when it listens on all."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"https://[{host}]:{port}/" if ":" in host else f"https://{host}:{port}/"


async def serve(cfg: HubConfig, *, ready: asyncio.Event | None = None) -> None:
    configure_logging()
    # A file-size limit must surface as EFBIG on write, not kill the hub.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hub = await build_hub(cfg)
    try:
        runner = web.AppRunner(
            build_app(hub),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=hub.port_guard.limits.keepalive,
            # A long query string (a console's filters) reaches the handlers,
            # which answer what is wrong with it; aiohttp's own bound is 8 KiB.
            max_line_size=MAX_REQUEST_LINE,
        )
        await runner.setup()
        assert runner.server is not None  # set up above
        listener = SharedPortListener(hub, runner.server, hub.identity.ssl_context, hub.port_guard)
        port = await listener.start(cfg.host, cfg.port)
        fingerprint = hub.identity.fingerprint
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        await hub.nodes.register(
            cfg.advertise or advertised(cfg.host, port), port, named=bool(cfg.node)
        )
        say(f"Freight hub listening on https://{host}:{port}")
        say(f"Certificate fingerprint: {fingerprint}")
        say(f"Data folder: {cfg.data.resolve()}")
        if hub.bucket is not None:
            say(f"Files kept in the bucket {hub.bucket.spec}")
        await hub.events.emit("hub_start", "hub", port=port, fingerprint=fingerprint)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        start(hub, cfg)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            say("Shutting down: no new connections, closing transfers (they resume later)")
            await hub.tasks.aclose()
            await listener.stop()
            await runner.cleanup()
    finally:
        await close_hub(hub)
