"""UDP helpers for the datagram-tunnel tests: an echo server, a client socket
whose every wait has a deadline, and a loopback TCP "tunnel" whose streams
are served by :func:`freight.client.udptunnel.serve_udp_target`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from freight.client.udptunnel import ByteReader, ByteWriter, serve_udp_target
from freight.protocol.datagrams import Counters, FlowLimits

DEADLINE = 5.0


class Echo:
    """Counts what it echoed. (A raw socket: asyncio's datagram transport
    silently skips sending an empty datagram, and UDP allows them.)"""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0

    def readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            self.received += 1
            with contextlib.suppress(BlockingIOError):
                self.sock.sendto(data, addr)


@contextlib.asynccontextmanager
async def udp_echo(host: str = "127.0.0.1") -> AsyncIterator[tuple[int, Echo]]:
    """A UDP echo server on ``host``: yields (port, echo)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, 0))
    echo = Echo(sock)
    loop.add_reader(sock.fileno(), echo.readable)
    try:
        yield sock.getsockname()[1], echo
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


class UdpClient:
    """A local UDP socket talking to one address, every wait bounded."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect((host, port))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    async def recv(self, timeout: float = DEADLINE) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)

    async def ask(self, data: bytes, timeout: float = DEADLINE) -> bytes:
        self.send(data)
        return await self.recv(timeout)

    async def nothing_within(self, seconds: float) -> bool:
        """True when no datagram arrives within ``seconds``."""
        try:
            await self.recv(seconds)
        except TimeoutError:
            return True
        return False


async def wait_until(cond: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Until ``cond()`` holds; fails after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


class LoopbackTunnel:
    """Streams over loopback TCP, each served at the far end by
    ``serve_udp_target`` (or by ``far_end`` when a test plays a hostile peer)."""

    def __init__(
        self,
        target_port: int,
        *,
        limits: FlowLimits | None = None,
        far_end: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any] | None = None,
    ) -> None:
        self.target_port = target_port
        self.limits = limits
        self.far_end = far_end
        self.results: list[Counters | BaseException] = []
        self.opened = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.far_end is not None:
            await self.far_end(reader, writer)
            return
        try:
            counters = await serve_udp_target(
                reader, writer, "127.0.0.1", self.target_port, limits=self.limits
            )
        except Exception as exc:  # recorded for the test to assert on
            self.results.append(exc)
        else:
            self.results.append(counters)

    async def __aenter__(self) -> LoopbackTunnel:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), DEADLINE)

    async def open_stream(self) -> tuple[ByteReader, ByteWriter]:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", port)


@contextlib.contextmanager
def udp_echo_thread(host: str = "127.0.0.1") -> Iterator[tuple[int, list[int]]]:
    """A UDP echo server in a thread, for tests that run CLI processes:
    yields (port, [datagrams echoed so far])."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, 0))
    sock.settimeout(0.2)
    count = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            count[0] += 1
            with contextlib.suppress(OSError):
                sock.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], count
    finally:
        stop.set()
        thread.join(DEADLINE)
        sock.close()


def udp_ask(port: int, data: bytes, *, sock: socket.socket | None = None) -> bytes:
    """One datagram to 127.0.0.1:port and its answer (DEADLINE seconds)."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(DEADLINE)
        s.sendto(data, ("127.0.0.1", port))
        return s.recv(65536)
    finally:
        if own:
            s.close()
