"""The direct manner across a real network path: the receiver runs in a
network namespace of its own (made here, joined to this one by a veth pair)
and the sender dials it from outside. Reachable, it carries the bytes;
behind a firewall that rejects it fails at once, and behind one that drops
(a black hole) it gives up within its one-second timeout, so a job falls
back to the next manner quickly.

Needs root (``ip netns``) and nft (Debian: ``apt-get install nftables``);
skipped with the reason otherwise. Namespaces are always deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from freight.transport.dataconn import DataPathUnavailable
from freight.transport.directjob import dial_direct, parse_address
from tests.netns import veth_namespace

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(30)


@dataclass
class Netns:
    name: str
    outside: str  # our end of the veth pair
    inside: str  # the namespace's end

    def run(self, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *args], check=True, timeout=10)

    def firewall(self, port: int, verdict: str) -> None:
        """Incoming TCP to ``port`` gets ``verdict`` (e.g. ``drop``)."""
        script = (
            "flush ruleset\n"
            "table inet direct {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    tcp dport {port} {verdict}\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=script.encode(),
            check=True,
            timeout=10,
        )


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if shutil.which("nft") is None:
        pytest.skip("the firewall cases need nft (Debian: apt-get install nftables)")
    with veth_namespace("fdirect", 231) as (name, outside, inside):
        yield Netns(name, outside, inside)


@asynccontextmanager
async def receiver(ns: Netns, *args: str) -> AsyncIterator[tuple[dict[str, object], Peer]]:
    """tests/directpeer.py inside the namespace; its completion and itself."""
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns.name,
        sys.executable,
        "-m",
        "tests.directpeer",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    peer = Peer(proc)
    try:
        line = await asyncio.wait_for(peer.line(), 10)
        yield json.loads(line), peer
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


@dataclass
class Peer:
    proc: asyncio.subprocess.Process

    async def line(self) -> bytes:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        assert line, "the receiving process ended without a word"
        return line

    async def result(self) -> dict[str, object]:
        return dict(json.loads(await asyncio.wait_for(self.line(), 10)))


async def test_direct_reaches_a_receiver_in_another_namespace(netns: Netns) -> None:
    async with receiver(netns, "--accept-timeout", "5") as (completion, peer):
        addrs = completion["addrs"]
        assert isinstance(addrs, list)
        port = parse_address(addrs[0])[1]
        # Its interface addresses first, loopback last.
        assert addrs[0] == f"{netns.inside}:{port}"
        assert addrs[-1] in (f"127.0.0.1:{port}", f"[::1]:{port}")
        data = os.urandom(8 * MiB)
        conn = await dial_direct(completion, timeout=1.0)
        assert conn.peer == f"{netns.inside}:{port}"
        for i in range(0, len(data), MiB):
            await conn.send(data[i : i + MiB])
        await conn.shutdown()
        echoed = await asyncio.wait_for(conn.recv(), 10)
        assert await conn.recv() == b""
        await conn.aclose()
        result = await peer.result()
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert echoed == hashlib.sha256(data).hexdigest().encode()
    assert result["peer"] == f"{netns.outside}:{parse_address(str(result['peer']))[1]}"


async def dial_behind(netns: Netns, verdict: str) -> tuple[float, str, int]:
    """Dial a receiver whose port the namespace's firewall gives
    ``verdict``: the seconds until dial_direct gave up, its message, the port."""
    async with receiver(netns, "--accept-timeout", "5") as (completion, _):
        addrs = completion["addrs"]
        assert isinstance(addrs, list)
        port = parse_address(addrs[0])[1]
        netns.firewall(port, verdict)
        try:
            started = time.monotonic()
            with pytest.raises(DataPathUnavailable) as caught:
                await dial_direct(completion, timeout=1.0)
            elapsed = time.monotonic() - started
        finally:
            netns.firewall(port, "accept")
    return elapsed, caught.value.message, port


async def test_rejected_direct_fails_at_once(netns: Netns) -> None:
    elapsed, message, port = await dial_behind(netns, "reject with tcp reset")
    assert elapsed < 0.5
    assert f"{netns.inside}:{port}: Connection refused" in message


async def test_black_holed_direct_gives_up_within_its_timeout(netns: Netns) -> None:
    elapsed, message, port = await dial_behind(netns, "drop")
    assert elapsed < 1.5
    assert f"{netns.inside}:{port}" in message
    assert "no answer within 1 s" in message


async def test_pinned_address_is_the_only_one_tried(netns: Netns) -> None:
    async with receiver(netns, "--bind", f"{netns.inside}:0", "--accept-timeout", "5") as (
        completion,
        peer,
    ):
        addrs = completion["addrs"]
        assert isinstance(addrs, list) and len(addrs) == 1
        assert addrs[0].startswith(f"{netns.inside}:")
        async with await dial_direct(completion) as conn:
            await conn.send(b"pinned")
            await conn.shutdown()
            assert (
                await asyncio.wait_for(conn.recv(), 10)
                == hashlib.sha256(b"pinned").hexdigest().encode()
            )
        result = await peer.result()
    assert result["bytes"] == len(b"pinned")
