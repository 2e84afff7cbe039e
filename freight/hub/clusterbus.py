"""Node-to-node notices of a cluster, over NATS (``freight hub --bus
nats://HOST:4222``; docs/cluster.md).

The database is the truth; the bus only says "look now" so that a node
acts at once instead of at its next heartbeat: a command was queued for an
agent attached elsewhere, a command ended that someone elsewhere waits for.
A lost notice therefore delays, never loses (each node's heartbeat sweeps
what a notice would have told it).

Every notice is one NATS message on ``freight.<cluster>.<topic>``, where
``<cluster>`` is the cluster's id kept in the database, so that clusters
sharing a NATS server never hear each other. Its body is
``<HMAC-SHA256 hex>.<JSON>``, keyed by the cluster's secret, also kept in
the database: only a process that can read the cluster's database can
speak on its bus. A notice that is too large, badly signed, stale (more
than ``MAX_AGE`` seconds from now) or of an unknown topic is dropped and
logged (``bus_notice_refused``), never acted on; NATS credentials in the
URL (``nats://user:pass@host``) keep strangers off the server itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..errors import ConfigError
from ..tasks import Supervisor

__all__ = ["MAX_NOTICE", "ClusterBus", "NatsBus", "NoBus", "cluster_keys"]

MAX_NOTICE = 4096  # bytes of one notice
MAX_AGE = 60.0  # seconds a notice's time may differ from ours
TOPICS = frozenset({"commands", "settled", "logins"})
CONNECT_TIMEOUT = 5.0
START_TIMEOUT = 15.0  # seconds a starting node tries to reach NATS
MAX_AT_ONCE = 1000  # notices acted on at once; more are left to the sweep

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class Settings(Protocol):
    async def get_setting(self, key: str) -> str | None: ...

    async def set_setting(self, key: str, value: str) -> None: ...


async def cluster_keys(db: Settings) -> tuple[str, bytes]:
    """The cluster's id and secret, made by the first node that needs them."""
    out = []
    for key, size in (("cluster_id", 6), ("cluster_secret", 32)):
        value = await db.get_setting(key)
        if not value:
            await db.set_setting(key, secrets.token_hex(size))
            value = await db.get_setting(key)
        out.append(str(value))
    return out[0], bytes.fromhex(out[1])


class ClusterBus(Protocol):
    def on(self, topic: str, handler: Handler) -> None: ...

    async def tell(self, topic: str, body: dict[str, Any]) -> None: ...

    def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class NoBus:
    """One node, or nodes without ``--bus``: the heartbeat sweeps instead."""

    def on(self, topic: str, handler: Handler) -> None:
        return None

    async def tell(self, topic: str, body: dict[str, Any]) -> None:
        return None

    def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def seal(secret: bytes, notice: dict[str, Any]) -> bytes:
    text = json.dumps(notice, separators=(",", ":"), sort_keys=True).encode()
    return hmac.new(secret, text, hashlib.sha256).hexdigest().encode() + b"." + text


def unseal(secret: bytes, data: bytes, now: float) -> dict[str, Any]:
    """The notice in ``data``; ValueError saying why it is refused."""
    if len(data) > MAX_NOTICE:
        raise ValueError("too large")
    mac, dot, text = data.partition(b".")
    if not dot or not hmac.compare_digest(
        mac, hmac.new(secret, text, hashlib.sha256).hexdigest().encode()
    ):
        raise ValueError("bad signature")
    notice = json.loads(text)
    if not isinstance(notice, dict) or not isinstance(notice.get("body"), dict):
        raise ValueError("not a notice")
    if notice.get("topic") not in TOPICS:
        raise ValueError("unknown topic")
    ts = notice.get("ts")
    if not isinstance(ts, int | float) or abs(now - ts) > MAX_AGE:
        raise ValueError("stale")
    return notice


