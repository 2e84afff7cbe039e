"""TCP tunnels through the hub (docs/protocol.md §18), the client's side.

:class:`ForwardServer` (``freight forward``, like ``ssh -L``) listens on a
local port; every accepted connection becomes one relayed connection (§12)
to the destination, multiplexed with the others over the client's
attachment and lane, each with its own end-to-end keys, credit window and
half-closes. It keeps one *spare* connection dialled and handshaken ahead,
so a new local connection costs one open request, not a dial and a
handshake. :class:`TunnelServer` is the far side: an agent serving its
allowed targets, or ``freight expose NAME HOST:PORT`` (like ``ssh -R``,
only for the named accounts). The decisions (names, targets, the open
records, a stream's life) are :mod:`freight.protocol.tunnel`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConnectionEnded, FreightError, PeerAbsent, RemoteProtocolError, UsageError
from ..logs import fields
from ..protocol.e2e import DEFAULT_WINDOW
from ..protocol.relayend import MAX_MESSAGE
from ..protocol.tunnel import (
    AGENT_APP,
    EXPOSE_PREFIX,
    AllowList,
    Destination,
    Ev,
    MalformedTunnelMessage,
    OpenAnswer,
    OpenRequest,
    Target,
    TunnelStream,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    new_tunnel_app,
    parse_app,
)
from ..tasks import Supervisor
from .connection import Connection
from .pacing import Pacer
from .relay import RelayClient

log = logging.getLogger("freight.tunnel")

__all__ = ["UDP_HANDLER", "ForwardServer", "TunnelRefused", "TunnelServer"]

CHUNK = 256 * 1024  # bytes read from a socket per relayed message
READ_LIMIT = 1024 * 1024  # an accepted socket's read buffer
# Bytes a stream keeps unacknowledged while other streams share its
# tunnel: what it has queued at the hub ahead of their records (the hub's
# queues are first in, first out). A stream alone uses the whole window.
IN_FLIGHT = int(os.environ.get("FREIGHT_TUNNEL_IN_FLIGHT", 1024 * 1024))
ALONE = DEFAULT_WINDOW
DEFAULT_MAX_CONNS = 256  # concurrent connections through one forward / served
DIAL_TIMEOUT = 30.0  # for the far end to accept a connection
ANSWER_TIMEOUT = 30.0  # for the open answer, once the request went
TARGET_TIMEOUT = 10.0  # for the agent's connect to its target
REQUEST_TIMEOUT = 900.0  # a spare waits this long for its request, then ends
CLOSE_TIMEOUT = 10.0  # for the far end to take the last bytes
REFILL_DELAY = 0.01  # after a spare is taken, before the next is dialled

assert CHUNK < MAX_MESSAGE


class TunnelRefused(ConnectionEnded):
    """The far end refused to open a tunnel stream (not allowed, target down)."""

    code = "tunnel_refused"
    hint = "check the target, and that the far end allows it (freight agents forward-allow)"


# A datagram tunnel's far side, set by the UDP module once it is there:
# (reader, writer, target) -> None. Until then udp/ targets are refused.
UDP_HANDLER: list[Callable[[Any, Any, Target], Awaitable[None]]] = []


@dataclass
class StreamInfo:
    """What a forward reports per connection (``--json`` events)."""

    sid: int
    peer: str
    cid: str = ""
    stream: TunnelStream = field(default_factory=TunnelStream)


Room = Callable[[], int]


async def _pump_out(
    reader: asyncio.StreamReader,
    conn: Connection,
    st: TunnelStream,
    room: Room,
    pacer: Pacer | None = None,
) -> None:
    """Local socket -> relayed connection, then our half-close. ``room()``:
    how much may be unacknowledged now (less when streams share the tunnel);
    ``pacer``: a ``--limit`` shared by the forward's streams."""
    while data := await reader.read(CHUNK):
        st.feed(Ev.DATA_OUT, len(data))
        if pacer is not None:
            await pacer.pace(len(data))
        await conn.wait_room(room())
        await conn.send(data)
    st.feed(Ev.LOCAL_EOF)
    await conn.shutdown()


