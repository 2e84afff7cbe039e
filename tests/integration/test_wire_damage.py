"""Bytes damaged on the wire (a middlebox writing into a sealed data
connection) are a network fault like a cut: the connection is dropped and
the transfer resumes from its checkpoint, every byte still verified.
Through the load tester's fault gate, against a real hub on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import freight
from freight.loadtest.gate import Gate
from tests.support import Client, Hub, random_file, same_bytes, until

MiB = 1024 * 1024
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def gate(shared_hub: Hub) -> AsyncIterator[Gate]:
    g = Gate(("127.0.0.1", shared_hub.port))
    await g.start()
    yield g
    await g.aclose()


async def through(gate: Gate, tmp_path: Path, hub: Hub) -> freight.Client:
    """The SDK logged in through the gate (the CLI login runs in a thread:
    the gate's relaying runs on this test's event loop)."""
    cli = Client(tmp_path / "via-gate", hub)
    await asyncio.to_thread(cli.login, gate.url)
    return freight.Client(gate.url, config_dir=cli.config, data_path="auto")


def size_of(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


async def test_a_push_damaged_on_the_wire_resumes_and_verifies(
    tmp_path: Path, shared_hub: Hub, gate: Gate
) -> None:
    src = random_file(tmp_path / "damaged-up.bin", 24 * MiB, seed=7)
    async with await through(gate, tmp_path, shared_hub) as sdk:
        push = asyncio.create_task(sdk.push(src, options=sdk.options(limit="8M")))
        await until(lambda: shared_hub.partial_size() >= 9 * MiB, what="9 MiB at the hub")
        assert gate.garbage(4096) > 0
        (row,) = await asyncio.wait_for(push, 60)
        # Tried again, and resumed: fewer bytes crossed than the file holds.
        assert row.attempts >= 2 and row.wire_bytes <= 24 * MiB - 8 * MiB, row
        await sdk.pull("damaged-up.bin", tmp_path / "back.bin")
    assert same_bytes(src, tmp_path / "back.bin")


async def test_a_pull_damaged_on_the_wire_resumes_and_verifies(
    tmp_path: Path, shared_hub: Hub, shared_client: Client, gate: Gate
) -> None:
    src = random_file(tmp_path / "damaged-down.bin", 24 * MiB, seed=8)
    await asyncio.to_thread(shared_client.run, "push", str(src), "--quiet")
    down = tmp_path / "down"
    down.mkdir()
    async with await through(gate, tmp_path, shared_hub) as sdk:
        pull = asyncio.create_task(
            sdk.pull("damaged-down.bin", down / "f.bin", options=sdk.options(limit="8M"))
        )
        await until(lambda: size_of(down, "*") >= 9 * MiB, what="9 MiB at the client")
        assert gate.garbage(4096, towards_client=True) > 0
        got = await asyncio.wait_for(pull, 60)
        (row,) = got.files
        assert row.attempts >= 2 and row.wire_bytes <= 24 * MiB - 8 * MiB, row
    assert same_bytes(src, down / "f.bin")