class NatsBus:
    def __init__(
        self,
        url: str,
        node: str,
        log: Any,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.node = node
        self.log = log
        self.clock = clock
        self.cluster = ""
        self.secret = b""
        self.nc: Any = None
        self.connected = False
        self.refused = 0  # notices dropped (bad signature, stale, ...)
        self._handlers: dict[str, Handler] = {}
        self.tasks = Supervisor("bus")  # the notices being acted on

    def on(self, topic: str, handler: Handler) -> None:
        assert topic in TOPICS
        self._handlers[topic] = handler

    def healthy(self) -> bool:
        return self.connected

    def _where(self) -> str:
        """The server, without credentials (for messages and logs)."""
        return self.url.rpartition("@")[2]

    async def start(self, db: Settings) -> None:
        import nats

        self.cluster, self.secret = await cluster_keys(db)

        async def disconnected() -> None:
            self.connected = False
            self.log.warning("bus_disconnected", server=self._where())

        async def reconnected() -> None:
            self.connected = True
            self.log.warning("bus_reconnected", server=self._where())

        last: list[str] = []
        refused = asyncio.Event()  # wrong credentials: no use trying again

        async def error(exc: Exception) -> None:
            last[:] = [str(exc) or type(exc).__name__]
            self.log.warning("bus_error", server=self._where(), error=repr(exc))
            said = str(exc).lower()
            if "authorization violation" in said or "authorization failed" in said:
                refused.set()

        try:
            async with asyncio.timeout(START_TIMEOUT), Supervisor("bus-start") as trying:
                connecting = trying.spawn(
                    self._connect(nats, disconnected, reconnected, error), name="connect"
                )
                said_no = trying.spawn(refused.wait(), name="refused")
                await asyncio.wait({connecting, said_no}, return_when=asyncio.FIRST_COMPLETED)
                if not connecting.done():
                    raise ConnectionRefusedError(last[-1])
                self.nc = connecting.result()
        except Exception as exc:  # nats-py raises its own, OSError, TimeoutError
            why = last[-1] if last else (str(exc) or type(exc).__name__)
            raise ConfigError(
                f"cannot reach NATS at {self._where()}: {why}",
                hint="check --bus (nats://USER:PASS@HOST:4222) and that the server runs",
            ) from None
        self.connected = True
        await self.nc.subscribe(f"freight.{self.cluster}.*", cb=self._received)

    async def _connect(self, nats: Any, disconnected: Any, reconnected: Any, error: Any) -> Any:
        return await nats.connect(
            self.url,
            name=f"freight-node-{self.node}",
            connect_timeout=int(CONNECT_TIMEOUT),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )

    async def close(self) -> None:
        if self.nc is not None:
            nc, self.nc = self.nc, None
            try:
                async with asyncio.timeout(5):
                    await nc.close()
            except Exception as exc:  # closing: nothing left to do about it
                self.log.debug("bus_close_failed", error=repr(exc))
        await self.tasks.aclose()

    async def tell(self, topic: str, body: dict[str, Any]) -> None:
        """Send a notice to every node (this one ignores its own)."""
        if self.nc is None or not self.connected:
            return  # the heartbeat's sweep does it instead
        notice = {"topic": topic, "from": self.node, "ts": self.clock(), "body": body}
        try:
            await self.nc.publish(f"freight.{self.cluster}.{topic}", seal(self.secret, notice))
        except Exception as exc:  # disconnected meanwhile: the sweep does it
            self.log.debug("bus_notice_lost", topic=topic, error=repr(exc))

    async def _received(self, msg: Any) -> None:
        try:
            notice = unseal(self.secret, msg.data, self.clock())
        except ValueError as exc:
            self.refused += 1
            self.log.warning(
                "bus_notice_refused", subject=str(msg.subject)[:200], reason=str(exc)[:100]
            )
            return
        if notice.get("from") == self.node:
            return
        handler = self._handlers.get(str(notice["topic"]))
        if handler is None:
            return
        # Not in NATS's own reader: a slow database must not hold the bus up.
        if len(self.tasks) >= MAX_AT_ONCE:
            self.log.warning("bus_notice_dropped", topic=notice["topic"])
            return  # the heartbeat's sweep does it
        self.tasks.spawn(self._run(handler, notice["body"]), name="notice", detached=True)

    async def _run(self, handler: Handler, body: dict[str, Any]) -> None:
        try:
            await handler(body)
        except Exception as exc:  # one bad notice must not stop the others
            self.log.warning("bus_notice_failed", error=repr(exc))
