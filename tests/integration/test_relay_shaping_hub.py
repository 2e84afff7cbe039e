"""Limits and compression on relayed transfers, through a real hub: ``send``
/ ``receive`` and ``cp`` with an agent under ``--compress`` (bytes identical,
fewer bytes relayed by the hub) and ``--limit`` (the rate observed), the
hub's budget applied to relayed traffic, and a sender that packs a
decompression bomb. Real hub and agent processes, real CLI on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

import freight
from freight.errors import Forbidden, UsageError
from freight.protocol import sendrecv as wire
from tests.agentsupport import Agent, api
from tests.relaysupport import BOB_PASSWORD, FAST_RELAY, Proc, fast, sdk
from tests.support import Client, Hub, assert_same_tree, random_file, same_bytes, wait_until

MiB = 1024 * 1024


def text_tree(root: Path, size: int = 6 * MiB) -> Path:
    """Log-like text: one large file (chunks) and many small ones (batches)."""
    root.mkdir(parents=True)
    line = b"%08d 2026-12-04T03:%02d:%02d INFO relay moved %d bytes for job %d\n"
    body = b"".join(line % (i, i % 60, i % 59, i * 7, i % 97) for i in range(size // 64))
    (root / "big.log").write_bytes(body[:size])
    for i in range(40):
        (root / f"part-{i:02d}.log").write_bytes(body[i * 9000 : i * 9000 + 8000 + i])
    return root


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def start_send(client: Client, *args: str) -> tuple[Proc, str]:
    sender = Proc(client, "send", *args, "--json")
    first = sender.first_event(20)
    assert first["event"] == "code", first
    return sender, str(first["code"])


def done(res_stdout: str) -> dict[str, Any]:
    lines = [json.loads(x) for x in res_stdout.splitlines() if x.strip()]
    assert lines and lines[-1]["event"] == "done", res_stdout
    return lines[-1]


def relayed_bytes(admin: Client, before: int) -> int:
    """What the hub relayed for the connection that closed after ``before``
    others (its ``connection_closed`` event)."""
    found: list[int] = []

    def closed() -> bool:
        res = admin.run(
            "admin", "events", "--kind", "connection_closed", "--limit", "500", "--json"
        )
        events = json.loads(res.stdout)
        if len(events) > before:
            found.append(int(events[0]["detail"]["bytes"]))
            return True
        return False

    wait_until(closed, 20, "the connection's close event")
    return found[0]


def closed_count(admin: Client) -> int:
    res = admin.run("admin", "events", "--kind", "connection_closed", "--limit", "500", "--json")
    return len(json.loads(res.stdout))


# --- send / receive -------------------------------------------------------------


def test_compressed_send_arrives_identical_and_the_hub_relays_less(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = text_tree(tmp_path / "logs")
    size = tree_bytes(src)
    before = closed_count(admin)
    sender, code = start_send(admin, str(src), "--compress", "fast")
    with sender:
        res = bob.run("receive", code, "-o", str(tmp_path / "in"), "--json", timeout=60)
        got = done(res.stdout)
        assert sender.wait(30) == 0, sender.stderr
    sent = sender.json_events()[-1]
    assert_same_tree(src, tmp_path / "in" / "logs")
    assert got["compress"] == sent["compress"] == "fast"
    assert got["bytes"] == size and got["wire"] == sent["wire"] < size // 4, got
    # What the hub carried: the compressed records, not the text.
    assert relayed_bytes(admin, before) < size // 3


def test_the_receivers_choice_wins_over_the_senders_wish(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = text_tree(tmp_path / "logs", size=2 * MiB)
    sender, code = start_send(admin, str(src), "--compress", "max")
    with sender:
        res = bob.run(
            "receive", code, "-o", str(tmp_path / "in"), "--compress", "none", "--json", timeout=60
        )
        assert sender.wait(30) == 0, sender.stderr
    got = done(res.stdout)
    assert_same_tree(src, tmp_path / "in" / "logs")
    assert got["compress"] == "none" and got["wire"] >= got["bytes"], got


@pytest.mark.parametrize("side", ["send", "receive"])
def test_a_limit_on_either_end_holds_the_rate(
    tmp_path: Path, admin: Client, bob: Client, side: str
) -> None:
    size = 6 * MiB
    src = random_file(tmp_path / "noise.bin", size, seed=5)
    limit = ["--limit", "2M"]
    sender, code = start_send(admin, str(src), *(limit if side == "send" else []))
    with sender:
        res = bob.run(
            "receive",
            code,
            "-o",
            str(tmp_path / "in"),
            "--json",
            *(limit if side == "receive" else []),
            timeout=60,
        )
        assert sender.wait(30) == 0, sender.stderr
    got = done(res.stdout)
    assert same_bytes(src, tmp_path / "in" / "noise.bin")
    # 6 MiB at 2 MiB/s is 3 s; allow for the bucket's burst and the end.
    assert 2.4 <= got["seconds"] <= 8, got


def test_a_percentage_is_measured_on_each_ends_path(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = text_tree(tmp_path / "logs", size=2 * MiB)
    sender, code = start_send(admin, str(src), "--limit", "50%")
    with sender:
        res = bob.run(
            "receive", code, "-o", str(tmp_path / "in"), "--limit", "40%", "--json", timeout=90
        )
        assert sender.wait(60) == 0, sender.stderr
    got, sent = done(res.stdout), sender.json_events()[-1]
    assert_same_tree(src, tmp_path / "in" / "logs")
    # Each end measured its own hop (loopback: far beyond a few MiB/s) and
    # kept to its share; the sender to the smaller of both.
    assert got["rate"] > 8 * MiB and sent["rate"] > 8 * MiB, (got, sent)
    assert sent["rate"] <= got["rate"]


def test_bad_limits_and_unknown_levels_are_refused_clearly(tmp_path: Path, admin: Client) -> None:
    src = random_file(tmp_path / "a.bin", 1000, seed=1)
    res = admin.run("send", str(src), "--limit", "150%", check=False, timeout=60)
    assert res.returncode == 2 and "not a percentage" in res.stderr, res.stderr
    res = admin.run("receive", "7-a-b-c", "--compress", "ultra", check=False, timeout=60)
    assert res.returncode == 2 and "none, fast, max" in res.stderr, res.stderr
    res = admin.run("send", str(src), "--limit", "fast", check=False, timeout=60)
    assert res.returncode == 2 and "not a size" in res.stderr, res.stderr


async def test_a_packed_bomb_from_a_sender_is_refused(
    tmp_path: Path, admin: Client, bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)
    async with sdk(admin) as rc:
        offer = await rc.offer("bomb-test")
        receiver = Proc(
            bob, "receive", offer.code, "-o", str(tmp_path / "in"), "--compress", "fast"
        )
        with receiver:
            conn = await asyncio.wait_for(offer.accept(), 30)
            await conn.wait_established(30)
            entry = wire.WireEntry(path="a.txt", type="file", mode=0o644, size=100, mtime=1.0)
            await conn.send(wire.encode(wire.Manifest(entries=[entry], want="fast")))
            holdings = wire.decode(await asyncio.wait_for(conn.recv(), 30), wire.Holdings)
            assert holdings.level == "fast"
            # Declares 100 bytes, would expand to 64 MiB.
            bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"F" * (64 * MiB))
            await conn.send(b"X" + (100).to_bytes(4, "big") + b"\x01" + bomb)
            verdict = wire.decode(await asyncio.wait_for(conn.recv(), 30), wire.Verdict)
            assert not verdict.ok and "malformed 'X' message" in verdict.error, verdict
            assert await asyncio.to_thread(receiver.wait, 30) != 0
            assert "malformed 'X' message" in receiver.stderr, receiver.stderr
    assert not (tmp_path / "in" / "a.txt").exists()


# --- cp with an agent ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client
) -> Iterator[Agent]:
    home = tmp_path_factory.mktemp("shaping-lab")
    root = home / "root"
    root.mkdir()
    agent = Agent(admin, shared_hub, "shaper", home, root)
    agent.start()
    yield agent
    agent.kill()


def cp_json(client: Client, *args: str) -> dict[str, Any]:
    res = client.run("cp", *args, "--json", timeout=90)
    return dict(json.loads(res.stdout))


def test_cp_from_and_to_an_agent_compresses(admin: Client, lab: Agent, tmp_path: Path) -> None:
    src = text_tree(lab.roots[0] / "logs")
    size = tree_bytes(src)
    before = closed_count(admin)
    down = cp_json(admin, "-r", lab.remote(src), str(tmp_path / "copy"), "--compress", "fast")
    assert_same_tree(src, tmp_path / "copy")
    assert down["compress"] == "fast" and down["bytes"] == size
    assert down["wire"] < size // 4, down
    assert relayed_bytes(admin, before) < size // 3
    # Uploads: the agent has no say, so the sender's wish stands.
    up = cp_json(
        admin, "-r", str(tmp_path / "copy"), lab.remote(lab.roots[0] / "back"), "--compress", "max"
    )
    assert_same_tree(src, lab.roots[0] / "back")
    assert up["compress"] == "max" and up["wire"] < size // 4, up


def test_cp_limit_holds_the_rate(admin: Client, lab: Agent, tmp_path: Path) -> None:
    src = random_file(lab.roots[0] / "slow.bin", 6 * MiB, seed=9)
    got = cp_json(admin, lab.remote(src), str(tmp_path / "slow.bin"), "--limit", "2M")
    assert same_bytes(src, tmp_path / "slow.bin")
    assert 2.4 <= got["seconds"] <= 8, got
    # A share of the measured path (loopback: far beyond what 6 MiB needs).
    share = cp_json(admin, lab.remote(src), str(tmp_path / "share.bin"), "--limit", "50%")
    assert same_bytes(src, tmp_path / "share.bin")
    assert share["rate"] > 8 * MiB, share


# --- the hub's budget ----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Client]]:
    """A hub with a 2 MiB/s budget whose choice of level never depends on
    the machine's load (admin and bob logged in)."""
    home = tmp_path_factory.mktemp("own-hub")
    hub = Hub(home / "hub", extra=["--bandwidth", "2M", "--compress-busy", "0"]).start()
    try:
        admin = fast(Client(home / "admin", hub))
        admin.login()
        admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
        bob = fast(Client(home / "bob", hub))
        bob.login(user="bob", password=BOB_PASSWORD)
        yield admin, bob
    finally:
        hub.stop()


