"""The relay's limits against hostile or broken clients: a client that
reads nothing (the hub's queue towards it), accounts that open too many
connections or codes. Real hub processes, real SDK clients on loopback; the
hub's memory is read from its own figure (``freight_relay_queued_bytes`` on
/metrics), not from RSS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from freight.client.relay import Connection, RelayClient
from freight.errors import LimitReached
from freight.hub.relay import MAX_LISTENS
from freight.protocol import messages as m
from freight.protocol.switch import IN_FLIGHT
from tests.relaysupport import FAST_RELAY, accounts, sdk
from tests.support import Client, Hub

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def relay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)


async def queued_at_hub(rc: RelayClient) -> int:
    """What the hub says it holds for attached clients, in bytes."""
    async with rc.session.http.get(str(rc.session.url.with_path("/metrics"))) as resp:
        text = await resp.text()
    found = re.search(r"^freight_relay_queued_bytes (\S+)$", text, re.M)
    assert found, "the hub does not report its relay queue"
    return int(float(found.group(1)))


def stop_reading(rc: RelayClient) -> asyncio.Event:
    """From now on ``rc`` takes nothing more from the network (its channel
    and lane readers hang on the next frame), until the event is set."""
    release = asyncio.Event()
    dispatch = rc._dispatch

    async def stuck(msg: m.AnyMessage, payload: bytes) -> None:
        await release.wait()
        await dispatch(msg, payload)

    rc._dispatch = stuck  # type: ignore[method-assign]
    return release


async def connections(
    dialer: RelayClient, acceptor: RelayClient, app: str, count: int
) -> list[Connection]:
    """``count`` connections from ``dialer`` to bob (one per application:
    the hub allows one per dialer, target and application)."""
    out = []
    for i in range(count):
        listener = await acceptor.listen(f"{app}-{i}")
        dial = asyncio.create_task(dialer.connect("bob", f"{app}-{i}", timeout=20))
        await (await asyncio.wait_for(listener.accept(), 20)).wait_established(20)
        out.append(await dial)
    return out


async def peak_until_still(rc: RelayClient, quiet: float = 1.5, limit: float = 30) -> int:
    """Sample the hub's queue until it has not grown for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    peak, grew_at, deadline = 0, loop.time(), loop.time() + limit
    while loop.time() - grew_at < quiet:
        assert loop.time() < deadline, f"the hub's queue kept growing: {peak / MiB:.0f} MiB"
        now = await queued_at_hub(rc)
        if now > peak:
            peak, grew_at = now, loop.time()
        await asyncio.sleep(0.05)  # a sampling interval, not a wait for an event
    return peak


async def test_a_client_that_reads_nothing_pauses_its_senders_at_the_queue_bound(
    tmp_path: Path, hubs: Callable[..., Hub]
) -> None:
    """32 connections into a client that stops reading: each stays within
    the 4 MiB the hub holds per connection, but together they would pile up
    more than 128 MiB at the hub. With --relay-queue 8M the hub pauses every
    sender towards that client once 8 MiB wait for it: the queue stops
    growing at 8 MiB plus what the senders had on the way, and the client is
    not dropped (its senders keep to Pause)."""
    hub = hubs("--relay-queue", "8M")
    admin, bob = accounts(tmp_path, hub)
    async with sdk(admin) as a, sdk(bob) as b:
        outs = await connections(a, b, "sink", 32)
        release = stop_reading(b)
        block = bytes(256 * 1024)

        async def push(conn: Connection) -> None:
            with contextlib.suppress(Exception):
                while True:
                    await conn.send(block)

        pushers = [asyncio.create_task(push(c)) for c in outs]
        try:
            peak = await peak_until_still(a)
            print(f"hub queue towards a client reading nothing: peak {peak / MiB:.1f} MiB")
            assert peak <= 8 * MiB + IN_FLIGHT
        finally:
            for p in pushers:
                p.cancel()
            await asyncio.gather(*pushers, return_exceptions=True)
        release.set()  # it reads again: what waited for it leaves the hub
        await asyncio.wait_for(_drained(a), 30)
        assert b.reconnects == 0
    assert events(admin, "relay_slow_client") == []


def deaf_to_pause(rc: RelayClient) -> None:
    """``rc`` ignores the hub's Pause frames and the end-to-end window."""
    dispatch = rc._dispatch

    async def deaf(msg: m.AnyMessage, payload: bytes) -> None:
        if not isinstance(msg, m.Pause):
            await dispatch(msg, payload)

    rc._dispatch = deaf  # type: ignore[method-assign]


