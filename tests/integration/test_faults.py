"""Faults a real deployment meets: killed processes, cut and stalled
connections, a full disk, a source that changes between attempts.

Everything runs for real: hub processes, CLI processes, TLS and sealed data
connections on loopback, with tests/faultproxy.py in front of the hub's port
where the network has to misbehave.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import FaultProxy
from tests.support import Client, Hub, random_file, same_bytes, wait_until

MiB = 1024 * 1024
CKPT = 8 * MiB  # the default checkpoint interval
# Frame headers, AEAD tags, TLS handshakes, WebSocket upgrades, tickets: far
# below this for the transfers here.
OVERHEAD = 1 * MiB


# --- fixtures and helpers -------------------------------------------------------


@pytest.fixture
def proxies() -> Iterator[Callable[..., FaultProxy]]:
    started: list[FaultProxy] = []

    def make(hub: Hub, **kw: Any) -> FaultProxy:
        p = FaultProxy(hub.port, **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.close()


def client_via(tmp_path: Path, hub: Hub, proxy: FaultProxy | None = None, **env: str) -> Client:
    """A logged-in client; through ``proxy`` when given."""
    c = Client(tmp_path / "client", hub)
    c.env.update(env)
    c.login(url=proxy.url if proxy else None)
    return c


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def pushed(stdout: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(stdout)["pushed"]
    assert len(rows) == 1
    return rows[0]


def hub_events(hub: Hub, kind: str) -> list[dict[str, Any]]:
    """Structured events the hub logged (JSON lines on stderr) since start()."""
    out = []
    for line in list(hub.lines):
        if line.startswith("{") and f'"{kind}"' in line:
            ev = json.loads(line)
            if ev.get("event") == kind:
                out.append(ev)
    return out


def pull_back(client: Client, name: str, dest: Path, *args: str) -> dict[str, Any]:
    res = client.run("pull", name, str(dest), "--json", *args)
    pulled: dict[str, Any] = json.loads(res.stdout)["pulled"]
    return pulled


def listed(client: Client) -> dict[str, int]:
    return {f["name"]: f["size"] for f in json.loads(client.run("ls", "--json").stdout)}


# --- a. big file ------------------------------------------------------------------


@pytest.mark.slow  # about 15 s; still part of `make test`
def test_256_mib_push_and_pull_identical(tmp_path: Path, client: Client, hub: Hub) -> None:
    size = 256 * MiB
    src = random_file(tmp_path / "big.bin", size, seed=256)
    res = client.run("push", str(src), "--as", "big.bin", "--json")
    row = pushed(res.stdout)
    assert (row["size"], row["resumed_from"], row["restarted"]) == (size, 0, False)
    assert listed(client) == {"big.bin": size}
    assert hub.partials() == []
    back = tmp_path / "back.bin"
    got = pull_back(client, "big.bin", back)
    assert got["size"] == size and got["digest"] == row["digest"]
    assert same_bytes(src, back)
    assert not back.with_name("back.bin.freight-partial").exists()


# --- b. the client is killed --------------------------------------------------------


def test_push_resumes_after_client_is_killed(
    tmp_path: Path, client: Client, hub: Hub, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    size = 96 * MiB
    src = random_file(tmp_path / "data.bin", size, seed=2)
    proc = spawn(client, "push", str(src), "--as", "data.bin", "--limit", "16M", "--json")
    wait_until(lambda: hub.partial_size() >= 24 * MiB, 30, "24 MiB at the hub")
    proc.kill()
    proc.wait(10)
    assert listed(client) == {}  # nothing is published half-way
    at_kill = hub.partial_size()
    assert 24 * MiB <= at_kill < size
    assert hub.partials(), "the partial upload stays for a resume"

    row = pushed(client.run("push", str(src), "--as", "data.bin", "--json").stdout)
    # It resumed from a durable checkpoint: not from zero, and losing at most
    # one checkpoint interval of what had arrived.
    print(f"client SIGKILL: {at_kill} bytes at the hub, resumed from {row['resumed_from']}")
    assert row["restarted"] is False
    assert 0 < row["resumed_from"] < size
    assert at_kill - row["resumed_from"] <= CKPT
    assert hub.partials() == []
    back = tmp_path / "back.bin"
    pull_back(client, "data.bin", back)
    assert same_bytes(src, back)


# --- c. the hub is killed -------------------------------------------------------------


def test_running_push_survives_hub_sigkill_and_resends_little(
    tmp_path: Path,
    hub: Hub,
    proxies: Callable[..., FaultProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    proxy = proxies(hub)
    client = client_via(tmp_path, hub, proxy)
    size = 96 * MiB
    src = random_file(tmp_path / "data.bin", size, seed=3)
    proc = spawn(client, "push", str(src), "--as", "data.bin", "--limit", "16M", "--json")
    wait_until(lambda: hub.partial_size() >= 24 * MiB, 30, "24 MiB at the hub")
    hub.kill()
    sent_before_kill = proxy.up_bytes
    assert proc.poll() is None, "the client must not give up while the hub is down"
    hub.start()  # same data folder, same port: the proxy reaches it again

    code, out, err = finish(proc)
    assert code == 0, err + hub.log()[-3000:]
    row = pushed(out)
    assert row["size"] == size and row["attempts"] >= 2
    resumes = hub_events(hub, "stream_resume")
    assert len(resumes) >= 1
    checkpoint = resumes[0]["checkpoint"]
    assert 0 < checkpoint <= sent_before_kill

    # Only what was not durable at the hub went over the wire twice.
    resent = proxy.up_bytes - size
    print(
        f"hub SIGKILL: client->hub {proxy.up_bytes} bytes for a {size}-byte file; "
        f"re-sent {resent} ({resent / MiB:.2f} MiB); {sent_before_kill} sent before the "
        f"kill, hub resumed at {checkpoint}"
    )
    assert 0 < resent <= 2 * CKPT + OVERHEAD

    back = tmp_path / "back.bin"
    pull_back(client, "data.bin", back)
    assert same_bytes(src, back)
    assert hub.partials() == []


# --- d. a connection that is cut every few MiB -----------------------------------------


@pytest.mark.parametrize("data_path", ["direct", "tls"])
def test_push_completes_through_cuts_every_3_mib(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., FaultProxy],
    data_path: str,
) -> None:
    # The receiver (here the hub) announces its 1 MiB interval to the sender.
    hub = hubs("--checkpoint-interval", "1M")
    proxy = proxies(hub, cut_every=3 * MiB)
    client = client_via(tmp_path, hub, proxy)
    size = 40 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=6)
    res = client.run("push", str(src), "--as", "src.bin", "--data-path", data_path, "--json")
    row = pushed(res.stdout)
    assert row["size"] == size and row["attempts"] >= size // (3 * MiB)
    assert proxy.cuts >= size // (3 * MiB)
    resent = proxy.up_bytes - size
    print(
        f"push, {data_path}, cut every 3 MiB: {proxy.cuts} cuts, {row['attempts']} attempts, "
        f"{proxy.up_bytes} bytes up for {size}: {resent / proxy.cuts / MiB:.2f} MiB re-sent "
        f"per cut"
    )
    # A cut costs at most the sender's window: two 1 MiB intervals.
    assert resent <= proxy.cuts * (2 * MiB + 64 * 1024)
    proxy.set_cut_every(None)
    back = tmp_path / "back.bin"
    pull_back(client, "src.bin", back)
    assert same_bytes(src, back)


@pytest.mark.parametrize("data_path", ["direct", "tls"])
def test_pull_completes_through_cuts_every_12_mib(
    tmp_path: Path, hub: Hub, proxies: Callable[..., FaultProxy], data_path: str
) -> None:
    """With the default 8 MiB interval a connection must carry a bit more
    than one interval for a pull to make progress."""
    proxy = proxies(hub)
    client = client_via(tmp_path, hub, proxy)
    size = 40 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=4)
    client.run("push", str(src), "--as", "src.bin", "--quiet")

    proxy.set_cut_every(12 * MiB)
    down_before = proxy.down_bytes
    back = tmp_path / "back.bin"
    # The limit keeps the client's fsync of a checkpoint well ahead of the cut.
    got = pull_back(client, "src.bin", back, "--data-path", data_path, "--limit", "64M")
    assert got["size"] == size and got["attempts"] >= 4
    assert proxy.cuts >= 4
    assert same_bytes(src, back)
    resent = proxy.down_bytes - down_before - size
    print(f"pull, {data_path}, cut every 12 MiB: {proxy.cuts} cuts, re-sent {resent / MiB:.1f} MiB")
    assert resent <= proxy.cuts * (2 * CKPT + 64 * 1024)


def test_pull_completes_through_cuts_every_3_mib(
    tmp_path: Path, hubs: Callable[..., Hub], proxies: Callable[..., FaultProxy]
) -> None:
    # The smaller of the sender's (hub: 1 MiB) and receiver's interval applies.
    hub = hubs("--checkpoint-interval", "1M")
    proxy = proxies(hub)
    client = client_via(tmp_path, hub, proxy)
    size = 40 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=5)
    client.run("push", str(src), "--as", "src.bin", "--quiet")

    proxy.set_cut_every(3 * MiB)
    down_before = proxy.down_bytes
    back = tmp_path / "back.bin"
    got = pull_back(client, "src.bin", back)
    assert got["size"] == size and got["attempts"] >= size // (3 * MiB)
    assert proxy.cuts >= size // (3 * MiB)
    assert same_bytes(src, back)
    resent = proxy.down_bytes - down_before - size
    print(f"pull, cut every 3 MiB: {proxy.cuts} cuts, {resent / proxy.cuts / MiB:.2f} MiB/cut")
    assert resent <= proxy.cuts * (2 * MiB + 64 * 1024)


# --- e. a stalled connection -------------------------------------------------------------


def test_pull_recovers_from_a_stalled_connection(
    tmp_path: Path,
    hub: Hub,
    proxies: Callable[..., FaultProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    proxy = proxies(hub)
    client = client_via(tmp_path, hub, proxy, FREIGHT_STALL_TIMEOUT="3")
    size = 40 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=7)
    client.run("push", str(src), "--as", "src.bin", "--quiet")

    back = tmp_path / "back.bin"
    down_before = proxy.down_bytes
    proc = spawn(client, "pull", "src.bin", str(back), "--limit", "16M", "--json")
    wait_until(lambda: proxy.down_bytes >= down_before + 12 * MiB, 30, "12 MiB pulled")
    assert proxy.stall() >= 1
    conns_at_stall = proxy.connections
    stalled_at = time.monotonic()

    code, out, err = finish(proc, timeout=60)
    took = time.monotonic() - stalled_at
    assert code == 0, err
    print(f"pull stalled at 12 MiB: finished {took:.1f} s after the stall")
    assert took >= 3  # it waited for the stall timeout
    assert proxy.connections > conns_at_stall  # and came back on new connections
    assert json.loads(out)["pulled"]["attempts"] >= 2
    assert same_bytes(src, back)


def test_push_recovers_from_a_stalled_connection(
    tmp_path: Path,
    hub: Hub,
    proxies: Callable[..., FaultProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    proxy = proxies(hub)
    client = client_via(tmp_path, hub, proxy, FREIGHT_STALL_TIMEOUT="3")
    size = 40 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=7)
    proc = spawn(client, "push", str(src), "--as", "src.bin", "--limit", "16M", "--json")
    wait_until(lambda: proxy.up_bytes >= 12 * MiB, 30, "12 MiB through the proxy")
    assert proxy.stall() >= 1
    conns_at_stall = proxy.connections
    stalled_at = time.monotonic()

    # 3 s to notice, then a reconnect and 28 MiB at 16 MiB/s.
    code, _, err = finish(proc, timeout=60)
    took = time.monotonic() - stalled_at
    assert code == 0, err
    print(f"push stalled at 12 MiB: finished {took:.1f} s after the stall")
    assert took >= 3
    assert proxy.connections > conns_at_stall
    back = tmp_path / "back.bin"
    pull_back(client, "src.bin", back)
    assert same_bytes(src, back)


# --- f. the hub's disk is full ------------------------------------------------------------


def _file_size_limit_20_mib() -> None:
    # Python ignores SIGXFSZ, so writes past the limit fail with EFBIG.
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 * MiB, 20 * MiB))


def test_full_disk_on_hub_fails_cleanly(tmp_path: Path, hubs: Callable[..., Hub]) -> None:
    hub = hubs(preexec=_file_size_limit_20_mib)
    client = client_via(tmp_path, hub)
    src = random_file(tmp_path / "big.bin", 40 * MiB, seed=8)
    res = client.run("push", str(src), "--as", "big.bin", check=False, timeout=120)
    assert res.returncode == 7, res.stderr
    assert "disk space" in res.stderr
    assert "big.bin" not in listed(client)
    assert hub.partials() == []  # the useless partial is gone

    small = random_file(tmp_path / "small.bin", 1 * MiB, seed=9)
    client.run("push", str(small), "--as", "small.bin", "--quiet")
    assert listed(client) == {"small.bin": 1 * MiB}
    back = tmp_path / "back.bin"
    pull_back(client, "small.bin", back)
    assert same_bytes(small, back)


# --- g. the source changes between attempts ---------------------------------------------


def _interrupt_push(
    client: Client, hub: Hub, spawn: Callable[..., subprocess.Popen[str]], src: Path
) -> None:
    proc = spawn(client, "push", str(src), "--as", "data.bin", "--limit", "16M", "--json")
    wait_until(lambda: hub.partial_size() >= 20 * MiB, 30, "20 MiB at the hub")
    proc.kill()
    proc.wait(10)


def _rewrite_in_place(path: Path, seed: int) -> None:
    """New content, same size, written into the same inode."""
    size = path.stat().st_size
    fresh = random_file(path.with_name("fresh.tmp"), size, seed=seed)
    with open(path, "r+b") as f:
        f.write(fresh.read_bytes())
    fresh.unlink()


def test_changed_source_starts_over(
    tmp_path: Path, client: Client, hub: Hub, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    src = random_file(tmp_path / "data.bin", 48 * MiB, seed=10)
    _interrupt_push(client, hub, spawn, src)
    before = src.stat().st_mtime
    _rewrite_in_place(src, seed=11)
    os.utime(src, (before + 10, before + 10))  # a clearly new mtime

    res = client.run("push", str(src), "--as", "data.bin", "--json")
    row = pushed(res.stdout)
    assert row["restarted"] is True and row["resumed_from"] == 0
    back = tmp_path / "back.bin"
    pull_back(client, "data.bin", back)
    assert same_bytes(src, back)


def test_changed_source_with_same_mtime_is_detected_by_digest(
    tmp_path: Path, client: Client, hub: Hub, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """Same size and mtime (e.g. restored by a copy tool), different bytes in
    the part already sent: the prefix digest catches it."""
    src = random_file(tmp_path / "data.bin", 48 * MiB, seed=12)
    _interrupt_push(client, hub, spawn, src)
    st = src.stat()
    _rewrite_in_place(src, seed=13)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))

    res = client.run("push", str(src), "--as", "data.bin")  # human output this time
    assert "starting over" in res.stderr
    back = tmp_path / "back.bin"
    pull_back(client, "data.bin", back)
    assert same_bytes(src, back)
    assert hub.partials() == []