async def _pump_in(
    conn: Connection, writer: asyncio.StreamWriter, st: TunnelStream, pacer: Pacer | None = None
) -> None:
    """Relayed connection -> local socket, then its half-close. The socket's
    buffer is drained before the next message is taken, so a reader that
    stops reading (or a ``--limit``) stops our acknowledgements and the
    sender's credit."""
    while data := await conn.recv():
        st.feed(Ev.DATA_IN, len(data))
        if pacer is not None:
            await pacer.pace(len(data))
        writer.write(data)
        await writer.drain()
    st.feed(Ev.REMOTE_EOF)
    if writer.can_write_eof():
        writer.write_eof()


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: Connection,
    st: TunnelStream,
    room: Room,
) -> None:
    """Both directions until both have ended (TCP half-close carried
    through); any failure ends both at once."""
    try:
        async with Supervisor("stream") as pumps:
            out = pumps.spawn(_pump_out(reader, conn, st, room), name="out")
            inbound = pumps.spawn(_pump_in(conn, writer, st), name="in")
            await _both(out, inbound)
        with contextlib.suppress(FreightError, TimeoutError):
            await conn.flush(CLOSE_TIMEOUT)
    finally:
        st.feed(Ev.RESET)
        await _close(conn, writer)


async def _both(*tasks: asyncio.Task[None]) -> None:
    """Until both pumps ended; the first failure is raised (the caller's
    supervisor then cancels the other)."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc
    await asyncio.wait(tasks)


async def _close(conn: Connection, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(FreightError):
        if conn.eof_received and conn.eof_sent and conn.error is None:
            await conn.abort("closed", "closed")
        else:
            await conn.abort("aborted", "the tunnelled connection was reset")
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --- the forwarding side -------------------------------------------------------------


class ForwardServer:
    """``freight forward [BIND:]PORT DEST:TARGET``: a local listener whose
    connections are tunnelled to ``dest``."""

    def __init__(
        self,
        relay: RelayClient,
        dest: Destination,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_conns: int = DEFAULT_MAX_CONNS,
        spare: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        limit_up: int = 0,
        limit_down: int = 0,
    ) -> None:
        """``limit_up``/``limit_down``: bytes/s towards / from the far end
        for all the forward's connections together (0: none)."""
        if max_conns < 1:
            raise UsageError("--max-conns must be at least 1")
        self.relay = relay
        self.dest = dest
        self.host, self.port = host, port
        self.max_conns = max_conns
        self.use_spare = spare
        self.on_event = on_event
        self.pace_up = Pacer(limit_up) if limit_up else None
        self.pace_down = Pacer(limit_down) if limit_down else None
        self.server: asyncio.Server | None = None
        self.tasks = Supervisor("forward")
        self.active: dict[int, StreamInfo] = {}
        self.opened = 0
        self.refused = 0  # beyond max_conns
        self.failed = 0
        self._next = 0
        self._spare: asyncio.Future[Connection] | None = None
        self._refill_timer: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        name = self.server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def start(self) -> None:
        """Check the destination once (a refusal surfaces here), then listen."""
        first = await self._dial()
        try:
            self.server = await asyncio.start_server(
                self._accepted, self.host, self.port, limit=READ_LIMIT, reuse_address=True
            )
        except OSError as exc:
            await first.abort("closed", "not forwarding")
            raise UsageError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        if self.use_spare:
            ready: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
            ready.set_result(first)
            self._spare = ready
        else:
            await first.abort("closed", "not needed")

    async def _dial(self) -> Connection:
        app = new_tunnel_app(self.dest)
        try:
            return await self.relay.connect(self.dest.peer, app, timeout=DIAL_TIMEOUT)
        except PeerAbsent:
            who = self.dest.peer
            hint = (
                f"is {who}'s freight expose {self.dest.name} running?"
                if self.dest.name
                else f"is the agent {who} running? (freight agents ls)"
            )
            raise PeerAbsent(
                f"{who} did not answer for {self.dest.service} within {DIAL_TIMEOUT:g} s",
                hint=hint,
            ) from None

    def _refill(self) -> None:
        """Dial a spare unless one is ready or on its way."""
        self._refill_timer = None
        spare = self._spare
        if not self.use_spare or self._closing:
            return
        if spare is not None:
            if not spare.done():
                return
            if not spare.cancelled() and spare.exception() is None:
                conn = spare.result()
                if not conn.closed and conn.error is None:
                    return
        self._spare = self.tasks.spawn(self._dial(), name="spare", detached=True)

    async def _take(self) -> Connection:
        """The spare if it is ready and alive, else a fresh dial. A new spare
        is dialled a moment later, off the path of this connection's first
        bytes (its handshake would compete with them for the same CPUs)."""
        spare, self._spare = self._spare, None
        conn: Connection | None = None
        if spare is not None and spare.done() and not spare.cancelled():
            if spare.exception() is None:
                conn = spare.result()
                if conn.closed or conn.error is not None:
                    conn = None
        elif spare is not None:
            self._spare = spare  # still dialling: leave it for the next one
        if self.use_spare and self._refill_timer is None:
            loop = asyncio.get_running_loop()
            self._refill_timer = loop.call_later(REFILL_DELAY, self._refill)
        return conn if conn is not None else await self._dial()

    def _room(self) -> int:
        return IN_FLIGHT if len(self.active) > 1 else ALONE

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.active) >= self.max_conns:
            self.refused += 1
            self._emit({"event": "refused", "reason": "max_conns", "limit": self.max_conns})
            writer.transport.abort()
            return
        self._next += 1
        info = StreamInfo(self._next, str(writer.get_extra_info("peername")))
        self.active[info.sid] = info
        _nodelay(writer)
        try:
            await self._serve(reader, writer, info)
        except (FreightError, OSError, TimeoutError) as exc:
            self.failed += 1
            text = exc.message if isinstance(exc, FreightError) else str(exc) or type(exc).__name__
            log.info("tunnel stream failed", extra=fields(sid=info.sid, error=text))
            self._emit({"event": "failed", "id": info.sid, "error": text})
            writer.transport.abort()
        finally:
            self.active.pop(info.sid, None)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: StreamInfo
    ) -> None:
        conn = await self._take()
        info.cid = conn.cid
        st = info.stream
        try:
            req = OpenRequest(service=self.dest.service, udp=self.dest.udp)
            await conn.send(encode_request(req))
            async with Supervisor("stream") as pumps:
                # Bytes from the local end go at once, behind the request;
                # the answer decides whether the far end's come back.
                out = pumps.spawn(_pump_out(reader, conn, st, self._room, self.pace_up), name="out")
                first = await asyncio.wait_for(conn.recv(), ANSWER_TIMEOUT)
                answer = decode_answer(first) if first else None
                if answer is None or not answer.ok:
                    st.feed(Ev.ANSWER_REFUSED)
                    why = answer.message if answer else "the far end closed the stream"
                    raise TunnelRefused(f"{self.dest}: {why}")
                st.feed(Ev.ANSWER_OK)
                self.opened += 1
                self._emit({"event": "open", "id": info.sid, "cid": conn.cid, "from": info.peer})
                inbound = pumps.spawn(_pump_in(conn, writer, st, self.pace_down), name="in")
                await _both(out, inbound)
            with contextlib.suppress(FreightError, TimeoutError):
                await conn.flush(CLOSE_TIMEOUT)
            self._emit(
                {"event": "closed", "id": info.sid, "sent": st.bytes_out, "received": st.bytes_in}
            )
        finally:
            st.feed(Ev.RESET)
            await _close(conn, writer)

    async def aclose(self) -> None:
        self._closing = True
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        if self.server is not None:
            self.server.close()
        spare = self._spare
        if spare is not None and spare.done() and not spare.cancelled() and not spare.exception():
            await spare.result().abort("closed", "forward stopped")
        await self.tasks.aclose()

    async def __aenter__(self) -> ForwardServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --- the serving side ------------------------------------------------------------------


