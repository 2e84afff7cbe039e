"""One port for everything: TLS (HTTPS, WebSocket) and sealed data connections.

We accept sockets ourselves and peek at the first byte. A TLS ClientHello
starts with 0x16 and goes to aiohttp; anything else must be a data-connection
preamble carrying a one-time reception ticket. Every socket holds a slot of
the :class:`~.guard.PortGuard` from accept to close, and each phase has a
deadline (first byte, TLS handshake, headers; an idle data connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from ..errors import FreightError, LimitReached, NotLoggedIn
from ..protocol import messages as m
from ..protocol.errors import ProtocolError
from ..protocol.limits import PROTOCOL_VERSION
from ..tasks import Supervisor
from ..transport.channel import ChannelClosed
from ..transport.dataconn import (
    DataConnProtocol,
    WireDamaged,
    accept_data_connection,
    close_when_idle,
)
from .channels import send_error, serve_channel, serve_lane
from .guard import PortGuard, Slot
from .services import Hub
from .streams import User
from .tickets import Ticket

TLS_RECORD_HANDSHAKE = 0x16
REFUSAL_LOG_EVERY = 10.0  # at most one warning per cap and this many seconds


class SharedPortListener:
    def __init__(
        self,
        state: Hub,
        http_factory: Callable[[], Any],
        ssl_ctx: ssl.SSLContext,
        guard: PortGuard,
    ) -> None:
        self.state = state
        self.http_factory = http_factory
        self.ssl_ctx = ssl_ctx
        self.guard = guard
        self.limits = guard.limits
        self._last_warning: dict[str, float] = {}
        self.sock: socket.socket | None = None
        self.tasks = Supervisor("listener")  # the accept loop and every connection
        self._accept_task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        self.sock = sock
        self._accept_task = self.tasks.spawn(self._accept_loop(), name="accept")
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, then cancel connections still running."""
        if self._accept_task:
            self._accept_task.cancel()
            await asyncio.wait([self._accept_task])
        if self.sock:
            self.sock.close()
        await self.tasks.aclose(timeout=5)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:  # e.g. EMFILE: back off rather than spin
                self.state.events.log.warning("accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            address = _address(peer)
            slot = self.guard.take(address)
            if isinstance(slot, str):
                # Over a cap: closed before reading a byte, so a flood from
                # one address costs an accept and a close, nothing more.
                conn.close()
                self._refused(slot, address)
                continue
            self.tasks.spawn(self._route(conn, slot), name="connection", detached=True)

    def _refused(self, cap: str, address: str) -> None:
        self.state.metrics.refused.labels(cap).inc()
        now = time.monotonic()
        if now - self._last_warning.get(cap, -REFUSAL_LOG_EVERY) >= REFUSAL_LOG_EVERY:
            self._last_warning[cap] = now
            self.state.events.log.warning("connection_refused", limit=cap, address=address)

    async def _route(self, conn: socket.socket, slot: Slot) -> None:
        """Hand the socket on; ``slot`` is released when it finally closes."""
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(_peek_byte(loop, conn), self.limits.first_byte)
        except (TimeoutError, OSError):
            first = None
        if first is None:
            conn.close()
            slot.release()
            return
        if first == TLS_RECORD_HANDSHAKE:
            self.state.metrics.connections.labels("tls").inc()
            try:
                await loop.connect_accepted_socket(
                    lambda: self.guard.guarded(self.http_factory(), slot),
                    conn,
                    ssl=self.ssl_ctx,
                    ssl_handshake_timeout=self.limits.tls_handshake,
                )
            except (OSError, ssl.SSLError, TimeoutError):
                conn.close()
                slot.release()
            return
        self.state.metrics.connections.labels("data").inc()
        try:
            await self._data_connection(conn)
        finally:
            slot.release()

    async def _data_connection(self, conn: socket.socket) -> None:
        def lookup(ticket_id: bytes) -> tuple[bytes, object] | None:
            ticket = self.state.tickets.redeem(ticket_id, time.monotonic())
            return None if ticket is None else (ticket.secret, ticket)

        chan = await accept_data_connection(conn, lookup, self.limits.first_byte)
        if chan is None:
            self.state.metrics.protocol_errors.inc()
            self.state.events.log.info("data_connection_refused")
            return
        ticket = chan.context
        assert isinstance(ticket, Ticket)
        user = User(ticket.user_id, ticket.user_name, "", ticket.session)
        try:
            with self.state.accounts.connection(user):
                await self._serve_data(chan, ticket, user)
        except (LimitReached, NotLoggedIn) as exc:  # sealed: the client has the keys by now
            with contextlib.suppress(FreightError, ConnectionError, OSError):
                await chan.send(m.Error(code=exc.code, message=exc.message))
        finally:
            await chan.aclose()

    async def _serve_data(self, chan: DataConnProtocol, ticket: Ticket, user: User) -> None:
        # The login may have ended since the ticket was handed out.
        expires = await self.state.sessions.verify(user)
        # A lane lives and dies with its attachment (whose WebSocket heartbeat
        # notices a dead peer); other data connections carry streams, whose
        # frames never pause this long.
        idle = None
        if ticket.lane_of is None:
            idle = self.tasks.spawn(
                close_when_idle(chan, self.limits.data_idle), name="idle", detached=True
            )
        try:
            # The first sealed frame proves to the client that its ticket was
            # accepted and that both ends derived the same keys.
            await chan.send(m.Welcome(version=PROTOCOL_VERSION, node=self.state.node))
            with self.state.sessions.track(user, chan, expires):
                if ticket.lane_of is not None:
                    await serve_lane(self.state, ticket.lane_of, chan)
                else:
                    await serve_channel(self.state, user, chan)
        except ProtocolError as exc:
            await send_error(self.state, chan, exc)
        except WireDamaged as exc:  # dropped; the client resumes elsewhere
            self.state.metrics.protocol_errors.inc()
            self.state.events.log.info("data_connection_damaged", user=user.name, error=str(exc))
        except ChannelClosed:
            pass
        finally:
            if idle is not None:
                idle.cancel()
                await asyncio.wait([idle])


async def _peek_byte(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> int | None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    data = conn.recv(1, socket.MSG_PEEK)
    return data[0] if data else None


def _address(peer: Any) -> str:
    """The client's address as counted: IPv4-mapped IPv6 as plain IPv4."""
    host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
    return host.removeprefix("::ffff:")
