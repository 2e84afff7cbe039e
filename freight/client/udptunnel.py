"""UDP through a tunnel: the asyncio side of docs/protocol.md §19.

:class:`UdpForwardServer` binds a local UDP port. Each source address that
sends to it is one flow (:class:`~freight.protocol.datagrams.FlowTable`
decides, bounds and expires them); a new flow opens one stream through the
injected ``open_stream()`` coroutine and its datagrams travel over that
stream as records, answers coming back the same way to the source.
:func:`serve_udp_target` is the far side of one such stream: it sends the
datagrams to the real UDP target from a socket of its own and frames what
the target answers back onto the stream.

Both sides read their UDP socket with ``loop.add_reader`` and drain up to
:data:`READ_BATCH` datagrams per wake-up (asyncio's datagram transport reads
one per event-loop turn, which caps a flow at a few MB/s), and coalesce
every queued record into one stream write. A datagram that finds a queue
full, or the local socket's send buffer full, is dropped and counted, as
UDP would drop it: a slow stream never grows memory beyond the table's
bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from ..errors import FreightError, NetworkError, UsageError
from ..protocol.datagrams import Address, Counters, Flow, FlowLimits, FlowState, FlowTable
from ..protocol.datagrams import MalformedDatagram as MalformedDatagram
from ..tasks import Supervisor

log = logging.getLogger("freight.client.udptunnel")

READ_BATCH = 256  # datagrams read per wake-up before yielding to the loop
STREAM_READ = 256 * 1024  # bytes asked of the stream per read
SOCKET_BUFFER = 4 * 1024 * 1024  # SO_RCVBUF/SO_SNDBUF asked for (the kernel may cap it)
OPEN_TIMEOUT = 15.0  # seconds a flow waits for its stream to open
CLOSE_TIMEOUT = 2.0  # seconds a stream is given to close
MESSAGE_SIZE = 256 * 1024  # bytes per message on a message connection


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


OpenStream = Callable[[], Awaitable[tuple[ByteReader, ByteWriter]]]


class MessageChannel(Protocol):
    """A connection that carries whole messages: a relayed connection (§12)."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self, timeout: float = ...) -> None: ...