def test_the_hubs_budget_applies_to_relayed_transfers(
    tmp_path: Path, own_hub: tuple[Client, Client]
) -> None:
    admin, bob = own_hub
    src = random_file(tmp_path / "noise.bin", 6 * MiB, seed=12)
    sender, code = start_send(admin, str(src))
    with sender:
        res = bob.run("receive", code, "-o", str(tmp_path / "in"), "--json", timeout=60)
        assert sender.wait(30) == 0, sender.stderr
    got = done(res.stdout)
    assert same_bytes(src, tmp_path / "in" / "noise.bin")
    # No --limit anywhere: 6 MiB at the hub's 2 MiB/s is 3 s.
    assert 2.4 <= got["seconds"] <= 8, got


# --- the level the hub asks of pushes ------------------------------------------------


def pushed(client: Client, path: Path, name: str, *extra: str) -> dict[str, Any]:
    res = client.run("push", str(path), "--as", name, "--json", *extra, timeout=60)
    return dict(json.loads(res.stdout)["pushed"][0])


def test_the_hub_chooses_the_level_of_pushes(
    tmp_path: Path, own_hub: tuple[Client, Client]
) -> None:
    admin, _ = own_hub
    src = text_tree(tmp_path / "logs", size=2 * MiB) / "big.log"
    size = src.stat().st_size
    # auto: the sender's wish stands.
    assert pushed(admin, src, "lvl-a.log", "--compress", "fast")["wire_bytes"] < size // 3
    try:
        res = admin.run("admin", "compression", "none", "--user", "admin", "--json")
        assert json.loads(res.stdout)["users"] == {"admin": "none"}
        # The hub asks this account for none, whatever it wishes.
        assert pushed(admin, src, "lvl-b.log", "--compress", "max")["wire_bytes"] >= size
        admin.run("admin", "compression", "fast")
        shown = admin.run("admin", "compression").stdout
        assert "hub: fast" in shown and "admin: none" in shown, shown
    finally:
        admin.run("admin", "compression", "auto", "--user", "admin")
        admin.run("admin", "compression", "auto")
    res = admin.run("admin", "compression", "ultra", check=False)
    assert res.returncode != 0 and "one of auto, none, fast, max" in res.stderr, res.stderr
    res = admin.run("admin", "compression", "fast", "--user", "nobody-here", check=False)
    assert res.returncode != 0 and "no user named 'nobody-here'" in res.stderr, res.stderr


