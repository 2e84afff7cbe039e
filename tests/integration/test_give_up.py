"""When push and pull give up (protocol.md section 9): a stream that never
reached the hub retries only through the steady phase, then says what to
check; a stream the hub has answered keeps the whole policy. Real hub and CLI
processes; the phases are shortened through FREIGHT_RETRY_*."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.relaysupport import Proc
from tests.support import Client, Hub, random_file, same_bytes, wait_until

MiB = 1024 * 1024
STEADY = 1.5  # seconds of steady retries
GIVE_UP = 600.0  # the whole policy: far longer than any of these tests


def quick(client: Client) -> Client:
    client.env.update(
        {
            "FREIGHT_RETRY_INTERVAL": "0.2",
            "FREIGHT_RETRY_STEADY": str(STEADY),
            "FREIGHT_RETRY_GIVE_UP": str(GIVE_UP),
        }
    )
    return client


@pytest.mark.parametrize("command", ["push", "pull"])
def test_a_stream_that_never_reaches_the_hub_gives_up_after_the_steady_phase(
    tmp_path: Path, shared_hub: Hub, command: str
) -> None:
    # The client knows the hub by a proxy's address; once the proxy is
    # closed, that address refuses connections as a stopped hub's does.
    client = Client(tmp_path / "client", shared_hub)
    src = random_file(tmp_path / f"{command}.bin", 100_000)
    with FaultProxy(shared_hub.port) as proxy:
        client.login(proxy.url)
        client.run("push", str(src), "--quiet")
    quick(client)  # unreachable from the first attempt on
    args = [str(src)] if command == "push" else [src.name, str(tmp_path / "back.bin")]
    started = time.monotonic()
    try:
        res = client.run(command, *args, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{command} still retrying after 60 s (steady phase: {STEADY} s)"
        ) from None
    took = time.monotonic() - started
    assert res.returncode == 6, res.stderr
    assert took >= STEADY, took
    assert took < 30, took
    error = [line for line in res.stderr.splitlines() if line.startswith("freight: error:")]
    assert len(error) == 1, res.stderr
    assert "cannot reach the hub" in error[0]
    assert "then run the same command again" in error[0]
    assert "retrying in" in res.stderr and "giving up in" in res.stderr


def test_a_push_the_hub_has_answered_keeps_retrying_past_the_steady_phase(
    tmp_path: Path, hub: Hub, client: Client, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    quick(client)
    size = 32 * MiB
    src = random_file(tmp_path / "data.bin", size, seed=7)
    proc = spawn(client, "push", str(src), "--limit", "8M", "--json")
    wait_until(lambda: hub.partial_size() >= 8 * MiB, 60, "8 MiB at the hub")
    hub.kill()
    down_since = time.monotonic()
    # Down for three times the steady phase: a stream that never started
    # would have given up by now.
    wait_until(
        lambda: proc.poll() is not None or time.monotonic() - down_since > 3 * STEADY,
        60,
        "three steady phases",
    )
    assert proc.poll() is None, proc.communicate()[1]
    hub.start()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    row = json.loads(out)["pushed"][0]
    assert row["size"] == size and row["attempts"] >= 2
    back = tmp_path / "back.bin"
    client.run("pull", "data.bin", str(back))
    assert same_bytes(src, back)


def test_a_new_stream_succeeds_when_the_hub_comes_back_within_the_steady_phase(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    client.env.update({"FREIGHT_RETRY_INTERVAL": "0.2", "FREIGHT_RETRY_STEADY": "60"})
    src = random_file(tmp_path / "late.bin", 300_000, seed=9)
    hub.stop()
    with Proc(client, "push", str(src)) as proc:
        proc.wait_stderr("cannot reach the hub", 30)
        hub.start()
        assert proc.wait(120) == 0, proc.stderr
    assert {f["name"]: f["size"] for f in json.loads(client.run("ls", "--json").stdout)} == {
        "late.bin": 300_000
    }
