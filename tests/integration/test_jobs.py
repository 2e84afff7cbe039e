"""Transfer jobs through a real hub: ``freight job send|receive|show`` as CLI
processes, and the SDK (freight.client.jobs) where a test plays a sender
that lies or a hostile one, or runs both ends in this process.
Jobs across network namespaces (direct reachable, black-holed, a
proxy-only network) are in test_jobs_netns.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from freight import messaging
from freight.client.config import ClientConfig
from freight.client.jobs import JobOutcome, receive_jobs, send_job
from freight.client.jobstore import JobStore
from freight.client.sendrecv import Entry
from freight.errors import JobMismatch
from freight.protocol import jobs as j
from freight.tasks import Supervisor
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


async def test_refused_manner_falls_through_with_reasons_in_show(
    pair: tuple[Client, Client], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob accepts relay only: he refuses direct with the reason, relay
    carries the job, and ``job show`` lists both attempts."""
    admin, bob = pair
    src = tmp_path / "one.txt"
    src.write_bytes(b"one file\n")
    out = tmp_path / "out"
    async with asyncio.timeout(DEADLINE):
        with receiving(bob, "inbox2", out, "--accept", "relay") as recv:
            done = await send(admin, "inbox2", [src], ["direct", "relay"])
            assert done.ok, done.error
            assert await asyncio.to_thread(recv.wait, DEADLINE) == 0, recv.stderr
    assert (out / "one.txt").read_bytes() == b"one file\n"
    assert done.reasons == ["direct: not accepted here (accepted: relay)"]
    shown = json.loads(admin.run("job", "show", str(done.id), "--json").stdout)
    assert [(a["n"], a["manner"], a["verdict"], a["reason"]) for a in shown["attempts"]] == [
        (1, "direct", "refused", "direct: not accepted here (accepted: relay)"),
        (2, "relay", "ok", ""),
    ]
    text = admin.run("job", "show", str(done.id)).stdout
    assert "direct  refused" in text
    assert "direct: not accepted here (accepted: relay)" in text
    # bob's record has the same two attempts, seen from his side.
    theirs = json.loads(bob.run("job", "show", done.uuid, "--json").stdout)
    assert [(a["manner"], a["verdict"]) for a in theirs["attempts"]] == [
        ("direct", "refused"),
        ("relay", "ok"),
    ]


def test_jobs_that_cannot_start_say_why(pair: tuple[Client, Client], tmp_path: Path) -> None:
    """A manner lacking a requirement is not proposed; nobody serving the
    application, a receiver taking jobs from another account only, and an
    unknown requirement each end the command with the reason."""
    admin, bob = pair
    src = tmp_path / "r.txt"
    src.write_bytes(b"r")
    res = admin.run(
        "job",
        "send",
        "bob",
        "nobody-listens",
        str(src),
        "--manner",
        "ref",
        "--require",
        "bidirectional",
        check=False,
    )
    assert res.returncode == 7, res.stderr
    assert "no manner worked: ref: does not give bidirectional" in res.stderr
    nobody = admin.run(
        "job", "send", "bob", "nobody-listens", str(src), "--manner", "relay", check=False
    )
    assert nobody.returncode == 9, nobody.stderr
    assert "Unclosed" not in nobody.stderr  # the relay attachment was closed
    last = nobody.stderr.strip().splitlines()[-1]
    assert last.startswith(("freight: error: no_host:", "freight: error: no_app:")), last
    with receiving(bob, "only-carol", tmp_path / "out", "--from", "carol"):
        other = admin.run("job", "send", "bob", "only-carol", str(src), check=False)
        assert other.returncode == 3, other.stderr
        assert "do not take messages from this account" in other.stderr
    bad = admin.run("job", "send", "bob", "x", str(src), "--require", "teleport", check=False)
    assert bad.returncode == 2
    assert "unknown 'teleport'" in bad.stderr


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
        assert "relay refused: not accepted here (accepted: ref)\n" in res.stderr
        # The receiver hears the sender gave up; --once ends in failure.
        assert recv.wait(DEADLINE) == 7, recv.stderr
        assert "relay refused: not accepted here (accepted: ref)\n" in recv.stderr
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
                no_code = j.Propose(
                    job="34" * 16, attempt=1, manner="relay", offer={"code": 5}, blake3="00" * 32
                )
                assert (await refusal(j.encode(no_code))).reason == (
                    "relay: the proposal carries no code"
                )
                bad_code = j.Propose(
                    job="56" * 16,
                    attempt=1,
                    manner="relay",
                    offer={"code": "../x"},
                    blake3="0" * 64,
                )
                assert (await refusal(j.encode(bad_code))).reason == (
                    "relay: '../x' is not a code like 7-crossbow-gazelle-tulip"
                )
                # A reference to some other server (here: a service on the
                # receiver's own network) is not fetched without --accept-urls.
                for n, offer in enumerate(
                    (
                        {"url": "https://127.0.0.1:5432/", "size": 1, "blake3": "0" * 64},
                        {"url": "https://10.0.0.1/admin/reboot", "key": "11" * 32},
                    )
                ):
                    elsewhere = j.Propose(
                        job=f"7{n}" * 16, attempt=1, manner="ref", offer=offer, blake3="0" * 64
                    )
                    assert (await refusal(j.encode(elsewhere))).reason == (
                        "ref: the reference is not a hub link (this receiver takes other "
                        "URLs only with --accept-urls)"
                    )
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
                # Said by the receiver's refusal or the sender's own side, whichever came first.
                assert done.error.startswith("no manner worked: relay: ")
                assert "refusing '../escape.txt': it would leave the destination" in done.error
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