Report = Callable[[str, str, str, str], Awaitable[None]]


async def _no_report(op: str, path: str, peer: str, reason: str) -> None:
    return None


class TunnelServer:
    """Serves tunnel connections: an agent's forwards to its allowed targets
    (``allow``), or one exposed name (``name``, ``target``, ``accounts``).
    Refusals are answered to the dialler and reported (``report``, an
    agent's security events)."""

    def __init__(
        self,
        relay: RelayClient,
        *,
        allow: AllowList | None = None,
        name: str = "",
        target: Target | None = None,
        accounts: frozenset[str] = frozenset(),
        report: Report = _no_report,
        max_conns: int = 1024,
    ) -> None:
        if bool(name) == (allow is not None) or bool(name) != (target is not None):
            raise UsageError("serve either an allow list or one name with its target")
        self.relay = relay
        self.allow = allow
        self.name = name
        self.target = target
        self.accounts = accounts
        self.report = report
        self.max_conns = max_conns
        self.tasks = Supervisor("tunnels")
        self.active = 0  # connections held, spares included
        self.streams = 0  # of them, streams open to a target
        self.served = 0
        self.refusals = 0
        self._accepting: asyncio.Task[None] | None = None

    @property
    def app(self) -> str:
        return EXPOSE_PREFIX + self.name if self.name else AGENT_APP

    def _room(self) -> int:
        return IN_FLIGHT if self.streams > 1 else ALONE

    async def start(self) -> None:
        listener = await self.relay.listen(self.app)
        self._accepting = self.tasks.spawn(self._accept(listener), name="accept", detached=True)

    async def _accept(self, listener: Any) -> None:
        while True:
            conn = await listener.accept()
            self.tasks.spawn(self._one(conn), name="stream", detached=True)

    async def _refuse(self, conn: Connection, code: str, message: str) -> None:
        self.refusals += 1
        with contextlib.suppress(FreightError, TimeoutError):
            await conn.wait_established(DIAL_TIMEOUT)
            await conn.send(encode_answer(OpenAnswer(ok=False, code=code, message=message)))
            await conn.shutdown()
            await conn.flush(CLOSE_TIMEOUT)
        await conn.abort("closed", message)

    def _check(self, conn: Connection) -> tuple[Target | None, str, str]:
        """The target ``conn`` may reach, or (None, code, why)."""
        try:
            app = parse_app(conn.app)
        except MalformedTunnelMessage as exc:
            return None, "malformed", exc.message
        if app is None:
            return None, "malformed", "not a tunnel connection"
        if self.name:
            if app.name != self.name:
                return None, "forbidden", "this end exposes another name"
            if "*" not in self.accounts and conn.peer not in self.accounts:
                return None, "forbidden", f"{conn.peer} is not allowed to use {self.name!r}"
            assert self.target is not None
            if app.udp != self.target.udp:
                return (
                    None,
                    "forbidden",
                    f"{self.name!r} is not a {'udp' if app.udp else 'tcp'} tunnel",
                )
            return self.target, "", ""
        target = app.target
        assert self.allow is not None and target is not None
        if not self.allow.allows(target):
            return None, "forbidden", f"this agent does not forward to {target}"
        return target, "", ""

    async def _one(self, conn: Connection) -> None:
        target, code, why = self._check(conn)
        if target is None:
            await self.report("forward", conn.app, conn.peer, why)
            await self._refuse(conn, code, why)
            return
        if self.active >= self.max_conns:
            await self._refuse(conn, "busy", f"{self.max_conns} tunnel connections are open here")
            return
        self.active += 1
        try:
            await self._serve(conn, target)
        except (FreightError, OSError, TimeoutError) as exc:
            text = exc.message if isinstance(exc, FreightError) else str(exc)
            log.info("tunnel stream ended", extra=fields(cid=conn.cid, error=text))
            if isinstance(exc, RemoteProtocolError):  # e.g. garbage datagram records
                await self.report("forward", conn.app, conn.peer, text)
            await conn.abort("aborted", "the tunnel stream failed")
        finally:
            self.active -= 1

    async def _serve(self, conn: Connection, target: Target) -> None:
        await conn.wait_established(DIAL_TIMEOUT)
        first = await asyncio.wait_for(conn.recv(), REQUEST_TIMEOUT)  # a spare waits here
        if not first:
            await conn.abort("closed", "unused")
            return
        try:
            req = decode_request(first)
        except MalformedTunnelMessage as exc:
            await self._refuse(conn, "malformed", exc.message)
            return
        wanted = self.name if self.name else target.service
        if req.service != wanted or req.udp != target.udp:
            await self._refuse(conn, "malformed", "the open request names another target")
            return
        # Checked again on use: a spare may have waited while the list changed.
        again, code, why = self._check(conn)
        if again is None:
            await self.report("forward", conn.app, conn.peer, why)
            await self._refuse(conn, code, why)
            return
        if target.udp:
            await self._serve_udp(conn, target)
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, limit=READ_LIMIT),
                TARGET_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            why = f"{target} is unreachable from the far end: {getattr(exc, 'strerror', None) or 'timed out'}"
            await self._refuse(conn, "unreachable", why)
            return
        _nodelay(writer)
        self.served += 1
        await conn.send(encode_answer(OpenAnswer(ok=True)))
        st = TunnelStream()
        st.feed(Ev.ANSWER_OK)
        self.streams += 1
        try:
            await splice(reader, writer, conn, st, self._room)
        finally:
            self.streams -= 1

    async def _serve_udp(self, conn: Connection, target: Target) -> None:
        if not UDP_HANDLER:
            await self._refuse(conn, "forbidden", "this end does not serve udp tunnels")
            return
        await conn.send(encode_answer(OpenAnswer(ok=True)))
        await UDP_HANDLER[0](conn, conn, target)

    async def aclose(self) -> None:
        await self.tasks.aclose()
        with contextlib.suppress(FreightError):
            lst = self.relay.listeners.get(self.app)
            if lst is not None:
                await lst.aclose()


