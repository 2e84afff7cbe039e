"""Transfer jobs through a real hub: ``freight job send|receive|show`` as CLI
processes, and the SDK (freight.client.jobs) where a test plays a sender
that lies or a hostile one."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from freight import messaging
from freight.client.config import ClientConfig
from freight.client.jobs import receive_jobs, send_job
from freight.client.sendrecv import Entry
from freight.errors import JobMismatch
from freight.protocol import jobs as j
from tests.relaysupport import BOB_PASSWORD, Proc, fast
from tests.support import Client, Hub

DEADLINE = 60.0


@pytest.fixture(scope="module")
def job_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("jobs") / "hub", extra=["--msg-warmup", "0"]).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def pair(job_hub: Hub) -> Iterator[tuple[Client, Client]]:
    """``admin`` sends, ``bob`` receives; short config folders (msg.sock)."""
    base = Path(tempfile.mkdtemp(prefix="fjob-", dir="/tmp"))
    admin = fast(Client(base / "a", job_hub))
    admin.login()
    admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
    bob = fast(Client(base / "b", job_hub))
    bob.login(user="bob", password=BOB_PASSWORD)
    yield admin, bob
    shutil.rmtree(base, ignore_errors=True)


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_files(root: Path) -> Path:
    src = root / "parcel"
    (src / "sub").mkdir(parents=True)
    (src / "small.txt").write_bytes(b"hello jobs\n")
    (src / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "empty").write_bytes(b"")
    return src


def receiving(bob: Client, app: str, out: Path, *args: str, once: bool = True) -> Proc:
    more = ["--once"] if once else []
    proc = Proc(bob, "job", "receive", app, "-o", str(out), *more, *args)
    proc.wait_stderr("Waiting for jobs", timeout=30)
    return proc


def test_relay_job_end_to_end_with_identical_bytes(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, bob = pair
    src = make_files(tmp_path)
    out = tmp_path / "out"
    with receiving(bob, "inbox", out, "--accept", "relay") as recv:
        sent = admin.run("job", "send", "bob", "inbox", str(src), "--manner", "relay")
        assert recv.wait(DEADLINE) == 0, recv.stderr
    assert tree(out / "parcel") == tree(src)
    line = sent.stdout.strip().splitlines()[-1]
    assert line.startswith("job ")
    assert ": 3 files, 3.0 MiB, BLAKE3 ok, by relay in " in line
    assert ": 3 files, 3.0 MiB, BLAKE3 ok, by relay in " in recv.stdout.decode()
    jid = line.split()[1].rstrip(":")
    shown = json.loads(admin.run("job", "show", jid, "--json").stdout)
    assert shown["state"] == "ok"
    assert [(a["manner"], a["verdict"]) for a in shown["attempts"]] == [("relay", "ok")]


def test_refused_manner_falls_through_with_reasons_in_show(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    """bob accepts relay only: direct and ref are refused (or fail before a
    proposal), relay carries the job; job show lists every attempt."""
    admin, bob = pair
    src = tmp_path / "one.txt"
    src.write_bytes(b"one file\n")
    out = tmp_path / "out"
    with receiving(bob, "inbox2", out, "--accept", "relay") as recv:
        sent = admin.run(
            "job", "send", "bob", "inbox2", str(src), "--manner", "ref,relay", "--json"
        )
        assert recv.wait(DEADLINE) == 0, recv.stderr
    assert (out / "one.txt").read_bytes() == b"one file\n"
    events = [json.loads(x) for x in sent.stdout.splitlines()]
    jid = events[0]["id"]
    shown = json.loads(admin.run("job", "show", str(jid), "--json").stdout)
    verdicts = [(a["n"], a["manner"], a["verdict"]) for a in shown["attempts"]]
    assert verdicts[-1] == (len(verdicts), "relay", "ok")
    first = shown["attempts"][0]
    assert first["manner"] == "ref"
    assert first["verdict"] in ("refused", "failed")
    assert first["reason"]
    text = admin.run("job", "show", str(jid)).stdout
    assert first["reason"] in text
    if first["verdict"] == "refused":  # the receiver said why
        assert first["reason"] == "ref: not accepted here (accepted: relay)"


def test_every_manner_refused_exits_non_zero_with_the_reasons(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, bob = pair
    src = tmp_path / "x.txt"
    src.write_bytes(b"x")
    with receiving(bob, "inbox3", tmp_path / "out", "--accept", "ref") as recv:
        res = admin.run("job", "send", "bob", "inbox3", str(src), "--manner", "relay", check=False)
        assert res.returncode == 7, res.stderr
        assert "no manner worked: relay: not accepted here (accepted: ref)" in res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("freight: error: job ")
        assert "no manner worked" in last
        # The receiver hears the sender gave up; --once ends in failure.
        assert recv.wait(DEADLINE) == 7, recv.stderr
        assert "no manner worked" in recv.stderr


async def test_a_wrong_declared_digest_is_a_mismatch_at_both_ends(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, bob = pair
    src = tmp_path / "d.bin"
    src.write_bytes(os.urandom(100_000))
    out = tmp_path / "out"
    async with asyncio.timeout(DEADLINE):
        with receiving(bob, "inbox4", out, "--accept", "relay") as recv:
            async with messaging.connect(config_dir=admin.config) as bus:
                done = await send_job(
                    bus,
                    "bob",
                    "inbox4",
                    [src],
                    manners=["relay"],
                    config=ClientConfig(admin.config),
                    declare=(100_000, "ab" * 32),
                )
            assert not done.ok
            assert done.error.startswith("mismatch: received 100000 bytes")
            with pytest.raises(JobMismatch):
                done.check()
            code = await asyncio.to_thread(recv.wait, DEADLINE)
            assert code == 7, recv.stderr
            assert "mismatch: received 100000 bytes" in recv.stderr
    # The bytes themselves arrived intact; only the declaration lied.
    assert (out / "d.bin").read_bytes() == src.read_bytes()


async def test_hostile_proposals_are_refused_and_the_receiver_keeps_serving(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, bob = pair
    out = tmp_path / "out"
    good = tmp_path / "good.txt"
    good.write_bytes(b"still serving\n")
    evil = tmp_path / "evil.txt"
    evil.write_bytes(b"evil")
    config = ClientConfig(admin.config)
    async with asyncio.timeout(DEADLINE * 2):
        with receiving(bob, "inbox5", out, once=False) as recv:
            async with messaging.connect(config_dir=admin.config) as bus:
                reg = await bus.register("inbox5", interest=j.JOB_REPLY_TYPE, peer="bob")

                async def refusal(body: bytes) -> j.Refuse:
                    await bus.send(
                        "bob", "inbox5", type=j.JOB_TYPE, body=body, from_ticket=reg.ticket
                    )
                    msg = await asyncio.wait_for(reg.get(), 20)
                    answer = j.decode(msg.body)
                    assert isinstance(answer, j.Refuse), answer
                    return answer

                garbage = await refusal(b"\x00\xffnot a job at all")
                assert garbage.reason.startswith("malformed job message")
                big = await refusal(b"{" + b" " * (200 * 1024) + b"}")
                assert "at most 65536 bytes" in big.reason
                job = "12" * 16
                pigeon = j.Propose(job=job, attempt=1, manner="carrier-pigeon", blake3="00" * 32)
                unknown = await refusal(j.encode(pigeon))
                assert unknown.reason == "unknown manner 'carrier-pigeon'"
                assert (unknown.job, unknown.attempt) == (job, 1)
                # A list of files with a path escaping the output folder:
                # refused by the receiver, the sender's attempt fails.
                escaping = [Entry("../escape.txt", "file", 0o644, 4, 0.0, evil)]
                done = await send_job(
                    bus,
                    "bob",
                    "inbox5",
                    [evil],
                    manners=["relay"],
                    config=config,
                    entries=escaping,
                    answer_timeout=20,
                )
                assert not done.ok
                assert "relay: refusing '../escape.txt': it would leave the destination" in (
                    done.error
                )
                assert not (tmp_path / "escape.txt").exists()
                assert recv.running
                await reg.close()
                ok = await send_job(bus, "bob", "inbox5", [good], manners=["relay"], config=config)
                assert ok.ok, ok.error
            assert recv.running
    assert (out / "good.txt").read_bytes() == b"still serving\n"
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]


def test_job_list_and_show_of_an_unknown_job(pair: tuple[Client, Client]) -> None:
    admin, _ = pair
    res = admin.run("job", "show", "99999", check=False)
    assert res.returncode == 7
    assert "no job '99999'" in res.stderr
    listed = admin.run("job", "list")
    assert listed.stdout.splitlines()[0].split()[:3] == ["ID", "ROLE", "PEER"]


async def test_receiver_without_a_hub_login_refuses_relay(tmp_path: Path) -> None:
    from freight.client.jobmanners import ReceiveSide, RelayReceiver

    side = ReceiveSide(ClientConfig(tmp_path / "nobody"), None, tmp_path, None)  # type: ignore[arg-type]
    assert RelayReceiver(side).unavailable() == "no hub login on this host"
    _ = receive_jobs  # the SDK entry both tests above go through
