"""The hub's HTTP surface (aiohttp): login, files, admin, control WebSocket,
metrics. Streams ride the control WebSocket or sealed data connections."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..errors import (
    AuthError,
    BadCredentials,
    Conflict,
    Forbidden,
    FreightError,
    LimitReached,
    NotFound,
    NotLoggedIn,
    RateLimited,
    UsageError,
)
from ..protocol import messages as m
from ..protocol.errors import ProtocolError, VersionMismatch
from ..protocol.limits import PROTOCOL_VERSION
from ..transport.channel import ChannelClosed, Mux
from ..transport.ws import WS_MAX_MESSAGE, WSChannel
from . import auth
from .bandwidth import Budget
from .guard import deadlines_middleware
from .state import HubState
from .streams import User

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE: web.AppKey[HubState] = web.AppKey("state", HubState)

_STATUS = {
    UsageError: 400,
    NotLoggedIn: 401,
    BadCredentials: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    LimitReached: 429,
    AuthError: 401,
}


def error_response(exc: FreightError) -> web.Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(int(exc.retry_after or 30) + 1)
    return web.json_response(
        {"error": {"code": exc.code, "message": exc.message}}, status=status, headers=headers
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FreightError as exc:
        return error_response(exc)


def bearer_hash(request: web.Request) -> str:
    """The hash of the request's bearer token (as the database keeps it)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise NotLoggedIn("no token: log in first")
    return auth.token_hash(header[7:].strip())


async def current_login(request: web.Request) -> tuple[User, float]:
    """The request's account (with its login) and when that login expires."""
    st = request.app[STATE]
    token = bearer_hash(request)
    row = await st.db.login_by_token(token, time.time())
    if row is None:
        raise NotLoggedIn(
            "the saved login is unknown, expired or revoked, or the account is disabled; "
            "log in again"
        )
    if row.disabled:
        raise NotLoggedIn(f"account {row.name!r} is disabled; ask an admin to enable it")
    user = User(int(row.id), str(row.name), str(row.role), token, str(row.token_key))
    return user, float(row.token_expires)


async def current_user(request: web.Request) -> User:
    return (await current_login(request))[0]


async def admin_user(request: web.Request) -> User:
    user = await current_user(request)
    if user.role != "admin":
        raise Forbidden("this needs an admin account")
    return user


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "version": __version__, "protocol": PROTOCOL_VERSION})


async def list_files(request: web.Request) -> web.Response:
    user = await current_user(request)
    rows = await request.app[STATE].db.list_files(user.id)
    return web.json_response(
        [
            {
                "name": r.name,
                "size": r.size,
                "digest": r.digest,
                "mtime": r.mtime,
                "created": r.created,
            }
            for r in rows
        ]
    )


async def delete_file(request: web.Request) -> web.Response:
    user = await current_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    if not await st.db.delete_file(user.id, name):
        raise NotFound(f"no file named {name!r} on the hub")
    with contextlib.suppress(FileNotFoundError):
        st.layout.file_path(user.id, name).unlink()
    await st.events.emit("file_removed", user.name, name=name)
    return web.json_response({"removed": name})


async def get_bandwidth(request: web.Request) -> web.Response:
    await current_user(request)
    st = request.app[STATE]
    return web.json_response(st.bandwidth_status())


async def put_bandwidth(request: web.Request) -> web.Response:
    user = await admin_user(request)
    st = request.app[STATE]
    try:
        spec = str((await request.json())["budget"])
    except (ValueError, KeyError, TypeError):
        raise UsageError("body must be JSON with a 'budget' field") from None
    st.bandwidth.budget = Budget.parse(spec)
    await st.db.set_setting("bandwidth", spec)
    await st.events.emit("bandwidth_changed", user.name, budget=spec)
    return web.json_response(st.bandwidth_status())


async def list_streams(request: web.Request) -> web.Response:
    await admin_user(request)
    rows = await request.app[STATE].db.active_streams()
    return web.json_response(
        [
            {
                k: getattr(r, k)
                for k in ("user_id", "sid", "name", "size", "checkpoint", "state", "updated")
            }
            for r in rows
        ]
    )


