"""What a receiver writes, and where: ``freight receive`` and ``freight cp``
never follow a symbolic link they find (or that is swapped in) in the
destination, never keep setuid/setgid bits, never replace a file that is
not the transfer's own without consent, and exit with the error when the
disk fails mid-write. Real hub, real CLI processes, real agent, loopback."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import struct
import subprocess
import time
from pathlib import Path

import pytest

from freight.client.config import ClientConfig
from freight.client.relay import RelayClient
from freight.client.session import HubSession
from tests.relaysupport import Proc, fast
from tests.support import PYTHON, Client, Hub, random_file

MiB = 1024 * 1024
BOB_PASSWORD = "bob-receiving-secret"


@pytest.fixture(scope="module")
def admin(shared_client: Client) -> Client:
    return fast(shared_client)


@pytest.fixture(scope="module")
def bob(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
    c = Client(tmp_path_factory.mktemp("client-bob"), shared_hub)
    c.login(user="bob", password=BOB_PASSWORD)
    return fast(c)


def start_send(client: Client, *args: str) -> tuple[Proc, str]:
    sender = Proc(client, "send", *args, "--json")
    try:
        first = sender.first_event()
        assert first["event"] == "code", first
    except BaseException:
        sender.kill()
        raise
    return sender, str(first["code"])


# --- the disk fails mid-write -----------------------------------------------------


def _file_size_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_that_fails_mid_file_ends_receive_with_the_error(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    """The receiver may write at most 5 MiB per file (RLIMIT_FSIZE): the
    write of a 64 MiB file fails with EFBIG part way; ``freight receive``
    exits with a storage error instead of hanging."""
    src = random_file(tmp_path / "big.bin", 64 * MiB, seed=5)
    dest = tmp_path / "in"
    sender, code = start_send(admin, str(src))
    with sender:
        started = time.monotonic()
        res = subprocess.run(
            [PYTHON, "-m", "freight", "receive", code, "-o", str(dest)],
            env=bob.env,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lambda: _file_size_limit(5 * MiB),
        )
        took = time.monotonic() - started
    assert res.returncode == 8, (res.returncode, res.stderr)
    assert "File too large" in res.stderr, res.stderr
    assert took < 30, took
    assert not (dest / "big.bin").exists()


def test_a_hostile_message_while_the_disk_is_busy_ends_receive(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    """A sender (the SDK, scripted) sends many 1 MiB chunks, so the
    receiver's disk writer has a queue of them, then a message of an
    unknown kind: the receiver refuses it at once, while a chunk is being
    written, and must exit with that error (it hung: the writer swallowed
    its cancellation and waited for more work forever)."""
    dest = tmp_path / "in"

    async def scripted_sender() -> tuple[int, str]:
        config = ClientConfig(admin.config)
        async with RelayClient(HubSession.from_config(config), config) as rc:
            await rc.start(identity=False)
            offer = await rc.offer("tango-lima-echo")
            receiver = subprocess.Popen(
                [PYTHON, "-m", "freight", "receive", offer.code, "-o", str(dest)],
                env=bob.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                conn = await asyncio.wait_for(offer.accept(), 30)
                size = 64 * MiB
                entry = {
                    "path": "big.bin",
                    "type": "file",
                    "mode": 0o644,
                    "size": size,
                    "mtime": 1.6e9,
                }
                await conn.send(b"M" + json.dumps({"entries": [entry]}).encode())
                assert (await asyncio.wait_for(conn.recv(), 30))[:1] == b"W"
                block = os.urandom(1024 * 1024 - 64)
                for i in range(24):
                    await conn.send(b"F" + struct.pack(">IQ", 0, i * len(block)) + block)
                await conn.send(b"X not a message kind")
                _, err = await asyncio.to_thread(receiver.communicate, timeout=30)
                return receiver.returncode, err
            finally:
                if receiver.poll() is None:
                    receiver.kill()
                    receiver.wait(10)

    try:
        code, err = asyncio.run(scripted_sender())
    except subprocess.TimeoutExpired:
        raise AssertionError("freight receive hung after refusing the sender's message") from None
    assert code == 7, (code, err)
    assert "unexpected message" in err, err
