"""UDP tunnels through the hub (docs/protocol.md §18, §19), the client's side.

:class:`UdpForward` is ``freight forward --udp``: a
:class:`~freight.client.udptunnel.UdpForwardServer` whose flows each open one
tunnel connection (``tunnel.TAG.udp:SERVICE``, an open request with
``udp: true``) to the destination. As the TCP forward does, it keeps one
spare connection dialled and established ahead, so a new flow's first
datagram waits for one open request, not a dial and a handshake.

:func:`serve_udp_tunnel` is the far side of such a connection, on an agent
(for a ``udp/HOST:PORT`` its allow list names) or behind
``freight expose NAME … --udp``: the tunnel server calls it once it has
checked the target and answered the open request. :func:`serve_udp` makes
this process's tunnel servers use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Callable
from typing import Any

from ..errors import FreightError
from ..logs import fields
from ..protocol.datagrams import FlowLimits
from ..protocol.tunnel import (
    MAX_APP,
    Destination,
    OpenRequest,
    Target,
    TunnelApp,
    decode_answer,
    encode_request,
)
from ..tasks import Supervisor
from .connection import Connection
from .relay import RelayClient
from .tunnels import ANSWER_TIMEOUT, DIAL_TIMEOUT, UDP_HANDLER, TunnelRefused
from .udptunnel import MessageStream, UdpForwardServer, serve_udp_target

log = logging.getLogger("freight.tunnel")

__all__ = ["UdpForward", "serve_udp", "serve_udp_tunnel", "udp_destination"]


def udp_destination(dest: Destination) -> Destination:
    """``dest`` as a datagram destination: an agent's target gets ``udp/``;
    an exposed name stays a name (the open request says ``udp``)."""
    if dest.target is not None and not dest.target.udp:
        return dataclasses.replace(dest, target=dataclasses.replace(dest.target, udp=True))
    return dest


def _udp_app(dest: Destination) -> str:
    app = TunnelApp(secrets.token_hex(4), True, dest.service).app
    if len(app) > MAX_APP:
        raise TunnelRefused(f"{dest} is too long to tunnel to")
    return app


class UdpForward:
    """``freight forward --udp [BIND:]PORT DEST:HOST:PORT`` (an agent's
    ``udp/`` target) or ``DEST:NAME`` (a name exposed with ``--udp``)."""

    def __init__(
        self,
        relay: RelayClient,
        dest: Destination,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: FlowLimits | None = None,
        spare: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.relay = relay
        self.dest = udp_destination(dest)
        self.use_spare = spare
        self.on_event = on_event
        self.server = UdpForwardServer(
            self._open, host=host, port=port, limits=limits, name="udp-forward"
        )
        self.tasks = Supervisor("udp-forward")
        self._spare: asyncio.Task[Connection] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def stats(self) -> dict[str, int]:
        return self.server.stats()

    async def start(self) -> tuple[str, int]:
        """Open one stream first, so that a refusal (a target the far end
        does not allow, a name not exposed to us) surfaces here, before
        anything listens; then bind the local port."""
        conn = await self._dial()
        try:
            await self._request(conn)
        finally:
            await conn.abort("closed", "checked")
        address = await self.server.start()
        self._refill()
        return address

    async def _dial(self) -> Connection:
        return await self.relay.connect(self.dest.peer, _udp_app(self.dest), timeout=DIAL_TIMEOUT)

    async def _request(self, conn: Connection) -> None:
        await conn.send(encode_request(OpenRequest(service=self.dest.service, udp=True)))
        first = await asyncio.wait_for(conn.recv(), ANSWER_TIMEOUT)
        answer = decode_answer(first) if first else None
        if answer is None or not answer.ok:
            why = answer.message if answer else "the far end closed the stream"
            raise TunnelRefused(f"{self.dest}: {why}")

    def _refill(self) -> None:
        if self.use_spare and self._spare is None:
            self._spare = self.tasks.spawn(self._dial(), name="spare", detached=True)

    def _take_spare(self) -> Connection | None:
        """The spare if it is established and alive (None otherwise)."""
        spare = self._spare
        if spare is None or not spare.done():
            return None
        self._spare = None
        if spare.cancelled() or spare.exception() is not None:
            return None
        conn = spare.result()
        return None if conn.closed or conn.error is not None else conn

    async def _next_conn(self) -> Connection:
        """The spare (waiting for it if it is still being dialled: it started
        earlier than a new dial would), else a new dial; a new spare is
        dialled behind it."""
        spare, self._spare = self._spare, None
        self._refill()
        if spare is not None:
            try:
                conn = await asyncio.shield(spare)
            except (FreightError, OSError, TimeoutError):
                pass
            else:
                if not conn.closed and conn.error is None:
                    return conn
        return await self._dial()

    async def _open(self) -> tuple[MessageStream, MessageStream]:
        conn = await self._next_conn()
        try:
            await self._request(conn)
        except (FreightError, OSError, TimeoutError) as exc:
            await conn.abort("closed", "not opened")
            if self.on_event is not None:
                self.on_event({"event": "failed", "error": str(exc)})
            raise
        stream = MessageStream(conn)
        return stream, stream

    async def wait_closed(self) -> None:
        await self.server.wait_closed()

    async def aclose(self) -> None:
        await self.server.aclose()
        conn = self._take_spare()
        if conn is not None:
            await conn.abort("closed", "forward stopped")
        await self.tasks.aclose()

    async def __aenter__(self) -> UdpForward:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve_udp_tunnel(reader: Any, writer: Any, target: Target) -> None:
    """The far side of one UDP tunnel connection (``reader`` and ``writer``
    are the relayed connection), until it ends or is idle. Garbage on the
    stream raises :class:`~freight.protocol.datagrams.MalformedDatagram`
    (the tunnel server logs it and hangs up)."""
    conn: Connection = reader
    stream = MessageStream(conn)
    counters = await serve_udp_target(stream, stream, target.host, target.port)
    log.info(
        "udp tunnel stream ended",
        extra=fields(cid=conn.cid, target=str(target), **counters.as_dict()),
    )


def serve_udp() -> None:
    """Let this process's tunnel servers carry ``udp/`` targets (an agent,
    ``freight expose --udp``)."""
    if serve_udp_tunnel not in UDP_HANDLER:
        UDP_HANDLER[:] = [serve_udp_tunnel]
