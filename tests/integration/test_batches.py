"""Pushing folders of many small files: batches stored all or none, through
a real hub process over TLS on loopback (and through a proxy that cuts the
connection), and a hostile client sending batches by hand."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import blake3
import pytest

from freight.protocol import messages as m
from freight.protocol.batch import BatchEntry, encode_batch
from freight.protocol.frames import encode_frame
from tests.faultproxy import FaultProxy
from tests.hostile import attach, recv_frame, token_of
from tests.support import Client, Hub, random_file

KiB = 1024
MiB = 1024 * KiB


def small_tree(root: Path, count: int, *, big: int = 0) -> dict[str, Path]:
    """``count`` small files (0..6 KiB, some nested) and ``big`` larger
    ones, by the name a push of ``root`` stores them under."""
    files = {}
    for i in range(count):
        rel = f"d{i % 7}/f{i:05d}.bin" if i % 3 else f"f{i:05d}.txt"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        files[f"{root.name}/{rel}"] = random_file(root / rel, (i * 397) % (6 * KiB), seed=i)
    for i in range(big):
        root.mkdir(parents=True, exist_ok=True)
        files[f"{root.name}/big{i}.bin"] = random_file(root / f"big{i}.bin", 300 * KiB + i, seed=i)
    return files


def digest(p: Path) -> str:
    return blake3.blake3(p.read_bytes()).hexdigest()


def hub_file(hub: Hub, name: str) -> Path:
    (found,) = (hub.data / "files").glob(f"*/{name}")
    return found


def listing(client: Client) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in json.loads(client.run("ls", "--json").stdout)}


def test_a_folder_of_small_files_arrives_whole_in_batches(tmp_path: Path, client: Client) -> None:
    files = small_tree(tmp_path / "many", 1200, big=2)
    res = client.run("push", str(tmp_path / "many"), "--json")
    pushed = {r["name"]: r for r in json.loads(res.stdout)["pushed"]}
    assert set(pushed) == set(files)
    listed = listing(client)
    for name, path in files.items():
        assert pushed[name]["digest"] == digest(path), name
        assert listed[name]["size"] == path.stat().st_size, name
        assert hub_file(client.hub, name).read_bytes() == path.read_bytes(), name
    # Small files went in batches (at most 512 files each), the big ones not.
    log = [json.loads(line) for line in client.hub.lines if line.startswith("{")]
    batches = [e for e in log if e.get("event") == "batch_end"]
    assert sum(e["files"] for e in batches) == 1200 and len(batches) >= 3
    assert max(e["files"] for e in batches) <= 512
    # A pull gives the same bytes back.
    one = "many/d1/f00001.bin"
    client.run("pull", one, str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == files[one].read_bytes()
    # Pushed again with new contents: replaced, not doubled.
    files[one].write_bytes(b"changed")
    client.run("push", str(tmp_path / "many"), "--quiet")
    assert hub_file(client.hub, one).read_bytes() == b"changed"
    assert listing(client)[one]["size"] == 7


def test_a_folder_of_small_files_comes_back_in_batches(tmp_path: Path, client: Client) -> None:
    files = small_tree(tmp_path / "many", 700, big=1)
    client.run("push", str(tmp_path / "many"), "--quiet")
    (tmp_path / "out").mkdir()
    res = client.run("pull", "many/", str(tmp_path / "out"), "--json")
    got = json.loads(res.stdout)["pulled"]
    assert {r["name"] for r in got} == set(files) and not any(r["skipped"] for r in got)
    for name, path in files.items():
        copy = tmp_path / "out" / name
        assert copy.read_bytes() == path.read_bytes(), name
        assert copy.stat().st_mtime == path.stat().st_mtime, name
    assert not list((tmp_path / "out").rglob("*.freight-partial"))
    # Only the big file came as a stream of its own; the rest in batches.
    log = [json.loads(line) for line in client.hub.lines if line.startswith("{")]
    assert [e["name"] for e in log if e.get("event") == "pull_start"] == ["many/big0.bin"]
    # Run again (cp's rules: into out/many again): everything is in place.
    again = json.loads(client.run("pull", "many/", str(tmp_path / "out"), "--json").stdout)
    assert all(r["skipped"] for r in again["pulled"])
    # A link planted at a partial's name is not followed.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    first = tmp_path / "out" / "many" / "d1" / "f00001.bin"
    first.unlink()
    first.with_name("f00001.bin.freight-partial").symlink_to(victim)
    res = client.run("pull", "many/", str(tmp_path / "out"), check=False)
    assert res.returncode != 0 and "refusing to follow the symbolic link" in res.stderr
    assert victim.read_bytes() == b"keep"


def test_a_batch_over_the_quota_stores_none_of_its_files(tmp_path: Path, client: Client) -> None:
    client.run("users", "quota", "admin", "64K")
    small_tree(tmp_path / "q", 40)  # ~120 KiB in all: one batch, over the quota
    res = client.run("push", str(tmp_path / "q"), check=False)
    assert res.returncode == 7
    assert "admin's quota on the hub is 64.0 KiB" in res.stderr
    assert listing(client) == {}
    assert not list((client.hub.data / "files").rglob("*.bin"))
    assert not list((client.hub.data / "partial").rglob("*.batch"))


def test_batches_survive_a_connection_cut_every_few_hundred_kib(tmp_path: Path, hub: Hub) -> None:
    with FaultProxy(hub.port, cut_every=700 * KiB) as proxy:
        c = Client(tmp_path / "client", hub)
        c.login(url=proxy.url)
        files = small_tree(tmp_path / "cut", 900)
        c.run("push", str(tmp_path / "cut"), "--quiet", timeout=180)
        assert proxy.connections > 2  # it did cut
        proxy.set_cut_every(None)
        listed = {f["name"]: f for f in json.loads(c.run("ls", "--json").stdout)}
    assert set(listed) == set(files)
    for name, path in files.items():
        assert hub_file(hub, name).read_bytes() == path.read_bytes(), name


def answer_to(client: Client, msg: m.Message, payload: bytes) -> m.AnyMessage:
    """The hub's answer to one frame sent by hand on a raw control channel
    with ``client``'s login."""

    async def go() -> m.AnyMessage:
        session, ws, welcome = await attach(client.hub, token_of(client))
        try:
            assert isinstance(welcome, m.Welcome)
            await ws.send_bytes(encode_frame(msg, payload))
            return await recv_frame(ws)
        finally:
            await ws.close()
            await session.close()

    return asyncio.run(go())


