"""Slow and greedy clients on the shared port: sockets that send nothing,
stop inside the TLS handshake, trickle their headers or sit on a kept-alive
connection are closed by deadlines; one address cannot hold more than its
cap; the hub keeps serving a normal client meanwhile."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

from freight.protocol import messages as m
from tests.hostile import attach, insecure_ssl, ticket, token_of
from tests.support import Client, Hub, random_file

HOSTILE = "127.0.0.2"  # loopback, but another address than the normal client's
# Long enough that, on a busy machine, the ten hostile sockets are all still
# open when the three extra ones connect (with 1 s, two of the ten sometimes
# met their deadline first and the extras were let in).
DEADLINES = [
    "--first-byte-timeout",
    "2.5",
    "--tls-handshake-timeout",
    "2.5",
    "--header-timeout",
    "3",
    "--body-timeout",
    "3",
    "--keepalive-timeout",
    "3",
]


# How many sockets open_from has connected (a test resets it first).
CONNECTED = [0]


async def open_from(
    hub: Hub, source: str, *, tls: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    opened = await asyncio.open_connection(
        "127.0.0.1",
        hub.port,
        local_addr=(source, 0),
        ssl=insecure_ssl() if tls else None,
        server_hostname="localhost" if tls else None,
    )
    CONNECTED[0] += 1
    return opened


async def all_connected(count: int, timeout: float = 10.0) -> None:
    """Until ``count`` sockets are connected (polled: they are other tasks)."""
    deadline = time.monotonic() + timeout
    while CONNECTED[0] < count:
        assert time.monotonic() < deadline, f"only {CONNECTED[0]} of {count} sockets connected"
        await asyncio.sleep(0.005)


async def closed_after(reader: asyncio.StreamReader, started: float, limit: float) -> float | None:
    """Seconds from ``started`` until the hub closed the connection (None:
    still open after ``limit`` s)."""
    try:
        while await asyncio.wait_for(reader.read(65536), limit - (time.monotonic() - started)):
            pass
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError):
        pass
    return time.monotonic() - started


async def silent(hub: Hub, limit: float) -> float | None:
    reader, writer = await open_from(hub, HOSTILE, tls=False)
    try:
        return await closed_after(reader, time.monotonic(), limit)
    finally:
        writer.close()


async def half_handshake(hub: Hub, limit: float) -> float | None:
    reader, writer = await open_from(hub, HOSTILE, tls=False)
    writer.write(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never finishes
    try:
        return await closed_after(reader, time.monotonic(), limit)
    finally:
        writer.close()


async def trickled_headers(hub: Hub, limit: float) -> float | None:
    reader, writer = await open_from(hub, HOSTILE, tls=True)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /v1/health HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(trickle())
    try:
        return await closed_after(reader, started, limit)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()


async def trickled_body(hub: Hub, limit: float) -> float | None:
    reader, writer = await open_from(hub, HOSTILE, tls=True)
    writer.write(
        b"POST /v1/login HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    started = time.monotonic()
    try:
        return await closed_after(reader, started, limit)
    finally:
        writer.close()


async def idle_keepalive(hub: Hub, limit: float) -> float | None:
    reader, writer = await open_from(hub, HOSTILE, tls=True)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: hub\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 200 " in head.split(b"\r\n")[0]
    started = time.monotonic()  # idle from here on, the connection kept alive
    try:
        return await closed_after(reader, started, limit)
    finally:
        writer.close()


def test_slow_sockets_are_closed_and_others_are_served(tmp_path: Path, hubs: object) -> None:
    hub = hubs("--max-connections-per-address", "10", *DEADLINES)  # type: ignore[operator]
    client = Client(tmp_path / "client", hub)
    client.login()
    src = random_file(tmp_path / "during", 300_000)

    async def scenario() -> tuple[dict[str, list[float | None]], list[float | None]]:
        limit = 8.0
        kinds = {
            "silent": [silent(hub, limit) for _ in range(2)],
            "half_handshake": [half_handshake(hub, limit) for _ in range(2)],
            "trickled_headers": [trickled_headers(hub, limit) for _ in range(2)],
            "trickled_body": [trickled_body(hub, limit) for _ in range(2)],
            "idle_keepalive": [idle_keepalive(hub, limit) for _ in range(2)],
        }
        CONNECTED[0] = 0
        tasks = {k: [asyncio.create_task(c) for c in v] for k, v in kinds.items()}
        # All ten are in (long before their 2.5 s deadlines): the address is at
        # its cap, so three more are closed at once.
        await all_connected(10)
        extra = [asyncio.create_task(silent(hub, limit)) for _ in range(3)]
        # A control channel that stays open much longer than the deadlines:
        # a request once under way has none of them.
        session, ws, welcome = await attach(hub, token_of(client))
        assert isinstance(welcome, m.Welcome)
        # A normal client (another address) is served while they hang on.
        await asyncio.to_thread(client.run, "push", str(src), "--quiet")
        listing = await asyncio.to_thread(client.run, "ls", "--json")
        assert [f["name"] for f in json.loads(listing.stdout)] == ["during"]
        done = {k: [await t for t in v] for k, v in tasks.items()}
        await ticket(ws)  # still served, several seconds on
        await session.close()
        return done, [await t for t in extra]

    closed, refused = asyncio.run(scenario())
    # Over the cap: closed at once, not after a deadline.
    assert all(t is not None and t < 0.5 for t in refused), refused
    # Every phase has its deadline (2.5-3 s here); none is held for long.
    for kind, times in closed.items():
        assert all(t is not None and t < 7 for t in times), (kind, times)


def test_the_global_cap_closes_what_is_over_it(tmp_path: Path, hubs: object) -> None:
    hub = hubs("--max-connections", "6", "--first-byte-timeout", "2")  # type: ignore[operator]

    async def scenario() -> tuple[list[float | None], float | None, float | None]:
        held = [asyncio.create_task(silent(hub, 8)) for _ in range(6)]
        await asyncio.sleep(0.5)
        reader, writer = await open_from(hub, "127.0.0.3", tls=False)
        over = await closed_after(reader, time.monotonic(), 1.5)
        writer.close()
        first = [await t for t in held]  # the deadline frees their places...
        reader, writer = await open_from(hub, "127.0.0.3", tls=True)  # ...for others
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert b'"ok": true' in answer
        return first, over, None

    first, over, _ = asyncio.run(scenario())
    assert over is not None and over < 1.0
    assert all(t is not None and 1.5 < t < 5 for t in first), first
