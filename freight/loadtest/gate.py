"""The fault gate: a TCP relay on loopback between one row's clients and the
hub. Every byte of the row (TLS, WebSocket, sealed data connections) passes
through it, so the tester can hurt the row's connections the way networks
do, without touching the hub or the clients' code:

* :meth:`Gate.drop` resets every connection (``drop@T``, each client at a
  random moment within a second; ``reconnect_storm@T``, all at once);
* :meth:`Gate.half_open` stops carrying bytes either way and leaves the
  sockets open, as a dead NAT entry does; they are closed after
  :data:`HALF_OPEN_HOLD` seconds;
* :meth:`Gate.stall` holds every byte for a while, then lets them through;
* :meth:`Gate.garbage` writes random bytes into each connection towards
  the hub (or the client);
* ``bad_tls`` corrupts the first bytes every new connection sends (its TLS
  handshake);
* ``slow_reader(RATE)`` lets the hub's bytes through to the row's clients
  at no more than RATE bytes per second.

A row with no fault that needs the gate gets a *direct* one
(``relay=False``): its clients connect to the hub itself, and the tester
spends nothing carrying their bytes.

Bounded: at most :data:`MAX_PIPES` connections at once (more are refused),
64 KiB read at a time, and a side that stops reading holds up its peer
(``drain``), not the gate's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from ..tasks import Supervisor

MAX_PIPES: Final = 20_000
CHUNK: Final = 65536
HALF_OPEN_HOLD: Final = 120.0  # seconds a half-open connection is kept
STALL_FOR: Final = 5.0  # seconds a stall holds the bytes


@dataclass(eq=False)
class Pipe:
    """One client connection through the gate."""

    client: asyncio.StreamWriter
    hub: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    frozen: bool = False  # half open: nothing passes, nothing is closed
    held_until: float = 0.0  # stalled until then (monotonic)

    def reset(self) -> None:
        for w in (self.client, self.hub):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            w.transport.abort()
        for task in self.tasks:
            task.cancel()


class Gate:
    def __init__(
        self,
        hub: tuple[str, int],
        *,
        bad_tls: bool = False,
        slow_rate: int | None = None,
        rng: random.Random | None = None,
        relay: bool = True,
    ) -> None:
        self.hub = hub
        self.relay = relay
        self.host = "127.0.0.1"  # where the row's clients connect
        self.bad_tls = bad_tls
        self.slow_rate = slow_rate
        self.rng = rng or random.Random()
        self.pipes: set[Pipe] = set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self.tasks = Supervisor("gate")

    async def start(self) -> int:
        if not self.relay:
            self.host, self.port = self.hub
            return self.port
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        for pipe in list(self.pipes):
            pipe.reset()
        self.pipes.clear()
        await self.tasks.aclose()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/"

    # --- faults ---------------------------------------------------------------

    def drop(self, spread: float = 0.0) -> int:
        """Reset every connection now, or each at a random moment within
        ``spread`` seconds; how many there were."""
        pipes = list(self.pipes)
        for pipe in pipes:
            if spread <= 0:
                self._end(pipe)
            else:
                asyncio.get_running_loop().call_later(self.rng.uniform(0, spread), self._end, pipe)
        return len(pipes)

    def half_open(self) -> int:
        pipes = list(self.pipes)
        for pipe in pipes:
            pipe.frozen = True
            asyncio.get_running_loop().call_later(HALF_OPEN_HOLD, self._end, pipe)
        return len(pipes)

    def stall(self, seconds: float = STALL_FOR) -> int:
        until = time.monotonic() + seconds
        for pipe in self.pipes:
            pipe.held_until = until
        return len(self.pipes)

    def garbage(self, size: int = 256, *, towards_client: bool = False) -> int:
        """Write ``size`` random bytes into every connection, towards the
        hub (what a ``garbage@T`` fault does) or towards the client."""
        pipes = list(self.pipes)
        for pipe in pipes:
            side = pipe.client if towards_client else pipe.hub
            if not side.is_closing():
                side.write(os.urandom(size))
        return len(pipes)

    def _end(self, pipe: Pipe) -> None:
        if pipe in self.pipes:
            self.pipes.discard(pipe)
            pipe.reset()

    # --- carrying -------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.pipes) >= MAX_PIPES:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            hub_reader, hub_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.hub), timeout=10
            )
        except (OSError, TimeoutError):
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        pipe = Pipe(writer, hub_writer)
        self.pipes.add(pipe)
        up = self.tasks.spawn(
            self._carry(pipe, reader, hub_writer, first=self.bad_tls), name="up", detached=True
        )
        down = self.tasks.spawn(
            self._carry(pipe, hub_reader, writer, rate=self.slow_rate), name="down", detached=True
        )
        pipe.tasks = [up, down]
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._end(pipe)

    async def _carry(
        self,
        pipe: Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        first: bool = False,
        rate: int | None = None,
    ) -> None:
        corrupt = first
        try:
            while True:
                data = await reader.read(CHUNK if rate is None else min(CHUNK, max(1, rate // 10)))
                if not data:  # half-close passed on, unless that side is gone
                    with contextlib.suppress(OSError, RuntimeError):
                        if not writer.is_closing() and writer.can_write_eof():
                            writer.write_eof()
                    return
                while pipe.frozen or pipe.held_until > time.monotonic():
                    await asyncio.sleep(0.05 if not pipe.frozen else 1.0)
                if corrupt:  # the TLS ClientHello's record header and version
                    data = bytes(b ^ 0x5A for b in data[:16]) + data[16:]
                    corrupt = False
                if writer.is_closing():  # that side is gone (uvloop raises on a write)
                    raise ConnectionResetError("the other side of the pipe is closed")
                writer.write(data)
                await writer.drain()
                if rate is not None:
                    await asyncio.sleep(len(data) / rate)
        except (OSError, ConnectionError):
            # A reset (the hub drops a connection that spoke garbage with
            # bytes unread) or a write to a gone peer: there is no half of
            # the connection left to carry, so end the other side too.
            asyncio.get_running_loop().call_soon(self._end, pipe)