ENTRY = BatchEntry(name="ok.txt", size=5, mtime=1.0, digest=blake3.blake3(b"hello").hexdigest())


def forged(kind: str) -> tuple[m.PutFiles, bytes]:
    """A batch frame a hostile client could send."""
    if kind == "escape":
        e = BatchEntry(name="../../etc/x", size=5, mtime=1.0, digest=ENTRY.digest)
        return encode_batch("b1", [e], [b"hello"])
    if kind == "digest":
        return encode_batch("b2", [ENTRY], [b"HELLO"])
    if kind == "file-and-folder":
        inner = BatchEntry(name="ok.txt/x", size=5, mtime=1.0, digest=ENTRY.digest)
        return encode_batch("b7", [ENTRY, inner], [b"hello", b"hello"])
    if kind == "twice":
        return encode_batch("b3", [ENTRY, ENTRY], [b"hello", b"hello"])
    msg, payload = encode_batch("b4", [ENTRY], [b"hello"])
    if kind == "short":  # the files hold fewer bytes than the manifest says
        return m.PutFiles(sid="b4", manifest=msg.manifest, len=len(payload) - 1), payload[:-1]
    if kind == "overrun":  # a manifest longer than the payload
        return m.PutFiles(sid="b5", manifest=len(payload) + 1, len=len(payload)), payload
    assert kind == "garbage"
    junk = b"[not json" + b"x" * 10
    return m.PutFiles(sid="b6", manifest=9, len=len(junk)), junk


@pytest.mark.parametrize(
    ("names", "code", "text"),
    [
        (["../x", "y"], "usage", "'..' components are not allowed"),
        (["a", "a"], "remote_protocol_error", "same file twice"),
        (["secret.txt"], "not_found", "no file named 'secret.txt' on the hub"),
        (["big.bin"], "usage", "more than a batch holds"),
    ],
)
def test_a_hostile_batch_request_gets_nothing_it_may_not_have(
    tmp_path: Path, shared_client: Client, bob: Client, names: list[str], code: str, text: str
) -> None:
    # The admin holds secret.txt; bob holds a file too big for a batch.
    shared_client.run("push", str(random_file(tmp_path / "secret.txt", 100)), "--quiet")
    bob.run("push", str(random_file(tmp_path / "big.bin", 300 * KiB)), "--quiet")
    payload = json.dumps(names).encode()
    answer = answer_to(bob, m.GetFiles(sid="g1", len=len(payload)), payload)
    assert isinstance(answer, m.Abort), answer
    assert (answer.code, text in answer.message) == (code, True), answer


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("escape", "usage", "'..' components are not allowed"),
        ("digest", "integrity_error", "arrived with a different digest"),
        ("twice", "remote_protocol_error", "same file twice"),
        ("file-and-folder", "usage", "holds 'ok.txt' both as a file and as a folder"),
        ("short", "remote_protocol_error", "a batch whose files hold 5 bytes in a payload of 4"),
        ("overrun", "remote_protocol_error", "manifest overruns its payload"),
        ("garbage", "remote_protocol_error", "manifest is not JSON"),
    ],
)
def test_a_forged_batch_is_refused_and_stores_nothing(
    shared_client: Client, kind: str, code: str, text: str
) -> None:
    hub = shared_client.hub
    answer = answer_to(shared_client, *forged(kind))
    assert isinstance(answer, m.Abort), answer
    assert (answer.code, text in answer.message) == (code, True), answer
    assert not list((hub.data / "files").rglob("ok.txt"))
    assert not list((hub.data / "files").rglob("x"))
    assert not list((hub.data / "partial").rglob("*.batch"))
    shared_client.run("ls")  # the hub is still there


def test_a_batch_never_writes_into_another_attempts_partial(shared_client: Client) -> None:
    """Two nodes of a cluster (or a client's retry racing its first try)
    may take the same batch at once: each writes partials of its own, so
    neither truncates nor overwrites the files the other is writing."""
    hub = shared_client.hub
    mine = BatchEntry(name="mine.txt", size=5, mtime=1.0, digest=ENTRY.digest)
    first = answer_to(shared_client, *encode_batch("b8", [mine], [b"hello"]))
    assert isinstance(first, m.PutFilesAck), first
    folder = hub.data / "partial" / hub_file(hub, "mine.txt").parent.name
    # Another node, half-way through the same batch, writes this partial.
    theirs = folder / "b9.0.batch"
    theirs.write_bytes(b"hel")
    answer = answer_to(shared_client, *encode_batch("b9", [ENTRY], [b"hello"]))
    assert isinstance(answer, m.PutFilesAck), answer
    assert theirs.read_bytes() == b"hel"
    assert hub_file(hub, "ok.txt").read_bytes() == b"hello"
    assert not [p for p in folder.glob("b9.*") if p != theirs]
    theirs.unlink()