class MessageStream:
    """A message connection as the byte reader and writer the pumps use: a
    read is the next message (``b""`` at its end), what one drain sends goes
    out in messages of at most :data:`MESSAGE_SIZE` bytes (records may span
    two; the decoder does not care), and closing sends the end of stream and
    waits for the far end to acknowledge what was sent."""

    def __init__(self, conn: MessageChannel) -> None:
        self.conn = conn
        self._out: list[bytes] = []
        self._closing = False

    async def read(self, n: int = -1) -> bytes:
        return await self.conn.recv()

    def write(self, data: bytes) -> None:
        self._out.append(data)

    async def drain(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        view = memoryview(data)
        for start in range(0, len(data), MESSAGE_SIZE):
            await self.conn.send(bytes(view[start : start + MESSAGE_SIZE]))

    def close(self) -> None:
        self._closing = True

    async def wait_closed(self) -> None:
        await self.conn.close(CLOSE_TIMEOUT / 2)


def udp_socket(host: str, port: int, *, family: int = socket.AF_UNSPEC) -> socket.socket:
    """A non-blocking UDP socket with large buffers (not yet bound)."""
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    if not infos:
        raise UsageError(f"cannot resolve {host!r} for UDP")
    sock = socket.socket(infos[0][0], socket.SOCK_DGRAM)
    sock.setblocking(False)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    return sock


async def _close(writer: ByteWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, FreightError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


async def _until_first(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` together until one returns; the others are cancelled.
    The first error of one of them is raised as itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
            done = asyncio.Event()
            for task in tasks:
                task.add_done_callback(lambda _t: done.set())
            await done.wait()
            for task in tasks:
                task.cancel()
    except ExceptionGroup as group:
        raise group.exceptions[0] from None


async def _pump_out(flow: Flow, wake: asyncio.Event, writer: ByteWriter) -> None:
    """Queued records of ``flow`` to its stream, coalesced per write."""
    while True:
        await wake.wait()
        wake.clear()
        data = flow.take()
        if data:
            writer.write(data)
            await writer.drain()


async def _pump_in(
    flow: Flow, reader: ByteReader, send: Callable[[bytes], None], clock: Callable[[], float]
) -> None:
    """Records from the stream, sent as datagrams; ends the flow at EOF."""
    while True:
        chunk = await reader.read(STREAM_READ)
        if not chunk:
            if flow.state is FlowState.OPEN:
                flow.ended()
            return
        for datagram in flow.from_stream(chunk, clock()):
            send(datagram)


class UdpForwardServer:
    """A local UDP port whose flows each travel over one tunnel stream."""

    def __init__(
        self,
        open_stream: Callable[[], Awaitable[tuple[ByteReader, ByteWriter]]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: FlowLimits | None = None,
        open_timeout: float = OPEN_TIMEOUT,
        name: str = "udp-forward",
    ) -> None:
        self._open_stream = open_stream
        self.host = host
        self.port = port
        self.table = FlowTable(limits)
        self.open_timeout = open_timeout
        self.name = name
        self.dropped_send = 0  # answers the local socket could not take
        self.garbage = 0  # flows closed because the far end sent garbage
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks = Supervisor(name)
        self._wakes: dict[int, asyncio.Event] = {}
        self._flow_tasks: dict[int, asyncio.Task[None]] = {}
        self._timer_wake = asyncio.Event()
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<UdpForwardServer {self.name} {self.host}:{self.port} {self.table!r}>"

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.host, self.port

    async def start(self) -> tuple[str, int]:
        """Bind the local port and start serving; returns the bound address."""
        loop = asyncio.get_running_loop()
        sock = udp_socket(self.host, self.port)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise UsageError(
                f"cannot bind UDP {self.host}:{self.port}: {exc.strerror or exc}",
                hint="pick another local port, or stop what already uses it",
            ) from exc
        self._sock, self._loop = sock, loop
        self.host, self.port = sock.getsockname()[:2]
        loop.add_reader(sock.fileno(), self._readable)
        self._tasks.spawn(self._expire_loop(), name="expire")
        return self.address

    async def wait_closed(self) -> None:
        """Until :meth:`aclose` ran."""
        await self._closed.wait()

    async def aclose(self) -> None:
        """Stop reading, close every flow and its stream."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self.table.close()
        await self._tasks.aclose(CLOSE_TIMEOUT + 1)
        if self._sock is not None:
            self._sock.close()

    async def __aenter__(self) -> UdpForwardServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stats(self) -> dict[str, int]:
        """Counters for --json and metrics (flows now, datagrams, drops)."""
        out = self.table.counters.as_dict()
        out.update(
            flows=len(self.table),
            queued=self.table.queued,
            dropped_send=self.dropped_send,
            garbage=self.garbage,
        )
        return out

    # --- the local socket -----------------------------------------------------

    def _readable(self) -> None:
        sock, loop, table = self._sock, self._loop, self.table
        assert sock is not None and loop is not None
        now = loop.time()
        touched: set[int] = set()
        for _ in range(READ_BATCH):
            try:
                data, source = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error for an earlier answer: UDP goes on
                continue
            flow, new = table.to_stream(source, data, now)
            if flow is None:
                continue
            if new:
                self._start_flow(flow)
            elif flow.state is FlowState.OPEN:
                touched.add(flow.id)
        for fid in touched:
            wake = self._wakes.get(fid)
            if wake is not None:
                wake.set()

    def _send_to(self, source: Address) -> Callable[[bytes], None]:
        sock = self._sock
        assert sock is not None

        def send(datagram: bytes) -> None:
            try:
                sock.sendto(datagram, source)
            except (BlockingIOError, InterruptedError):
                self.dropped_send += 1
            except OSError:
                self.dropped_send += 1

        return send

    # --- flows ----------------------------------------------------------------

    def _start_flow(self, flow: Flow) -> None:
        self._wakes[flow.id] = asyncio.Event()
        self._flow_tasks[flow.id] = self._tasks.spawn(
            self._run_flow(flow), name=f"flow-{flow.id}", detached=True
        )
        self._timer_wake.set()

    async def _run_flow(self, flow: Flow) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                reader, writer = await asyncio.wait_for(self._open_stream(), self.open_timeout)
            except (FreightError, OSError, TimeoutError) as exc:
                why = str(exc) if isinstance(exc, FreightError) else f"{type(exc).__name__}: {exc}"
                log.warning(
                    "udp flow refused", extra={"fields": {"source": flow.source, "error": why}}
                )
                if flow.state is FlowState.OPENING:
                    flow.failed(loop.time(), why)
                return
            try:
                if flow.state is FlowState.OPENING:  # not expired or closed meanwhile
                    flow.opened()
                    await self._carry(flow, reader, writer)
            finally:
                await _close(writer)
        finally:
            self._wakes.pop(flow.id, None)
            self._flow_tasks.pop(flow.id, None)
            if flow.state is FlowState.CLOSED:
                self.table.remove(flow)
            self._timer_wake.set()

    async def _carry(self, flow: Flow, reader: ByteReader, writer: ByteWriter) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wakes[flow.id]
        wake.set()
        try:
            await _until_first(
                _pump_out(flow, wake, writer),
                _pump_in(flow, reader, self._send_to(flow.source), loop.time),
            )
        except MalformedDatagram as exc:
            self.garbage += 1
            log.warning(
                "udp flow closed: the far end sent garbage",
                extra={"fields": {"source": flow.source, "error": str(exc)}},
            )
        except (OSError, FreightError) as exc:
            if flow.state is FlowState.OPEN:
                flow.failed(loop.time(), str(exc))

    async def _expire_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.table.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), timeout)
            self._timer_wake.clear()
            for flow in self.table.expire(loop.time()):
                task = self._flow_tasks.get(flow.id)
                if task is not None:
                    task.cancel()


async def serve_udp_target(
    reader: ByteReader,
    writer: ByteWriter,
    host: str,
    port: int,
    *,
    limits: FlowLimits | None = None,
) -> Counters:
    """Carry one tunnel stream's datagrams to ``host:port`` over UDP and the
    answers back, until the stream ends or the flow is idle for
    ``limits.idle_timeout``. Returns the flow's counters; garbage on the
    stream raises :class:`MalformedDatagram` (the stream is closed first)."""
    loop = asyncio.get_running_loop()
    limits = limits if limits is not None else FlowLimits()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        await _close(writer)
        raise NetworkError(f"cannot resolve the UDP target {host}:{port}: {exc}") from exc
    family, _, _, _, target = infos[0]
    sock = udp_socket(host, port, family=family)
    flow = Flow.open_to(target, limits, loop.time())
    wake = asyncio.Event()
    unreachable = 0

    def readable() -> None:
        nonlocal unreachable
        now, queued = loop.time(), False
        for _ in range(READ_BATCH):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP port unreachable: nothing listens there (yet)
                unreachable += 1
                continue
            queued = flow.to_stream(data, now) or queued
        if queued:
            wake.set()

    def send(datagram: bytes) -> None:
        try:
            sock.send(datagram)
        except (BlockingIOError, InterruptedError):
            flow.counters.dropped_queue += 1
        except OSError:
            flow.counters.dropped_queue += 1

    async def idle() -> None:
        while flow.deadline() > loop.time():
            await asyncio.sleep(flow.deadline() - loop.time())
        if flow.state is FlowState.OPEN:
            flow.expire()

    try:
        sock.connect(target)
        loop.add_reader(sock.fileno(), readable)
        try:
            await _until_first(
                _pump_out(flow, wake, writer), _pump_in(flow, reader, send, loop.time), idle()
            )
        finally:
            loop.remove_reader(sock.fileno())
    finally:
        sock.close()
        await _close(writer)
    if unreachable:
        log.info(
            "udp target unreachable", extra={"fields": {"target": target, "times": unreachable}}
        )
    return flow.counters