def test_only_an_admin_sets_levels_and_bad_bodies_are_refused(
    own_hub: tuple[Client, Client],
) -> None:
    admin, bob = own_hub
    with pytest.raises(Forbidden):
        api(bob, "PUT", "/v1/admin/compression", {"level": "none", "user": "bob"})
    with pytest.raises(Forbidden):
        api(bob, "GET", "/v1/admin/compression")
    for body in ([], {"lvl": "fast"}, {"level": 3}, {"level": "fast", "user": "x" * 300}):
        with pytest.raises(UsageError):
            api(admin, "PUT", "/v1/admin/compression", body)
    assert api(admin, "GET", "/v1/admin/compression")["users"] == {}


async def test_the_sdk_sends_and_copies_with_limits_and_compression(
    tmp_path: Path, admin: Client, bob: Client, lab: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)
    src = text_tree(tmp_path / "logs", size=2 * MiB)
    codes: asyncio.Queue[str] = asyncio.Queue()
    async with (
        freight.Client(config_dir=admin.config) as alice_hub,
        freight.Client(config_dir=bob.config) as bob_hub,
    ):
        sending = asyncio.create_task(
            alice_hub.send(src, on_code=lambda o: codes.put_nowait(o.code), compress="max")
        )
        try:
            code = await asyncio.wait_for(codes.get(), 30)
            got = await asyncio.wait_for(bob_hub.receive(code, tmp_path / "in", limit="64M"), 60)
            sent = await asyncio.wait_for(sending, 30)
        finally:
            sending.cancel()
        assert_same_tree(src, tmp_path / "in" / "logs")
        assert got.level == sent.level == "max" and sent.wire < got.bytes // 4
        assert got.rate == sent.rate == 64 * MiB
        remote = lab.roots[0] / "sdk-logs"
        up = await alice_hub.cp(src, dest=lab.remote(remote), recursive=True, compress="fast")
        down = await alice_hub.cp(lab.remote(remote), dest=tmp_path / "back", recursive=True)
    assert_same_tree(src, remote)
    assert_same_tree(src, tmp_path / "back")
    assert up.level == "fast" and up.wire < up.bytes // 4
    assert down.level == "none" and down.wire >= down.bytes  # nobody asked for compression


