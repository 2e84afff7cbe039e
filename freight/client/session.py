"""A logged-in connection to a hub: pinned TLS, REST calls, control links."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import ssl
from typing import Any

import aiohttp
from yarl import URL

from ..errors import (
    FingerprintMismatch,
    NetworkError,
    RemoteError,
    TLSError,
    UsageError,
    code_to_error,
)
from ..protocol import messages as m
from ..protocol.errors import ProtocolError, VersionMismatch
from ..protocol.limits import PROTOCOL_VERSION
from ..transport.channel import Mux, Port
from ..transport.dataconn import DataPathUnavailable, open_data_connection
from ..transport.ws import WS_MAX_MESSAGE, WSChannel
from .config import ClientConfig

DATA_PATHS = ("auto", "direct", "tls")


def parse_hub_url(url: str) -> URL:
    u = URL(url if "://" in url else f"https://{url}")
    if u.scheme != "https" or not u.host:
        raise UsageError(f"hub address must look like https://HOST:PORT, not {url!r}")
    if u.explicit_port is None:  # not 443: a hub listens on 8443 unless told
        u = u.with_port(8443)
    return u.with_path("/")


def canonical_url(u: URL) -> str:
    """``https://host:port/`` with the port always written, so a saved URL
    parses back to the same port (yarl drops a default 443 when printing)."""
    host = f"[{u.host}]" if u.host and ":" in u.host else u.host
    return f"https://{host}:{u.port}/"


def hostport(u: URL) -> str:
    return f"{u.host}:{u.port}"


async def fetch_fingerprint(u: URL, timeout: float = 10.0) -> str:
    """The SHA-256 fingerprint of the certificate the hub presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(u.host, u.port, ssl=ctx, server_hostname=u.host), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise NetworkError(f"cannot reach {u.host}:{u.port}: {exc}") from None
    except ssl.SSLError as exc:
        raise TLSError(f"TLS handshake with {u.host}:{u.port} failed: {exc}") from None
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def mismatch_error(u: URL, pinned: str, seen: str) -> FingerprintMismatch:
    return FingerprintMismatch(
        f"the hub at {hostport(u)} presents certificate {seen}, but {pinned} is pinned",
        hint=(
            "this may be an attack; if the hub's certificate was replaced on purpose, confirm "
            f"the new fingerprint with its admin and run: freight login {u} --fingerprint {seen}"
        ),
    )


class HubSession:
    def __init__(self, url: str, *, fingerprint: str, token: str = "") -> None:
        self.url = parse_hub_url(url)
        self.fingerprint = fingerprint
        self.token = token
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: ClientConfig, url: str | None = None) -> HubSession:
        hub, login = config.current(url)
        u = parse_hub_url(hub)
        pinned = config.pinned(hostport(u))
        if not pinned:
            raise TLSError(f"no pinned certificate for {hostport(u)}; run freight login again")
        return cls(hub, fingerprint=pinned, token=login["token"])

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            digest = bytes.fromhex(self.fingerprint.removeprefix("SHA256:"))
            connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(digest), limit=64)
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            # No total limit (a control link lives long), but never hang on
            # a peer that accepts and then says nothing.
            timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=120)
            self._http = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=timeout
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> HubSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            path, _, query = path.partition("?")
            url = self.url.with_path(path).with_query(query)
            async with self.http.request(method, url, json=json) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
                    raise code_to_error(
                        err.get("code", "remote"), err.get("message", resp.reason or "")
                    )
                return body
        except aiohttp.ServerFingerprintMismatch as exc:
            raise mismatch_error(self.url, self.fingerprint, "SHA256:" + exc.got.hex()) from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise NetworkError(f"cannot reach the hub at {hostport(self.url)}: {exc}") from None
        except (aiohttp.ContentTypeError, ValueError) as exc:
            raise RemoteError(f"the hub sent an unreadable answer: {exc}") from None

    async def open_link(self, data_path: str = "auto") -> Link:
        link = Link(self, data_path)
        await link.connect()
        return link


class Link:
    """One control WebSocket, plus data connections opened per stream."""

    def __init__(self, session: HubSession, data_path: str) -> None:
        if data_path not in DATA_PATHS:
            raise UsageError(f"--data-path must be one of {', '.join(DATA_PATHS)}")
        self.session = session
        self.data_path = data_path
        self.direct_ok = data_path != "tls"
        self.mux: Mux | None = None
        # Every open connection's multiplexer and the task reading it.
        self._readers: dict[Mux, asyncio.Task[None]] = {}

    async def connect(self) -> None:
        s = self.session
        try:
            ws = await s.http.ws_connect(
                s.url.with_path("/v1/control"),
                max_msg_size=WS_MAX_MESSAGE,
                heartbeat=30.0,
                # A link being dropped after a stall should not wait long
                # for a close handshake the dead path will never carry.
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            raise mismatch_error(s.url, s.fingerprint, "SHA256:" + exc.got.hex()) from None
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise code_to_error(
                    "not_logged_in", "the hub did not accept the saved login"
                ) from None
            raise NetworkError(f"control channel refused: {exc.status} {exc.message}") from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise NetworkError(f"cannot reach the hub at {hostport(s.url)}: {exc}") from None
        chan = WSChannel(ws)
        await chan.send(m.Hello(version=PROTOCOL_VERSION, agent="freight-cli"))
        msg, _ = await asyncio.wait_for(chan.recv(), 30)
        if isinstance(msg, m.Error):
            raise code_to_error(msg.code, msg.message)
        if not isinstance(msg, m.Welcome):
            raise ProtocolError(f"expected welcome, got {type(msg).__name__}")
        if msg.version != PROTOCOL_VERSION:
            raise VersionMismatch(f"hub speaks protocol {msg.version}, we speak {PROTOCOL_VERSION}")
        self.mux = Mux(chan)
        self._readers[self.mux] = asyncio.create_task(self.mux.run())

    async def ticket(self) -> m.TicketGrant:
        assert self.mux is not None
        rid = secrets.token_hex(8)
        await self.mux.channel.send(m.TicketRequest(rid=rid))
        while True:
            msg, _ = await asyncio.wait_for(self.mux.recv_control(), 30)
            if isinstance(msg, m.TicketGrant) and msg.rid == rid:
                return msg
            if isinstance(msg, m.Error):
                raise code_to_error(msg.code, msg.message)

    async def stream_port(self, sid: str) -> Port:
        """A port for stream ``sid``: on a fresh data connection if possible."""
        assert self.mux is not None
        if self.direct_ok:
            try:
                grant = await self.ticket()
                chan = await open_data_connection(
                    self.session.url.host or "",
                    self.session.url.port or 8443,
                    ticket_id=bytes.fromhex(grant.ticket),
                    secret=bytes.fromhex(grant.secret),
                )
                mux = Mux(chan)
                self._readers[mux] = asyncio.create_task(mux.run())
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
        for task in readers.values():
            task.cancel()
        await asyncio.gather(*readers.values(), return_exceptions=True)