# --- the direct and by-reference manners, both ends in this process ---------------


@contextlib.asynccontextmanager
async def receiver(
    bob: Client, app: str, out: Path, accepts: list[str]
) -> AsyncIterator[asyncio.Queue[JobOutcome]]:
    """bob serving ``app`` in this process; outcomes land in the queue."""
    outcomes: asyncio.Queue[JobOutcome] = asyncio.Queue(16)
    ready = asyncio.Event()
    async with messaging.connect(config_dir=bob.config) as bus:

        async def serve() -> None:
            jobs = receive_jobs(
                bus,
                app,
                out,
                accepts=accepts,
                config=ClientConfig(bob.config),
                on_ready=ready.set,
            )
            async with contextlib.aclosing(jobs):
                async for done in jobs:
                    await outcomes.put(done)

        async with Supervisor("test-receiver") as tasks:
            serving = tasks.spawn(serve(), name="serve")
            await asyncio.wait(
                {serving, tasks.spawn(ready.wait(), name="ready")},
                return_when=asyncio.FIRST_COMPLETED,
            )
            assert ready.is_set(), serving.result()
            yield outcomes


async def send(admin: Client, app: str, paths: list[Path], manners: list[str]) -> JobOutcome:
    async with messaging.connect(config_dir=admin.config) as bus:
        return await send_job(
            bus, "bob", app, paths, manners=manners, config=ClientConfig(admin.config)
        )


def attempts(client: Client, jid: int) -> list[tuple[str, str, str, float]]:
    with JobStore(client.config) as store:
        return [(a.manner, a.verdict, a.reason, a.elapsed) for a in store.get(str(jid)).attempts]


async def test_real_direct_job_on_loopback(pair: tuple[Client, Client], tmp_path: Path) -> None:
    admin, bob = pair
    src = make_files(tmp_path)
    out = tmp_path / "out"
    async with asyncio.timeout(DEADLINE), receiver(bob, "d3", out, ["direct"]):
        done = await send(admin, "d3", [src], ["direct"])
    assert done.ok, done.error
    assert done.manner == "direct"
    assert tree(out / "parcel") == tree(src)


async def test_real_reference_job(pair: tuple[Client, Client], tmp_path: Path) -> None:
    admin, bob = pair
    src = make_files(tmp_path)
    out = tmp_path / "out"
    async with asyncio.timeout(DEADLINE), receiver(bob, "r1", out, ["ref"]):
        done = await send(admin, "r1", [src], ["ref"])
    assert done.ok, done.error
    assert done.manner == "ref"
    assert tree(out / "parcel") == tree(src)
