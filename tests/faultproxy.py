"""A fault-injecting TCP proxy for tests, run in-process on 127.0.0.1.

It sits in front of a hub's one port, so it carries both the TLS connections
(HTTPS, control WebSocket) and the sealed data connections. Faults:

* ``cut_every=N``: every connection is reset once N bytes have been forwarded
  in either direction (N bytes get through, then both sides see a RST);
* ``stall()``: every connection open at that moment stops forwarding in both
  directions and stays open (a black-holed path); connections opened later
  forward normally;
* ``hold()``: connections opened from now on are accepted but wait, before the
  proxy dials the hub, until ``release()`` (a slow first hop whose end the
  test chooses; ``connections`` counts them as they arrive).

It counts the bytes it forwarded client→hub (``up_bytes``) and hub→client
(``down_bytes``), and how many connections it accepted.

    with FaultProxy(hub.port, cut_every=3 * MiB) as proxy:
        client.login(url=proxy.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

READ_BYTES = 256 * 1024
T = TypeVar("T")


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    hub: asyncio.StreamWriter
    up: int = 0  # bytes forwarded client -> hub on this connection
    down: int = 0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: bool = False
    dead: bool = False

    def abort(self) -> None:
        """Reset both sides (RST, not a polite FIN)."""
        self.dead = True
        for w in (self.client, self.hub):
            with contextlib.suppress(Exception):
                w.transport.abort()


class FaultProxy:
    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        cut_every: int | None = None,
        sock_buffer: int | None = 256 * 1024,
    ) -> None:
        self.target_host = target_host
        # Kernel buffers of the proxy's own sockets (None: the OS's autotuned
        # ones, up to tens of MiB on loopback). Small buffers make a stall
        # look like a real black hole: the sender's own buffers fill at once.
        self.sock_buffer = sock_buffer
        self.target_port = target_port
        self.cut_every = cut_every
        self.port = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self.connections = 0
        self.cuts = 0
        self.refused = 0  # connections the hub did not accept (e.g. it was down)
        self._conns: set[_Conn] = set()
        self._gate = asyncio.Event()  # clear: new connections wait (hold)
        self._gate.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # --- control, called from the test's thread --------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                listener = self._socket()
                listener.bind(("127.0.0.1", 0))
                self.port = int(listener.getsockname()[1])
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, sock=listener, limit=READ_BYTES)
                )
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"fault proxy did not start: {failure}")
        return self

    def stall(self) -> int:
        """Freeze every connection open now; returns how many were frozen."""
        return self._call(self._stall)

    def hold(self) -> None:
        """Connections opened from now on wait until :meth:`release`."""
        self._call(self._gate.clear)

    def release(self) -> None:
        """Let held connections (and later ones) through to the hub."""
        self._call(self._gate.set)

    def set_cut_every(self, n: int | None) -> None:
        """Change the cut threshold for connections opened from now on and
        for the bytes still to come on open ones."""
        self._call(lambda: setattr(self, "cut_every", n))

    def open_connections(self) -> int:
        return self._call(lambda: sum(1 for c in self._conns if not c.dead))

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for c in list(self._conns):
                c.abort()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop and return its result."""
        assert self._loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # --- the loop side ------------------------------------------------------------

    def _socket(self) -> socket.socket:
        """A TCP socket with the configured buffers (set before connecting,
        so they hold for the whole connection; accepted sockets inherit)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.sock_buffer is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, self.sock_buffer)
        return sock

    def _stall(self) -> int:
        n = 0
        for c in self._conns:
            if not c.dead and not c.stalled:
                c.stalled = True
                c.flowing.clear()
                n += 1
        return n

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._gate.wait()
            upstream = self._socket()
            upstream.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(
                    upstream, (self.target_host, self.target_port)
                )
                hreader, hwriter = await asyncio.open_connection(sock=upstream, limit=READ_BYTES)
            except OSError:
                upstream.close()
                self.refused += 1
                cwriter.transport.abort()
                return
            conn = _Conn(cwriter, hwriter)
            conn.flowing.set()
            self._conns.add(conn)
            try:
                await asyncio.gather(
                    self._pump(conn, creader, hwriter, up=True),
                    self._pump(conn, hreader, cwriter, up=False),
                )
            finally:
                self._conns.discard(conn)
                if not conn.dead:
                    for w in (cwriter, hwriter):
                        with contextlib.suppress(Exception):
                            w.close()
        except asyncio.CancelledError:
            pass  # the proxy is closing
        finally:
            self._tasks.discard(task)

    async def _pump(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        try:
            while not conn.dead:
                await conn.flowing.wait()
                data = await reader.read(READ_BYTES)
                if conn.dead:
                    return
                if conn.stalled:
                    # Frozen while we were reading: hold the bytes for ever.
                    await asyncio.Event().wait()
                if not data:
                    # A polite close on one side: pass the FIN on, keep the
                    # other direction running.
                    with contextlib.suppress(Exception):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                cut = False
                if self.cut_every is not None:
                    room = self.cut_every - (conn.up if up else conn.down)
                    if len(data) >= room:
                        data, cut = data[: max(0, room)], True
                if data:
                    writer.write(data)
                    await writer.drain()
                    if up:
                        conn.up += len(data)
                        self.up_bytes += len(data)
                    else:
                        conn.down += len(data)
                        self.down_bytes += len(data)
                if cut:
                    # Let the last allowed bytes reach the kernel, then reset.
                    for _ in range(1000):
                        if not writer.transport.get_write_buffer_size():
                            break
                        await asyncio.sleep(0.001)
                    self.cuts += 1
                    conn.abort()
                    return
        except (ConnectionError, OSError):
            conn.abort()
