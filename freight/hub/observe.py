"""Events (database + structured log) and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..logs import configure_logging
from ..store import Database

__all__ = ["EventLog", "Metrics", "configure_logging"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.logins = Counter("freight_logins", "Logins", ["result"], registry=r)
        self.streams = Counter("freight_streams", "Stream events", ["event"], registry=r)
        self.bytes_received = Counter(
            "freight_bytes_received", "Stream payload bytes written", registry=r
        )
        self.bytes_sent = Counter("freight_bytes_sent", "Stream payload bytes read", registry=r)
        self.active_streams = Gauge("freight_active_streams", "Streams in progress", registry=r)
        self.connections = Counter(
            "freight_connections", "Accepted connections", ["kind"], registry=r
        )
        self.protocol_errors = Counter(
            "freight_protocol_errors", "Connections closed for bad frames", registry=r
        )
        self.refused = Counter(
            "freight_refused",
            "Connections, streams and uploads refused by a limit",
            ["limit"],
            registry=r,
        )
        self.relay_elsewhere = Counter(
            "freight_relay_elsewhere",
            "Relay ends sent to the cluster node holding their other end",
            ["when"],  # request: a dial, claim or rejoin; heartbeat: an end waiting here
            registry=r,
        )
        self.relay_queued = Gauge(
            "freight_relay_queued_bytes",
            "Bytes waiting at the hub for attached clients",
            registry=r,
        )


MAX_LISTENERS = 16  # hub components told of each event (not one per client)


class EventLog:
    """Writes each event to the ``events`` table and the structured log,
    then tells its listeners the event's kind (the console's live feed)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.log = structlog.get_logger("freight.hub")
        self._listeners: list[Callable[[str], None]] = []
        self.node = ""  # a cluster node's name, written into each event it emits

    def listen(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(kind)`` after each event (it must not block);
        returns what stops it."""
        if len(self._listeners) >= MAX_LISTENERS:
            raise RuntimeError(f"at most {MAX_LISTENERS} event listeners")
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def emit(self, kind: str, actor: str, **detail: Any) -> None:
        if self.node:
            detail["node"] = self.node
        self.log.info(kind, actor=actor, **detail)
        await self.db.add_event(kind, actor, detail)
        for listener in self._listeners:
            listener(kind)
