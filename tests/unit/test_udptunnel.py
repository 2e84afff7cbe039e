"""The UDP tunnel's asyncio side on loopback sockets: a real UDP echo server
behind serve_udp_target, streams carried by loopback TCP in place of the
hub's tunnel streams, and hostile far ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest

from freight.client.udptunnel import MessageStream, UdpForwardServer, serve_udp_target
from freight.errors import UsageError
from freight.protocol.datagrams import (
    Counters,
    DatagramTooLarge,
    FlowLimits,
    MalformedDatagram,
    encode,
)
from freight.tasks import Supervisor
from tests.udpsupport import DEADLINE, LoopbackTunnel, UdpClient, udp_echo, wait_until

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def forward_to_echo(
    limits: FlowLimits | None = None, far: FlowLimits | None = None
) -> AsyncIterator[tuple[UdpForwardServer, LoopbackTunnel]]:
    """A forward whose streams reach a UDP echo server (through loopback TCP)."""
    async with (
        udp_echo() as (port, _),
        LoopbackTunnel(port, limits=far) as tunnel,
        UdpForwardServer(tunnel.open_stream, limits=limits) as fwd,
    ):
        yield fwd, tunnel


async def test_datagrams_come_back_identical_through_the_forward() -> None:
    async with forward_to_echo() as (fwd, tunnel):
        client = UdpClient(fwd.port)
        try:
            sizes = [0, 1, 100, 1200, 8192, 65507]
            for size in sizes:
                payload = os.urandom(size)
                assert await client.ask(payload) == payload
            burst = [os.urandom(1000) for _ in range(200)]
            for payload in burst:
                client.send(payload)
            got = [await client.recv() for _ in burst]
            assert got == burst  # one flow, one stream: order kept on loopback
        finally:
            client.close()
        stats = fwd.stats()
        assert stats["flows"] == 1 and stats["flows_opened"] == 1
        assert stats["datagrams_out"] == stats["datagrams_in"] == len(sizes) + len(burst)
        assert tunnel.opened == 1


async def test_each_source_is_its_own_flow_and_gets_only_its_answers() -> None:
    async with forward_to_echo() as (fwd, tunnel):
        clients = [UdpClient(fwd.port) for _ in range(5)]
        try:
            for i, c in enumerate(clients):
                c.send(f"from {i}".encode())
            for i, c in enumerate(clients):
                assert await c.recv() == f"from {i}".encode()
        finally:
            for c in clients:
                c.close()
        assert len(fwd.table) == 5 and tunnel.opened == 5


async def test_idle_flows_expire_at_both_ends() -> None:
    limits = FlowLimits(idle_timeout=0.3)
    async with forward_to_echo(limits, limits) as (fwd, tunnel):
        client = UdpClient(fwd.port)
        try:
            assert await client.ask(b"ping") == b"ping"
            await wait_until(lambda: len(fwd.table) == 0 and len(tunnel.results) == 1)
            assert fwd.stats()["flows_expired"] == 1
            assert isinstance(tunnel.results[0], Counters)
            assert await client.ask(b"again") == b"again"  # a new flow, a new stream
            assert tunnel.opened == 2
        finally:
            client.close()


async def test_a_far_end_sending_garbage_fails_only_that_flow() -> None:
    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with udp_echo() as (port, _), LoopbackTunnel(port, far_end=hostile) as tunnel:
        limits = FlowLimits(failed_hold=0.5)
        async with UdpForwardServer(tunnel.open_stream, limits=limits) as fwd:
            client = UdpClient(fwd.port)
            try:
                client.send(b"hello")
                await wait_until(lambda: fwd.garbage == 1)
                assert fwd.stats()["flows_failed"] == 1
                client.send(b"held")  # dropped while the source is held
                await wait_until(lambda: fwd.stats()["dropped_closed"] == 1)
                await wait_until(lambda: len(fwd.table) == 0)  # the hold ends
                assert tunnel.opened == 1
            finally:
                client.close()


async def test_a_record_claiming_more_than_a_datagram_is_refused() -> None:
    async def oversized(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\xff\xff" + b"x" * 100)
        await writer.drain()
        await reader.read()

    async with LoopbackTunnel(9, far_end=oversized) as tunnel:
        limits = FlowLimits(max_datagram=1500, flow_queue=4096, table_queue=8192)
        async with UdpForwardServer(tunnel.open_stream, limits=limits) as fwd:
            client = UdpClient(fwd.port)
            try:
                client.send(b"x")
                await wait_until(lambda: fwd.garbage == 1)
                assert await client.nothing_within(0.1)
            finally:
                client.close()


async def test_a_stream_that_cannot_open_holds_the_source_briefly() -> None:
    opens = 0

    async def refused() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal opens
        opens += 1
        raise ConnectionRefusedError(111, "Connection refused")

    limits = FlowLimits(failed_hold=0.3)
    async with UdpForwardServer(refused, limits=limits) as fwd:
        client = UdpClient(fwd.port)
        try:
            for _ in range(50):
                client.send(b"knock")
            await wait_until(lambda: fwd.stats()["flows_failed"] == 1)
            client.send(b"knock")
            await wait_until(lambda: fwd.stats()["dropped_closed"] == 1)
            assert opens == 1  # fifty-one datagrams, one attempt
            await wait_until(lambda: len(fwd.table) == 0)
            client.send(b"knock")
            await wait_until(lambda: opens == 2)
        finally:
            client.close()


async def test_a_flood_of_sources_is_refused_beyond_the_bounds() -> None:
    limits = FlowLimits(max_flows=20, max_opening=4)
    async with forward_to_echo(limits) as (fwd, tunnel):
        steady = UdpClient(fwd.port)
        assert await steady.ask(b"before") == b"before"
        flood = []
        try:
            for _ in range(200):
                c = UdpClient(fwd.port)
                flood.append(c)
                c.send(b"flood")
            await wait_until(lambda: fwd.stats()["flows_refused"] > 0)
            assert len(fwd.table) <= 20 and tunnel.opened <= 20
            assert await steady.ask(b"after") == b"after"  # the old flow still works
        finally:
            for c in [steady, *flood]:
                c.close()


async def test_the_far_side_refuses_garbage_from_the_stream() -> None:
    async with udp_echo() as (port, echo):
        server_done: asyncio.Future[BaseException | Counters] = asyncio.Future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                server_done.set_result(await serve_udp_target(reader, writer, "127.0.0.1", port))
            except MalformedDatagram as exc:
                server_done.set_result(exc)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1]
            )
            writer.write(encode(b"fine"))
            assert await asyncio.wait_for(reader.readexactly(7), DEADLINE) == encode(b"fine")
            writer.write(b"\x00\xff\xf0")  # 65,520 > 65,507
            await writer.drain()
            result = await asyncio.wait_for(server_done, DEADLINE)
            assert isinstance(result, DatagramTooLarge)
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # closed
            assert echo.received == 1
            writer.close()
        finally:
            server.close()


async def test_a_target_with_nothing_listening_drops_quietly() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    limits = FlowLimits(idle_timeout=0.3)
    async with (
        LoopbackTunnel(dead_port, limits=limits) as tunnel,
        UdpForwardServer(tunnel.open_stream, limits=limits) as fwd,
    ):
        client = UdpClient(fwd.port)
        try:
            for _ in range(3):
                client.send(b"anyone?")
            assert await client.nothing_within(0.1)
            await wait_until(lambda: len(tunnel.results) == 1 and len(fwd.table) == 0)
            assert isinstance(tunnel.results[0], Counters)
        finally:
            client.close()


async def test_a_port_in_use_is_a_usage_error() -> None:
    async with udp_echo() as (port, _):
        fwd = UdpForwardServer(LoopbackTunnel(port).open_stream, port=port)
        with pytest.raises(UsageError, match="cannot bind UDP"):
            await fwd.start()


class MemoryChannel:
    """One end of an in-memory message connection (bounded, like the relay's
    credit window): what the relay's Connection offers MessageStream."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self.peer: MemoryChannel | None = None
        self.sizes: list[int] = []
        self.closed = False

    async def send(self, data: bytes) -> None:
        assert self.peer is not None and not self.closed and data
        self.sizes.append(len(data))
        await self.peer.inbox.put(data)

    async def recv(self) -> bytes:
        return await self.inbox.get()

    async def close(self, timeout: float = 1.0) -> None:
        if not self.closed:
            self.closed = True
            assert self.peer is not None
            await asyncio.wait_for(self.peer.inbox.put(b""), timeout)


async def test_a_message_connection_carries_the_flow() -> None:
    ends: list[MemoryChannel] = []
    async with udp_echo() as (port, _), Supervisor("far") as far:

        async def open_stream() -> tuple[MessageStream, MessageStream]:
            near, other = MemoryChannel(), MemoryChannel()
            near.peer, other.peer = other, near
            ends.append(near)
            stream = MessageStream(other)
            far.spawn(serve_udp_target(stream, stream, "127.0.0.1", port), name="serve")
            mine = MessageStream(near)
            return mine, mine

        async with UdpForwardServer(open_stream) as fwd:
            client = UdpClient(fwd.port)
            try:
                big = os.urandom(65507)
                for _ in range(8):
                    client.send(big)
                for _ in range(8):
                    assert await client.recv() == big
            finally:
                client.close()
        assert ends[0].closed  # the forward ended its flow's connection
        assert max(ends[0].sizes) <= 256 * 1024
