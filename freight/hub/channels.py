"""Serving one channel: the control WebSocket or HTTP attachment (after
Hello/Welcome), a data connection, or a data connection serving as an
attachment's relay lane. Streams are opened by the multiplexer; every
other control message goes to the service registered for it with the
:class:`~.dispatch.Dispatcher`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from ..errors import FreightError, LimitReached, NotLoggedIn
from ..protocol import messages as m
from ..protocol.errors import ProtocolError, VersionMismatch
from ..protocol.limits import PROTOCOL_VERSION
from ..tasks import Supervisor
from ..transport.channel import ChannelClosed, Mux
from ..transport.ws import HUB_HEARTBEAT, WS_MAX_MESSAGE, WSChannel
from .dispatch import Dispatcher, Link, Scope, error_answer
from .requests import current_login
from .services import STATE, Hub
from .streams import User


async def control(request: web.Request) -> web.WebSocketResponse:
    """The control channel over a WebSocket: Hello/Welcome, tickets, streams
    and the relay."""
    user, expires = await current_login(request)
    request.app[STATE].attach_pace.take(time.monotonic())
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, heartbeat=HUB_HEARTBEAT)
    await ws.prepare(request)
    await attach(request, user, expires, WSChannel(ws), "ws")
    return ws


async def serve_http_attachment(request: web.Request, chan: Any) -> None:
    """The same channel over the HTTP long-poll fallback."""
    user, expires = await current_login(request)
    await attach(request, user, expires, chan, "http")


async def attach(
    request: web.Request, user: User, expires: float, chan: Any, transport: str
) -> None:
    """Greet a newly attached client and serve it until it goes (or its
    login ends)."""
    st = request.app[STATE]
    st.metrics.connections.labels("control").inc()
    try:
        hello, _ = await asyncio.wait_for(chan.recv(), 30)
        if not isinstance(hello, m.Hello):
            raise ProtocolError("the first frame must be hello")
        if hello.version != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"client speaks protocol {hello.version}, hub speaks {PROTOCOL_VERSION}"
            )
        with st.accounts.connection(user), st.sessions.track(user, chan, expires):
            batch = hello.batch and isinstance(chan, WSChannel)
            await chan.send(m.Welcome(version=PROTOCOL_VERSION, node=st.node, batch=batch))
            if batch:
                chan.batching = True
            await serve_channel(
                st,
                user,
                chan,
                transport=transport,
                address=request.remote or "",
                client=hello.agent,
            )
    except (ProtocolError, LimitReached) as exc:
        await send_error(st, chan, exc)
    except (ChannelClosed, TimeoutError):
        pass
    finally:
        await chan.aclose()


async def send_error(st: Hub, chan: Any, exc: FreightError) -> None:
    """Tell the peer why its connection is being closed."""
    protocol = isinstance(exc, ProtocolError)
    if protocol:
        st.metrics.protocol_errors.inc()
    kind = "protocol_error" if protocol else "connection_refused"
    st.events.log.info(kind, code=exc.code, error=exc.message)
    with contextlib.suppress(FreightError, ConnectionError, OSError):
        await chan.send(error_answer(exc))


async def serve_channel(
    st: Hub,
    user: User,
    chan: Any,
    *,
    transport: str = "",
    address: str = "",
    client: str = "",
) -> None:
    """Run streams, control requests and relayed connections arriving on one
    channel. A data connection (``transport`` empty) carries streams only:
    tickets are handed out on attached channels inside TLS, since a ticket's
    secret must never travel outside TLS."""

    async def on_new(port: Any, msg: m.AnyMessage, payload: bytes) -> None:
        try:  # a login revoked through another hub ends here too
            await st.sessions.verify(user)
        except NotLoggedIn as exc:
            await port.send(m.Abort(sid=port.sid, code=exc.code, message=exc.message))
            await chan.aclose()
            return
        await st.streams.serve(user, port, msg, payload)

    mux = Mux(chan, on_new=on_new)
    link = Link(user, chan)
    # The channel's own tasks (its frame reader) end with it.
    async with Supervisor(f"channel-{user.name}") as tasks:
        tasks.spawn(mux.run(), name="mux")
        if transport:
            link.att = st.relay.attach(user, chan, transport, address)
            link.scope = Scope.CONTROL
        # An agent's own attachment carries its commands; the links its uploads
        # open (push/pull control channels) do not.
        if link.att is not None and user.role == "agent" and client.startswith("freight-agent/"):
            link.att.commands = True
            link.scope = Scope.AGENT
        try:
            if link.scope is Scope.AGENT:
                await st.dispatcher.agent_attached(link, client)
            route = st.dispatcher.route
            while not link.closing:
                msg, payload = await mux.recv_control()
                await route(link, msg)(link, msg, payload)
        finally:
            if link.att is not None:
                st.relay.detach(link.att)


def register(dispatcher: Dispatcher, st: Hub) -> None:
    """The messages every channel answers itself: tickets, pings, and an
    Error frame from the peer (it is going)."""

    async def ticket(link: Link, msg: m.TicketRequest, payload: bytes) -> None:
        try:
            await st.sessions.verify(link.user)
        except NotLoggedIn as exc:
            await link.chan.send(m.Error(code=exc.code, message=exc.message, rid=msg.rid))
            link.closing = True
            return
        user = link.user
        t = st.tickets.issue(
            user.id, user.name, time.monotonic(), link.att if msg.lane else None, user.token
        )
        await link.chan.send(
            m.TicketGrant(
                rid=msg.rid,
                ticket=t.ticket_id.hex(),
                secret=t.secret.hex(),
                expires_in=t.expires - time.monotonic(),
            )
        )

    async def ping(link: Link, msg: m.Ping, payload: bytes) -> None:
        pass

    async def error(link: Link, msg: m.Error, payload: bytes) -> None:
        link.closing = True

    dispatcher.register(m.TicketRequest, ticket, Scope.CONTROL)
    dispatcher.register(m.Ping, ping, Scope.DATA)
    dispatcher.register(m.Error, error, Scope.DATA)


def register_relay(dispatcher: Dispatcher, st: Hub) -> None:
    """The relay's requests and records, on attached channels."""
    relay = st.relay

    async def record(link: Link, msg: m.Relay, payload: bytes) -> None:
        relay.relay(link.att, msg, payload)  # the hot path: straight to the switch

    async def request(link: Link, msg: Any, payload: bytes) -> None:
        await relay.handle(link.att, msg, payload)

    dispatcher.register(m.Relay, record, Scope.CONTROL)
    for kind in (m.Listen, m.Unlisten, m.Dial, m.Offer, m.Claim, m.Hangup, m.CodeFailed, m.CodeOk):
        dispatcher.register(kind, request, Scope.CONTROL)


async def serve_lane(st: Hub, att: Any, chan: Any) -> None:
    """A data connection serving as an attachment's lane: relayed records
    travel on it both ways, sealed per hop without TLS's cost. It lives and
    dies with its attachment."""
    if att.closed:
        return
    att.lane = chan
    try:
        while True:
            msg, payload = await chan.recv()
            if isinstance(msg, m.Relay):
                st.relay.relay(att, msg, payload)
            elif not isinstance(msg, m.Ping):
                raise ProtocolError(f"unexpected {type(msg).__name__} on a relay lane")
    finally:
        att.lane = None
        await att.chan.aclose()  # the client re-attaches with a new lane
