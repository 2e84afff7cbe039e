"""The load tester's fault gate between real sockets on loopback: it carries
bytes both ways, and each fault does to the connections what it says."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest

from freight.loadtest.gate import Gate
from tests.support import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[int, list[bytes]]]:
    """An echo server; the list gets every chunk it received."""
    seen: list[bytes] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                seen.append(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()


async def through(gate: Gate) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gate.port)


async def started(port: int, *, bad_tls: bool = False, slow_rate: int | None = None) -> Gate:
    gate = Gate(("127.0.0.1", port), bad_tls=bad_tls, slow_rate=slow_rate)
    await gate.start()
    return gate


async def test_bytes_go_through_both_ways(echo: tuple[int, list[bytes]]) -> None:
    gate = await started(echo[0])
    r, w = await through(gate)
    w.write(b"x" * 200_000)
    assert await asyncio.wait_for(r.readexactly(200_000), 5) == b"x" * 200_000
    assert len(gate.pipes) == 1 and gate.accepted == 1
    w.close()
    await gate.aclose()


async def test_drop_resets_every_connection(echo: tuple[int, list[bytes]]) -> None:
    gate = await started(echo[0])
    conns = [await through(gate) for _ in range(3)]
    for _, w in conns:
        w.write(b"hi")
    for r, _ in conns:
        await asyncio.wait_for(r.readexactly(2), 5)
    assert gate.drop() == 3
    for r, _ in conns:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(1), 5)
    assert not gate.pipes
    await gate.aclose()


async def test_half_open_carries_nothing_and_closes_nothing(
    echo: tuple[int, list[bytes]],
) -> None:
    gate = await started(echo[0])
    r, w = await through(gate)
    w.write(b"a")
    await asyncio.wait_for(r.readexactly(1), 5)
    assert gate.half_open() == 1
    w.write(b"lost in the middle")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r.read(1), 0.5)
    assert not w.is_closing() and len(gate.pipes) == 1
    await gate.aclose()


async def test_stall_holds_the_bytes_then_lets_them_through(
    echo: tuple[int, list[bytes]],
) -> None:
    gate = await started(echo[0])
    r, w = await through(gate)
    w.write(b"a")
    await asyncio.wait_for(r.readexactly(1), 5)
    gate.stall(0.6)
    start = time.monotonic()
    w.write(b"later")
    assert await asyncio.wait_for(r.readexactly(5), 5) == b"later"
    assert time.monotonic() - start >= 0.5
    await gate.aclose()


async def test_garbage_goes_towards_the_hub(echo: tuple[int, list[bytes]]) -> None:
    port, seen = echo
    gate = await started(port)
    r, w = await through(gate)
    w.write(b"ok")
    await asyncio.wait_for(r.readexactly(2), 5)
    assert gate.garbage(100) == 1
    await until(lambda: sum(map(len, seen)) >= 102)
    await gate.aclose()


async def test_bad_tls_corrupts_the_first_bytes_only(echo: tuple[int, list[bytes]]) -> None:
    gate = await started(echo[0], bad_tls=True)
    r, w = await through(gate)
    hello = b"\x16\x03\x01" + bytes(range(30))
    w.write(hello)
    got = await asyncio.wait_for(r.readexactly(len(hello)), 5)
    assert got != hello and got[16:] == hello[16:]
    w.write(b"after")
    assert await asyncio.wait_for(r.readexactly(5), 5) == b"after"
    await gate.aclose()


async def test_slow_reader_keeps_to_its_rate(echo: tuple[int, list[bytes]]) -> None:
    gate = await started(echo[0], slow_rate=100_000)
    r, w = await through(gate)
    start = time.monotonic()
    w.write(b"z" * 50_000)
    await asyncio.wait_for(r.readexactly(50_000), 10)
    assert time.monotonic() - start >= 0.4  # 50 kB at 100 kB/s
    await gate.aclose()


async def test_a_gate_with_no_hub_behind_it_refuses(echo: tuple[int, list[bytes]]) -> None:
    gate = await started(1)  # nothing listens on port 1
    r, _ = await through(gate)
    assert await asyncio.wait_for(r.read(1), 15) == b""
    assert gate.refused == 1 and not gate.pipes
    await gate.aclose()


async def test_a_reset_from_the_hub_ends_the_clients_connection_too() -> None:
    # A server that closes with bytes unread sends a reset, not a FIN (the
    # hub does this to a connection that spoke garbage). The gate must end
    # the client's side as well, not leave it waiting for bytes forever.
    async def reset_after_reading(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    server = await asyncio.start_server(reset_after_reading, "127.0.0.1", 0)
    gate = await started(server.sockets[0].getsockname()[1])
    r, w = await through(gate)
    w.write(b"garbage" * 100)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(65536), 5)
    await until(lambda: not gate.pipes)
    w.close()
    await gate.aclose()
    server.close()


async def test_a_direct_gate_sends_its_clients_to_the_hub_itself(
    echo: tuple[int, list[bytes]],
) -> None:
    gate = Gate(("127.0.0.1", echo[0]), relay=False)
    assert await gate.start() == echo[0]
    assert gate.url == f"https://127.0.0.1:{echo[0]}/"
    r, w = await through(gate)
    w.write(b"straight")
    assert await asyncio.wait_for(r.readexactly(8), 5) == b"straight"
    assert gate.accepted == 0 and not gate.pipes  # nothing passed through the tester
    w.close()
    await gate.aclose()


def test_a_write_towards_a_side_already_closed_ends_the_pipe_quietly() -> None:
    """The hub was killed: its side of a pipe is closed (the reset was read)
    before the pipe's end has run, and the client's next bytes arrive. The
    carrying ends the pipe and does not fail. Under uvloop, the loop the CLI
    runs, a write to a closed transport raises RuntimeError, not OSError."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[bool, int]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        gate = await started(server.sockets[0].getsockname()[1])
        _, w = await through(gate)
        await until(lambda: len(gate.pipes) == 1, 5, "the pipe")
        (pipe,) = gate.pipes
        pipe.hub.transport.abort()  # as connection_lost does on a reset
        await asyncio.sleep(0.05)  # uvloop closes the handle on a later turn
        client = asyncio.StreamReader()
        client.feed_data(b"after the hub went away")
        client.feed_eof()
        await gate._carry(pipe, client, pipe.hub)
        await until(lambda: not gate.pipes, 5, "the pipe's end")
        w.close()
        await gate.aclose()
        server.close()
        return pipe not in gate.pipes, gate.tasks.detached_failures

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == (True, 0)