async def test_senders_ignoring_pause_get_a_slow_client_dropped_not_the_hub_swamped(
    tmp_path: Path, hubs: Callable[..., Hub]
) -> None:
    """Ten connections that ignore Pause and the window, into a client that
    reads nothing: each is cut off at 16 MiB (flow_violation), but together
    they would still pile up 160 MiB. The hub drops the client once its
    queue passes the bound, frees that memory at once and records why."""
    hub = hubs("--relay-queue", "8M")
    admin, bob = accounts(tmp_path, hub)
    async with sdk(admin) as a, sdk(bob) as b:
        outs = await connections(a, b, "flood", 10)
        deaf_to_pause(a)
        for conn in outs:
            assert conn.session is not None
            conn.session.can_send = lambda size: True  # type: ignore[method-assign]
        release = stop_reading(b)
        block = bytes(MiB)

        async def flood(conn: Connection) -> None:
            with contextlib.suppress(Exception):
                for _ in range(32):
                    await conn.send(block)

        floods = [asyncio.create_task(flood(c)) for c in outs]
        try:
            peak = await peak_until_still(a)
        finally:
            for f in floods:
                f.cancel()
            await asyncio.gather(*floods, return_exceptions=True)
            release.set()
        print(f"senders ignoring Pause: hub queue peak {peak / MiB:.1f} MiB")
        assert peak <= 8 * MiB + IN_FLIGHT + 2 * MiB
        await asyncio.wait_for(_drained(a), 10)
    # (Again, maybe, after bob came back: the flood's records are sent again
    # on relink, and these senders still ignore Pause.)
    dropped = events(admin, "relay_slow_client")
    assert dropped and {e["actor"] for e in dropped} == {"bob"}, dropped


async def _drained(rc: RelayClient) -> None:
    while await queued_at_hub(rc) > MiB:
        await asyncio.sleep(0.05)


def events(admin: Client, kind: str) -> list[dict[str, Any]]:
    return list(json.loads(admin.run("admin", "events", "--kind", kind, "--json").stdout))


async def test_accounts_are_capped_in_connections_codes_and_listens(
    tmp_path: Path, hubs: Callable[..., Hub]
) -> None:
    hub = hubs("--max-relay-connections", "3", "--max-codes", "2")
    admin, bob = accounts(tmp_path, hub)
    async with sdk(admin) as a, sdk(bob) as b:
        outs = await connections(a, b, "busy", 3)
        listener = await b.listen("busy-3")
        with pytest.raises(LimitReached, match="3 relayed connections open"):
            await a.connect("bob", "busy-3", timeout=10)
        await outs[0].close(5)  # one fewer: a new one fits
        dial = asyncio.create_task(a.connect("bob", "busy-3", timeout=20))
        await (await asyncio.wait_for(listener.accept(), 20)).wait_established(20)
        await dial

        # The cap is per account: bob's own dials are not counted with admin's.
        await a.listen("back")
        back = asyncio.create_task(b.connect("admin", "back", timeout=20))
        await asyncio.wait_for(back, 20)

        for i in range(2):
            await a.offer(f"tulip-walrus-{i}")
        with pytest.raises(LimitReached, match="2 codes open"):
            await a.offer("tulip-walrus-zebra")

        for i in range(MAX_LISTENS - len(b.listeners)):
            await b.listen(f"app-{i}")
        with pytest.raises(LimitReached, match="listen for 64 applications"):
            await b.listen("one-too-many")

    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    refused = admin.run("send", str(src), check=False, timeout=30)
    assert refused.returncode == 7, refused
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("freight: error: you already have 2 codes open"), line


def test_a_finished_code_no_longer_counts_against_the_open_codes(
    tmp_path: Path, hubs: Callable[..., Hub], spawn: Callable[..., Any]
) -> None:
    # One code per account: the second send only fits if the first code,
    # whose transfer finished, stopped counting.
    hub = hubs("--max-codes", "1")
    admin, bob = accounts(tmp_path, hub)
    codes = []
    for i in range(2):
        src = tmp_path / f"f{i}.bin"
        src.write_bytes(bytes([i]) * 1000)
        s = spawn(admin, "send", str(src), "--json")
        assert s.stdout is not None and s.stderr is not None
        line = s.stdout.readline()
        assert line, f"send {i} exited {s.wait(10)}: {s.stderr.read()}"
        code = str(json.loads(line)["code"])
        got = bob.run("receive", code, "-o", str(tmp_path / f"in{i}"), timeout=60)
        assert got.returncode == 0, got
        assert s.wait(30) == 0, s.stderr.read() if s.stderr else ""
        assert (tmp_path / f"in{i}" / src.name).read_bytes() == src.read_bytes()
        codes.append(code)
    assert codes[0] != codes[1]