async def list_events(request: web.Request) -> web.Response:
    await admin_user(request)
    kind = request.query.get("kind")
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        raise UsageError("limit must be a number") from None
    return web.json_response(
        [e.as_json() for e in await request.app[STATE].db.list_events(kind, limit)]
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def control(request: web.Request) -> web.WebSocketResponse:
    """The control channel over a WebSocket: Hello/Welcome, tickets, streams
    and the relay."""
    user, expires = await current_login(request)
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, heartbeat=25.0)
    await ws.prepare(request)
    await attach(request, user, expires, WSChannel(ws), "ws")
    return ws


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
            await chan.send(m.Welcome(version=PROTOCOL_VERSION, node=st.node))
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


async def serve_http_attachment(request: web.Request, chan: Any) -> None:
    """The same channel over the HTTP long-poll fallback."""
    user, expires = await current_login(request)
    await attach(request, user, expires, chan, "http")


async def send_error(st: HubState, chan: Any, exc: FreightError) -> None:
    """Tell the peer why its connection is being closed."""
    protocol = isinstance(exc, ProtocolError)
    if protocol:
        st.metrics.protocol_errors.inc()
    kind = "protocol_error" if protocol else "connection_refused"
    st.events.log.info(kind, code=exc.code, error=exc.message)
    with contextlib.suppress(FreightError, ConnectionError, OSError):
        await chan.send(m.Error(code=exc.code, message=exc.message[:4000]))


async def serve_channel(
    st: HubState,
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
    reader = asyncio.create_task(mux.run())
    from . import agents  # it imports this module

    att = st.relay.attach(user, chan, transport, address) if transport else None
    # An agent's own attachment carries its commands; the links its uploads
    # open (push/pull control channels) do not.
    is_agent = att is not None and user.role == "agent" and client.startswith("freight-agent/")
    if is_agent:
        att.commands = True
    try:
        if is_agent:
            await agents.agent_attached(st, att, client)
        while True:
            msg, payload = await mux.recv_control()
            if att is not None and await st.relay.handle(att, msg, payload):
                continue
            if is_agent and await agents.on_agent_frame(st, att, msg):
                continue
            if isinstance(msg, m.TicketRequest) and att is not None:
                try:
                    await st.sessions.verify(user)
                except NotLoggedIn as exc:
                    await chan.send(m.Error(code=exc.code, message=exc.message, rid=msg.rid))
                    return
                t = st.tickets.issue(
                    user.id, user.name, time.monotonic(), att if msg.lane else None, user.token
                )
                await chan.send(
                    m.TicketGrant(
                        rid=msg.rid,
                        ticket=t.ticket_id.hex(),
                        secret=t.secret.hex(),
                        expires_in=t.expires - time.monotonic(),
                    )
                )
            elif isinstance(msg, m.Ping):
                continue
            elif isinstance(msg, m.Error):
                return
            else:
                where = "control channel" if att is not None else "data connection"
                raise ProtocolError(f"unexpected {type(msg).__name__} on a {where}")
    finally:
        if att is not None:
            st.relay.detach(att)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChannelClosed):
            await reader


async def serve_lane(st: HubState, att: Any, chan: Any) -> None:
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


async def list_connections(request: web.Request) -> web.Response:
    await admin_user(request)
    now = time.time()
    return web.json_response([c.describe(now) for c in request.app[STATE].relay.live()])


async def kill_connection(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    cid = request.match_info["cid"]
    if not st.relay.kill(cid, admin.name):
        raise NotFound(f"no live connection {cid!r}")
    await st.events.emit("connection_killed", admin.name, cid=cid)
    return web.json_response({"killed": cid})


def build_app(state: HubState) -> web.Application:
    from . import agents, collect, httpattach, keys, users  # they import this module

    app = web.Application(
        middlewares=[deadlines_middleware(lambda r: r.app[STATE].port_guard), errors_middleware],
        client_max_size=1024 * 1024,
    )
    app[STATE] = state
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/files", list_files)
    app.router.add_delete("/v1/files/{name:.+}", delete_file)
    app.router.add_get("/v1/bandwidth", get_bandwidth)
    app.router.add_put("/v1/admin/bandwidth", put_bandwidth)
    app.router.add_get("/v1/admin/streams", list_streams)
    app.router.add_get("/v1/admin/events", list_events)
    users.add_routes(app)
    agents.add_routes(app)
    collect.add_routes(app)
    keys.add_routes(app)
    app.router.add_get("/v1/admin/connections", list_connections)
    app.router.add_delete("/v1/admin/connections/{cid}", kill_connection)
    app.router.add_get("/v1/control", control)
    httpattach.add_routes(app, serve_http_attachment)
    app.router.add_get("/metrics", metrics)
    return app