def test_a_users_cap_applies_to_its_relayed_transfers(
    tmp_path: Path, admin: Client, bob: Client, lab: Agent
) -> None:
    src = random_file(tmp_path / "noise.bin", 6 * MiB, seed=21)
    res = admin.run("users", "cap", "bob", "2M")
    assert "bob: 2.0 MiB/s" in res.stderr, res.stderr
    try:
        sender, code = start_send(admin, str(src))
        with sender:
            res = bob.run("receive", code, "-o", str(tmp_path / "in"), "--json", timeout=60)
            assert sender.wait(30) == 0, sender.stderr
        got = done(res.stdout)
        assert same_bytes(src, tmp_path / "in" / "noise.bin")
        # bob's 2 MiB/s holds with no --limit on either end: about 3 s.
        assert 2.4 <= got["seconds"] <= 8, got
    finally:
        assert "bob: no cap" in admin.run("users", "cap", "bob", "off").stderr
    res = admin.run("users", "cap", lab.name, "1M", check=False)
    assert res.returncode == 2 and "use freight agents cap" in res.stderr, res.stderr
    res = admin.run("users", "cap", "nobody-here", "1M", check=False)
    assert res.returncode != 0 and "no user named 'nobody-here'" in res.stderr, res.stderr
    with pytest.raises(UsageError):
        api(admin, "PUT", "/v1/users/bob/cap", {"cap": -1})
    with pytest.raises(Forbidden):
        api(bob, "PUT", "/v1/users/bob/cap", {"cap": 0})
