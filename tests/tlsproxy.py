"""A TLS-inspecting HTTP proxy for tests, like a corporate middlebox.

It accepts ``CONNECT host:port``, then terminates the client's TLS itself
with a certificate its own CA signs (``ca_pem``: what the client must trust
with ``--ca-file``) and re-originates every HTTP request to the target over
a TLS connection of its own. What it does not understand it refuses:

* a WebSocket upgrade gets ``400`` (squid answers the same: it drops the
  ``Upgrade`` header and the hub then refuses a plain GET on its WebSocket
  path);
* a tunnel whose first byte is not a TLS handshake is closed at once, so
  the hub's sealed data connections never open.

Requests and responses are streamed, not buffered: the HTTP fallback's long
down response and its POSTed frames pass as they come. Its outgoing
connections leave from ``source`` (127.0.0.2 by default), so
tests/httpproxy.py's Firewall in front of the hub can prove that nothing
reached the hub but through this proxy:

    with Firewall(hub.port) as fw, InspectingProxy(tmp_path / "proxy") as proxy:
        client.run("login", fw.url, "--proxy", proxy.url, "--ca-file", str(proxy.ca_pem), ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.certs import make_ca, make_leaf, write_ca
from tests.httpproxy import PROXY_SOURCE, TLS_HANDSHAKE

# Headers of one hop, never forwarded (RFC 9110 section 7.6.1), plus the
# ones aiohttp sets itself for the next hop.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
MAX_CONNECT_HEAD = 16 * 1024
READ_BYTES = 256 * 1024


class InspectingProxy:
    """The proxy, on its own event loop in a thread. Counters: ``tunnels``
    (CONNECTs answered), ``non_tls`` (tunnels closed for not starting with
    TLS), ``upgrades_refused`` and ``forwarded`` (requests passed on)."""

    def __init__(self, workdir: Path, *, source: str = PROXY_SOURCE) -> None:
        self.workdir = workdir
        self.source = source
        workdir.mkdir(parents=True, exist_ok=True)
        ca_key, ca = make_ca("freight test inspecting proxy CA")
        self.ca_pem = write_ca(ca, workdir / "proxy-ca.pem")
        cert, key = make_leaf(ca_key, ca, workdir, stem="proxy-leaf")
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert, key)
        self.port = 0
        self.tunnels = 0
        self.non_tls = 0
        self.upgrades_refused = 0
        self.forwarded = 0
        self._targets: dict[tuple[str, int], str] = {}  # client address -> host:port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets: set[socket.socket] = set()
        self._runner: web.AppRunner | None = None
        self._upstream: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- life cycle -------------------------------------------------------------

    def start(self) -> InspectingProxy:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            listener = loop.run_until_complete(self._open())
            ready.set()
            try:
                loop.run_forever()
            finally:
                listener.close()
                loop.close()

        self._thread = threading.Thread(target=main, name="inspecting-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise AssertionError("the inspecting proxy did not start")
        return self

    async def _open(self) -> socket.socket:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        connector = aiohttp.TCPConnector(ssl=False, local_addr=(self.source, 0), limit=0)
        self._upstream = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        self._spawn(self._accept(sock))
        return sock

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def stop() -> None:
            self.cut()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._upstream is not None:
                await self._upstream.close()
            if self._runner is not None:
                await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> InspectingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self) -> int:
        """Reset every client connection open now (a proxy restart, say);
        returns how many. Safe to call from any thread."""
        if self._loop is not None and threading.current_thread() is not self._thread:
            fut = asyncio.run_coroutine_threadsafe(self._cut(), self._loop)
            return fut.result(10)
        return self._cut_now()

    async def _cut(self) -> int:
        return self._cut_now()

    def _cut_now(self) -> int:
        cut = 0
        for sock in list(self._sockets):
            if sock.fileno() < 0:  # its connection ended already
                self._sockets.discard(sock)
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.shutdown(socket.SHUT_RDWR)
                cut += 1
        return cut

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- CONNECT ------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            self._spawn(self._tunnel(sock))

    async def _tunnel(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._sockets.add(sock)
        handed_over = False
        try:
            head = bytearray()
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk or len(head) > MAX_CONNECT_HEAD:
                    return
                head += chunk
            line = bytes(head).split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) != 3 or line[0] != "CONNECT":
                await loop.sock_sendall(sock, b"HTTP/1.1 405 Only CONNECT\r\n\r\n")
                return
            await loop.sock_sendall(sock, b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.tunnels += 1
            first = await _peek_byte(loop, sock)
            if first != TLS_HANDSHAKE:
                self.non_tls += 1
                return
            self._targets[sock.getpeername()[:2]] = line[1]
            assert self._runner is not None and self._runner.server is not None
            await loop.connect_accepted_socket(
                self._runner.server, sock, ssl=self._tls, ssl_handshake_timeout=15
            )
            handed_over = True
        except OSError:
            pass
        finally:
            if not handed_over:
                self._sockets.discard(sock)
                sock.close()

    # --- HTTP inside the tunnel ---------------------------------------------------

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if "upgrade" in request.headers.get("Connection", "").lower() or "Upgrade" in (
            request.headers
        ):
            self.upgrades_refused += 1
            return web.Response(status=400, text="upgrades are not allowed by this proxy\n")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        target = self._targets.get(tuple(peer[:2])) if peer else None
        if target is None:
            return web.Response(status=502, text="no tunnel for this connection\n")
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        body = request.content if request.body_exists else None
        if body is not None and "Content-Length" not in headers:
            body = request.content.iter_any()  # type: ignore[assignment]
        assert self._upstream is not None
        self.forwarded += 1
        try:
            upstream = await self._upstream.request(
                request.method,
                f"https://{target}{request.rel_url}",
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"the proxy cannot reach {target}: {exc}\n")
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    resp.headers.add(k, v)
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            while chunk := await upstream.content.readany():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            upstream.close()


async def _peek_byte(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int | None:
    """The first byte the client sends through the tunnel, left unread."""
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, 15)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
    data = sock.recv(1, socket.MSG_PEEK)
    return data[0] if data else None