async def expose(
    relay: RelayClient,
    name: str,
    target: Target,
    accounts: frozenset[str],
    *,
    max_conns: int = 1024,
) -> TunnelServer:
    """Expose ``target`` (on this machine's network) as ``name`` to
    ``accounts`` (``*``: every account): registered at the hub (which then
    refuses everyone else before they reach us), then listened for. The
    first registration takes the name over from a stale attachment of this
    account; it is made again after every re-attach (a restarted hub
    forgets it)."""
    path = f"/v1/tunnels/exposed/{name}"

    async def register(takeover: bool) -> None:
        body = {"allow": sorted(accounts), "takeover": takeover}
        await relay.session.request("PUT", path, body)

    await register(True)
    server = TunnelServer(relay, name=name, target=target, accounts=accounts, max_conns=max_conns)
    await server.start()
    # Once more, now that we listen: the stale attachment's departure, if the
    # hub saw it only now, made it forget the name meanwhile.
    await register(False)
    before = relay.after_attach

    async def again() -> None:
        if before is not None:
            await before()
        with contextlib.suppress(FreightError):
            await register(False)  # our listener is back already: keep it

    relay.after_attach = again
    return server


async def unexpose(relay: RelayClient, server: TunnelServer) -> None:
    with contextlib.suppress(FreightError):
        await relay.session.request("DELETE", f"/v1/tunnels/exposed/{server.name}")
    await server.aclose()
