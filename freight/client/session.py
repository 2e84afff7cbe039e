"""A logged-in connection to a hub: pinned (or CA-verified) TLS, optionally
through an HTTP proxy; REST calls, control links."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import aiohttp
from yarl import URL

from ..errors import (
    FreightError,
    NetworkError,
    NodeUnavailable,
    RateLimited,
    RemoteError,
    TLSError,
    UsageError,
    busy_node,
    code_to_error,
    retry_after_seconds,
)
from ..logs import fields
from ..protocol import messages as m
from ..protocol.errors import ProtocolError, VersionMismatch
from ..protocol.limits import PROTOCOL_VERSION
from ..tasks import Supervisor
from ..transport.channel import FrameChannel, Mux, Port
from ..transport.proxy import ProxyError, choose_proxy, parse_proxy_url, refusal
from .config import CA_FILE_ENV as CA_FILE_ENV  # the choices live in .config;
from .config import DATA_PATHS as DATA_PATHS  # imported from here too
from .config import PROXY_ENV as PROXY_ENV
from .config import TRANSPORTS as TRANSPORTS
from .config import ClientConfig
from .trust import ca_context as ca_context  # the trust helpers live in .trust;
from .trust import fetch_fingerprint as fetch_fingerprint  # imported from here too
from .trust import hostport as hostport
from .trust import mismatch_error as mismatch_error
from .trust import untrusted_error as untrusted_error

T = TypeVar("T")

MAX_NODES = 64  # node addresses one login keeps
RANK_EVERY = 600.0  # seconds between measures of the nodes' distance
RANK_TIMEOUT = 2.0  # a node slower than this to connect comes last
CLUSTER_CONNECT_TIMEOUT = 10.0  # seconds a node of several has to take a connection
# No connection was made (refused, unreachable, or TCP and TLS not done in time).
NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def parse_hub_url(url: str) -> URL:
    u = URL(url if "://" in url else f"https://{url}")
    if u.scheme != "https" or not u.host:
        raise UsageError(f"hub address must look like https://HOST:PORT, not {url!r}")
    if u.explicit_port is None:  # not 443: a hub listens on 8443 unless told
        u = u.with_port(8443)
    return u.with_path("/")


def parse_node_urls(text: str) -> list[URL]:
    """A hub's address, or a cluster's: several nodes' separated by commas
    (``https://a:8443,https://b:8444``), each once, in the order given."""
    urls = [parse_hub_url(part.strip()) for part in text.split(",") if part.strip()]
    if not urls:
        raise UsageError("give the hub's address: https://HOST:PORT (several: comma-separated)")
    if len(urls) > MAX_NODES:
        raise UsageError(f"at most {MAX_NODES} node addresses")
    return list(dict.fromkeys(urls))


log = logging.getLogger("freight.session")

# Seconds an attach waits out a node that takes no more attachments this
# second (each answer says how long to wait) before it fails.
ATTACH_PATIENCE = 120.0


def canonical_url(u: URL) -> str:
    """``https://host:port/`` with the port always written, so a saved URL
    parses back to the same port (yarl drops a default 443 when printing)."""
    host = f"[{u.host}]" if u.host and ":" in u.host else u.host
    return f"https://{host}:{u.port}/"


async def connect_time(u: URL, timeout: float = RANK_TIMEOUT) -> float | None:
    """Seconds a TCP connection to ``u`` takes (None: none within ``timeout``)."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(u.host, u.port)
    except (OSError, TimeoutError):
        return None
    took = time.monotonic() - start
    writer.close()
    return took


def unreached(exc: BaseException) -> bool:
    """Did ``exc`` happen before the node took the request (so another node
    may take it instead, without it being done twice)?"""
    return (
        isinstance(exc, NodeUnavailable)
        or (isinstance(exc, NetworkError) and exc.unreached)
        or (isinstance(exc, RateLimited) and exc.busy_node)
    )


class HubSession:
    """How to reach one hub and trust it: by pinned ``fingerprint`` or, with
    ``ca_file``, by a CA; directly or through an HTTP ``proxy``; attached
    over a WebSocket or plain HTTP as ``transport`` says (``auto``: the
    WebSocket, else HTTP). Every connection the session makes (REST, control
    channels, data connections) takes the same route and the same trust.

    A cluster's session knows several ``nodes`` (all presenting the same
    certificate). It uses the one that answered a TCP connection fastest
    (measured at its first connection, again every ``RANK_EVERY`` seconds)
    and moves on to the next when a node cannot be reached or refuses work
    (drained, cut from its database); ``home``, the address logged in to,
    names what is saved for later (a push's resume state)."""

    def __init__(
        self,
        url: str,
        *,
        nodes: Sequence[str] = (),
        fingerprint: str = "",
        token: str = "",
        proxy: URL | str | None = None,
        ca_file: Path | str | None = None,
        transport: str = "auto",
    ) -> None:
        self.home = parse_hub_url(url)
        self.nodes: list[URL] = list(dict.fromkeys([self.home, *map(parse_hub_url, nodes)]))
        self._at = 0  # the node in use
        self._ranked = -RANK_EVERY  # when the nodes were last ranked (monotonic)
        self.fingerprint = fingerprint
        self.token = token
        self.proxy = parse_proxy_url(proxy) if isinstance(proxy, str) else proxy
        self.ca_file = Path(ca_file) if ca_file is not None else None
        if not fingerprint and self.ca_file is None:
            raise TLSError(f"no way to trust the hub at {hostport(self.url)}: no pin and no CA")
        self.transport = check_transport(transport)
        # Set once ``auto`` found the WebSocket refused: every later channel
        # of this session goes straight to plain HTTP instead of asking again.
        self.websocket_refused = False
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> URL:
        """The node in use."""
        return self.nodes[self._at]

    def move_on(self, failed: URL) -> bool:
        """The node at ``failed`` did not serve: use the next one (unless
        another task of this session moved on already). False with one node."""
        if len(self.nodes) < 2:
            return False
        if self.url == failed:
            self._at = (self._at + 1) % len(self.nodes)
        return True

    def prefer(self, url: str) -> bool:
        """Use the cluster's node at ``url`` (one sent us there); False if
        ``url`` is no hub address or the list is full."""
        try:
            u = parse_hub_url(url)
        except UsageError:
            return False
        if u not in self.nodes and len(self.nodes) < MAX_NODES:
            self.nodes.append(u)
        self._at = self.nodes.index(u) if u in self.nodes else self._at
        self._ranked = time.monotonic()  # sent here: no measure undoes it now
        return self.url == u

    async def rank(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Order the nodes by how fast each answers a TCP connection, and use
        the fastest. Through a proxy the order given is kept (the proxy's
        distance is what a measure would show)."""
        now = clock()
        if len(self.nodes) < 2 or self.proxy is not None or now - self._ranked < RANK_EVERY:
            return
        self._ranked = now
        times = await asyncio.gather(*(connect_time(u) for u in self.nodes))
        order = sorted(range(len(self.nodes)), key=lambda i: (times[i] is None, times[i] or 0, i))
        self.nodes = [self.nodes[i] for i in order]
        self._at = 0

    async def on_nodes(self, work: Callable[[URL], Awaitable[T]]) -> T:
        """``work`` on the node in use, then on the next ones while a node
        cannot be reached or refuses work; the last error if none would."""
        await self.rank()
        for tried in range(1, len(self.nodes) + 1):
            url = self.url
            try:
                return await work(url)
            except FreightError as exc:
                if not unreached(exc) or tried == len(self.nodes) or not self.move_on(url):
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    @classmethod
    def from_config(
        cls,
        config: ClientConfig,
        url: str | None = None,
        *,
        proxy: str | None = None,
        ca_file: str | None = None,
        transport: str = "auto",
    ) -> HubSession:
        """The session for the hub logged in to (``url`` or the last one).

        Proxy: ``proxy`` or ``$FREIGHT_PROXY``, else the one saved at login
        for this hub, else ``HTTPS_PROXY`` unless ``NO_PROXY`` exempts the
        hub. Trust: ``ca_file`` or ``$FREIGHT_CA_FILE``, else the CA saved at
        login, else the pinned fingerprint.
        """
        hub, login = config.current(url)
        u = parse_hub_url(hub)
        chosen = choose_proxy(
            u,
            explicit=proxy if proxy is not None else os.environ.get(PROXY_ENV),
            saved=login.get("proxy"),
        )
        ca = ca_file or os.environ.get(CA_FILE_ENV) or login.get("ca_file")
        nodes = [str(n) for n in login.get("nodes", [])]
        if ca:
            return cls(
                hub,
                nodes=nodes,
                token=login["token"],
                proxy=chosen,
                ca_file=Path(ca).expanduser(),
                transport=transport,
            )
        pinned = config.pinned(hostport(u))
        if not pinned:
            raise TLSError(f"no pinned certificate for {hostport(u)}; run freight login again")
        return cls(
            hub,
            nodes=nodes,
            fingerprint=pinned,
            token=login["token"],
            proxy=chosen,
            transport=transport,
        )

    @property
    def connect_timeout(self) -> float:
        """Seconds a node has to take a connection (TCP and TLS) and to
        answer an attach: a cluster's session leaves a stalled node sooner."""
        return 30.0 if len(self.nodes) < 2 else CLUSTER_CONNECT_TIMEOUT

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            tls: ssl.SSLContext | aiohttp.Fingerprint
            if self.ca_file is not None:
                tls = ca_context(self.ca_file)
            else:
                tls = aiohttp.Fingerprint(bytes.fromhex(self.fingerprint.removeprefix("SHA256:")))
            connector = aiohttp.TCPConnector(ssl=tls, limit=64)
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            # No total limit (a control link lives long), but never hang on
            # a peer that accepts and then says nothing.
            connect = self.connect_timeout
            timeout = aiohttp.ClientTimeout(
                total=None, connect=connect, sock_connect=connect, sock_read=120
            )
            # An explicit proxy (never trust_env): the choice was made once,
            # in from_config, so REST, WebSocket and data connections agree.
            self._http = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=timeout,
                proxy=self.proxy,
            )
        return self._http

    def connection_error(self, exc: BaseException) -> FreightError:
        """What an aiohttp failure to connect means for the person: the one
        translation, so REST calls and the control link say the same thing."""
        if isinstance(exc, aiohttp.ClientHttpProxyError) and self.proxy is not None:
            return refusal(self.proxy, hostport(self.url), exc.status, exc.message)
        if isinstance(exc, aiohttp.ClientProxyConnectionError) and self.proxy is not None:
            return ProxyError(
                f"cannot reach the proxy at {self.proxy.host}:{self.proxy.port}: {exc.os_error}"
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError) and self.ca_file:
            cert_error = exc.certificate_error
            if isinstance(cert_error, ssl.SSLError):
                return untrusted_error(self.url, self.ca_file, cert_error)
        err = NetworkError(f"cannot reach the hub at {hostport(self.url)}: {exc}")
        # Not connected at all: another node may take the request instead.
        err.unreached = isinstance(exc, NOT_CONNECTED)
        return err

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> HubSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        return await self.on_nodes(lambda node: self._request(node, method, path, json))

    async def _request(self, node: URL, method: str, path: str, json: Any) -> Any:
        try:
            path, _, query = path.partition("?")
            # The query as its pairs: an encoded one (urlencode) is sent as
            # it was meant, not escaped a second time ("%2C" as "%252C").
            url = node.with_path(path).with_query(parse_qsl(query, keep_blank_values=True))
            async with self.http.request(method, url, json=json) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
                    exc = code_to_error(
                        err.get("code", "remote"), err.get("message", resp.reason or "")
                    )
                    if isinstance(exc, RateLimited):
                        exc.retry_after = retry_after_seconds(resp.headers.get("Retry-After", ""))
                    raise exc
                return body
        except aiohttp.ServerFingerprintMismatch as exc:
            raise mismatch_error(self.url, self.fingerprint, "SHA256:" + exc.got.hex()) from None
        except (aiohttp.ClientHttpProxyError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self.connection_error(exc) from None
        except (aiohttp.ContentTypeError, ValueError) as exc:
            raise RemoteError(f"the hub sent an unreadable answer: {exc}") from None

    async def open_link(self, data_path: str = "auto") -> Link:
        """A control channel for streams, attached as ``self.transport`` says."""
        link = Link(self, data_path)
        await link.connect()
        return link


def check_transport(transport: str) -> str:
    if transport not in TRANSPORTS:
        raise UsageError(f"--transport must be one of {', '.join(TRANSPORTS)}")
    return transport


@contextlib.asynccontextmanager
async def _answered_in_time(session: HubSession, node: URL) -> AsyncIterator[None]:
    """An attach request (the WebSocket upgrade, or the HTTP attachment's
    POST) gets the time a connection would to be answered. It may go over
    a kept-alive connection, with no TCP or TLS step to time out, and a
    node that has stopped (SIGSTOP, a hung process) still has a kernel that
    takes it: left unanswered, the node counts as unreached and the next
    one is tried (nothing was done there)."""
    deadline = asyncio.timeout(session.connect_timeout)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise
        err = NetworkError(
            f"the hub at {hostport(node)} took the connection but did not answer "
            f"the attach within {session.connect_timeout:.0f} s",
            hint="the hub process may be stopped or overloaded: check it on its machine",
        )
        err.unreached = True
        raise err from None


async def _open_http(session: HubSession, node: URL) -> FrameChannel:
    from ..transport.httpchan import open_http_channel

    try:
        async with _answered_in_time(session, node):
            return await open_http_channel(session.http, node)
    except aiohttp.ServerFingerprintMismatch as exc:
        raise mismatch_error(node, session.fingerprint, "SHA256:" + exc.got.hex()) from None
    except (aiohttp.ClientHttpProxyError, aiohttp.ClientConnectionError) as exc:
        raise session.connection_error(exc) from None


async def open_channel(
    session: HubSession, transport: str | None = None, *, hello: str = "freight-cli"
) -> tuple[FrameChannel, str]:
    """Attach to the hub as ``transport`` (default: the session's) says:
    ``auto`` tries the WebSocket first and falls back to plain HTTP when
    the upgrade is refused or cut (a proxy or firewall that does not pass
    WebSockets), and the session remembers it. Returns the channel after
    Hello/Welcome and the transport used."""
    chan, used, _ = await open_channel_at(session, transport, hello=hello)
    return chan, used


async def open_channel_at(
    session: HubSession, transport: str | None = None, *, hello: str = "freight-cli"
) -> tuple[FrameChannel, str, URL]:
    """:func:`open_channel` on the first node of the session's that takes
    it; also returns that node (its data connections go there too).

    A node taking no more attachments this second says how long to wait:
    wait that, with jitter (a crowd coming back after a node's failure
    spreads out), and try again, for ``ATTACH_PATIENCE`` at most."""
    since = time.monotonic()
    while True:
        try:
            return await session.on_nodes(
                lambda node: _open_channel(session, node, transport, hello)
            )
        except RateLimited as exc:
            if time.monotonic() - since > ATTACH_PATIENCE:
                raise
            wait = max(0.1, exc.retry_after) * random.uniform(1.0, 1.5)
            log.info("every node busy", extra=fields(error=exc.message, retry_in=round(wait, 1)))
            await asyncio.sleep(wait)


async def _open_channel(
    session: HubSession, node: URL, transport: str | None, hello: str
) -> tuple[FrameChannel, str, URL]:
    from ..transport.ws import CLIENT_HEARTBEAT, WS_MAX_MESSAGE, WSChannel

    transport = check_transport(transport or session.transport)
    if transport == "auto" and session.websocket_refused:
        transport = "http"
    chan: FrameChannel
    used = transport
    if transport in ("auto", "ws"):
        try:
            async with _answered_in_time(session, node):
                ws = await session.http.ws_connect(
                    node.with_path("/v1/control"),
                    max_msg_size=WS_MAX_MESSAGE,
                    heartbeat=CLIENT_HEARTBEAT,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
            chan, used = WSChannel(ws), "ws"
        except aiohttp.ServerFingerprintMismatch as exc:
            raise mismatch_error(node, session.fingerprint, "SHA256:" + exc.got.hex()) from None
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 429:  # the node takes no more attachments this second
                raise busy_node(
                    f"the hub node at {hostport(node)} takes no more attachments this second",
                    (exc.headers or {}).get("Retry-After", ""),
                ) from None
            if exc.status == 503:
                raise NodeUnavailable(
                    f"the hub node at {hostport(node)} takes no new work now"
                ) from None
            if exc.status == 401:
                raise code_to_error(
                    "not_logged_in", "the hub did not accept the saved login"
                ) from None
            if transport == "ws":
                # The advice is in the message: retries wrap it with their own hint.
                raise NetworkError(
                    f"WebSocket refused: {exc.status} {exc.message} (a proxy or firewall "
                    "on the way may not pass WebSockets: use --transport http or auto)"
                ) from None
            # Something between us and the hub does not pass WebSockets.
            chan, used = await _open_http(session, node), "http"
            session.websocket_refused = True
        except (aiohttp.ClientHttpProxyError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            # Only an upgrade cut half-way is worth trying over plain HTTP;
            # a hub or proxy that cannot be reached at all stays an error.
            unreachable = isinstance(exc, (*NOT_CONNECTED, aiohttp.ClientHttpProxyError))
            if transport == "ws" or unreachable:
                raise session.connection_error(exc) from None
            chan, used = await _open_http(session, node), "http"
            session.websocket_refused = True
    else:
        chan = await _open_http(session, node)
    try:
        await chan.send(
            m.Hello(version=PROTOCOL_VERSION, agent=hello, batch=isinstance(chan, WSChannel))
        )
        async with asyncio.timeout(30):
            msg, _ = await chan.recv()
    except TimeoutError:
        await chan.aclose()
        raise NetworkError("the hub did not answer the attach greeting") from None
    if isinstance(msg, m.Error):
        await chan.aclose()
        raise code_to_error(msg.code, msg.message)
    if not isinstance(msg, m.Welcome):
        await chan.aclose()
        raise ProtocolError(f"expected welcome, got {type(msg).__name__}")
    if msg.version != PROTOCOL_VERSION:
        await chan.aclose()
        raise VersionMismatch(f"hub speaks protocol {msg.version}, we speak {PROTOCOL_VERSION}")
    if msg.batch and isinstance(chan, WSChannel):
        chan.batching = True
    return chan, used, node


class Link:
    """One control channel (a WebSocket, or the HTTP fallback), plus data
    connections opened per stream; a stream that gets none runs inside the
    control channel, whichever it is."""

    def __init__(self, session: HubSession, data_path: str) -> None:
        if data_path not in DATA_PATHS:
            raise UsageError(f"--data-path must be one of {', '.join(DATA_PATHS)}")
        self.session = session
        self.data_path = data_path
        self.direct_ok = data_path != "tls"
        self.transport = ""  # what the control channel runs over, once connected
        self.node = session.url  # the node attached to (its tickets are good there only)
        self.mux: Mux | None = None
        # Every open connection's multiplexer and the task reading it.
        self._readers: dict[Mux, asyncio.Task[None]] = {}
        self._tasks = Supervisor("link-readers")

    def _read(self, mux: Mux) -> None:
        self._readers[mux] = self._tasks.spawn(mux.run(), name="reader", detached=True)

    async def connect(self) -> None:
        chan, self.transport, self.node = await open_channel_at(self.session)
        self.mux = Mux(chan)
        self._read(self.mux)

    async def ticket(self) -> m.TicketGrant:
        assert self.mux is not None
        rid = secrets.token_hex(8)
        await self.mux.channel.send(m.TicketRequest(rid=rid))
        while True:
            async with asyncio.timeout(30):
                msg, _ = await self.mux.recv_control()
            if isinstance(msg, m.TicketGrant) and msg.rid == rid:
                return msg
            if isinstance(msg, m.Error):
                raise code_to_error(msg.code, msg.message)

    async def stream_port(self, sid: str) -> Port:
        """A port for stream ``sid``: on a fresh data connection if possible."""
        # Here, not at the top: the data connection's ciphers are loaded by
        # the first stream, not by every command that only asks the hub.
        from ..transport.dataconn import DataPathUnavailable, open_data_connection

        assert self.mux is not None
        if self.direct_ok:
            try:
                grant = await self.ticket()
                chan = await open_data_connection(
                    self.node.host or "",
                    self.node.port or 8443,
                    ticket_id=bytes.fromhex(grant.ticket),
                    secret=bytes.fromhex(grant.secret),
                    proxy=self.session.proxy,
                )
                mux = Mux(chan)
                self._read(mux)
                return mux.port(sid)
            except DataPathUnavailable:
                if self.data_path == "direct":
                    raise
                self.direct_ok = False  # fall back to frames inside the TLS WebSocket
        return self.mux.port(sid)

    async def release(self, port: Port) -> None:
        """Forget a finished stream and close the data connection it used."""
        port.close()
        if port.mux is not self.mux and port.mux in self._readers:
            reader = self._readers.pop(port.mux)
            await port.mux.channel.aclose()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def aclose(self) -> None:
        readers, self._readers = self._readers, {}
        for mux in readers:
            await mux.channel.aclose()
        await self._tasks.aclose()
