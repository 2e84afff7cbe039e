"""Stored files in an S3-compatible bucket (``freight hub --blobs s3://…``):
real hub processes against moto's S3 server on loopback. The data folder
then holds no stored file; pushes, folders, links, agents' file commands
and pulls go through the bucket; a push resumes on another node (its own
data folder) from the segments its first node wrote; content nothing names
is swept; a bucket that cannot be reached stops the hub from starting."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from tests.agentsupport import Agent
from tests.authsupport import Rest, token_of
from tests.collectsupport import add_policy, enroll_agents, wait_collected, wait_online
from tests.integration.test_faults import hub_events as events_of
from tests.integration.test_postgres import pg_database  # noqa: F401 - a fixture
from tests.s3support import S3Server, s3  # noqa: F401 - a fixture
from tests.support import (
    Client,
    Hub,
    make_tree,
    random_file,
    same_bytes,
    wait_until,
)

MiB = 1024 * 1024
CKPT = 2 * MiB


def blobs_hub(
    data: Path,
    s3: S3Server,  # noqa: F811
    bucket: str,
    *extra: str,
    ckpt: int = CKPT,
) -> Hub:
    return Hub(
        data,
        extra=[
            "--blobs", f"s3://{bucket}/site", "--s3-endpoint", s3.url,
            "--blobs-grace", "1", "--checkpoint-interval", str(ckpt), *extra,
        ],
    )  # fmt: skip


def digest(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bucket_hub(
    tmp_path_factory: pytest.TempPathFactory,
    s3: S3Server,  # noqa: F811
) -> Iterator[tuple[Hub, str]]:
    bucket = s3.bucket("freight-one")
    hub = blobs_hub(tmp_path_factory.mktemp("blobs-hub"), s3, bucket).start()
    try:
        yield hub, bucket
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, bucket_hub: tuple[Hub, str]) -> Client:
    c = Client(tmp_path_factory.mktemp("blobs-admin"), bucket_hub[0])
    c.login()
    return c


def stored_files(hub: Hub) -> list[Path]:
    return [p for p in (hub.data / "files").rglob("*") if p.is_file()]


def test_a_push_lands_in_the_bucket_by_digest_and_pulls_back_identical(
    tmp_path: Path,
    bucket_hub: tuple[Hub, str],
    admin: Client,
    s3: S3Server,  # noqa: F811
) -> None:
    hub, bucket = bucket_hub
    src = random_file(tmp_path / "big.bin", 7 * MiB + 13, seed=41)
    admin.run("push", str(src), "--as", "big.bin")
    keys = s3.keys(bucket, "site/")
    assert keys[f"site/content/{digest(src)}"] == src.stat().st_size
    assert not [k for k in keys if k.startswith("site/partial/")]  # segments removed
    assert stored_files(hub) == [] and hub.partials() == []
    back = tmp_path / "back.bin"
    admin.run("pull", "big.bin", str(back))
    assert same_bytes(src, back)
    # A share link reads the content from the bucket as well.
    link = admin.run("share", "big.bin").stdout.strip()
    out = tmp_path / "fetched"
    out.mkdir()
    admin.run("fetch", link, "-o", str(out))
    assert same_bytes(src, out / "big.bin")


def test_a_folder_of_small_and_large_files_round_trips_through_the_bucket(
    tmp_path: Path,
    bucket_hub: tuple[Hub, str],
    admin: Client,
    s3: S3Server,  # noqa: F811
) -> None:
    hub, bucket = bucket_hub
    tree = make_tree(tmp_path / "tree", seed=42)
    admin.run("push", str(tree), "--quiet")
    assert stored_files(hub) == []
    files = [p for p in tree.rglob("*") if p.is_file()]
    held = s3.keys(bucket, "site/content/")
    assert {f"site/content/{digest(f)}" for f in files} <= set(held)
    back = tmp_path / "back"
    admin.run("pull", "tree/", str(back), "--parallel", "2", "--quiet")
    got = {p.relative_to(back) for p in back.rglob("*") if p.is_file()}
    assert got == {p.relative_to(tree) for p in files}
    for f in files:
        assert same_bytes(f, back / f.relative_to(tree)), f


def test_content_nothing_names_is_swept_and_shared_content_stays(
    tmp_path: Path,
    bucket_hub: tuple[Hub, str],
    admin: Client,
    s3: S3Server,  # noqa: F811
) -> None:
    _, bucket = bucket_hub
    once = random_file(tmp_path / "once.bin", 300 * 1024, seed=43)
    twice = random_file(tmp_path / "twice.bin", 300 * 1024, seed=44)
    admin.run("push", str(once), "--as", "sweep/once.bin")
    admin.run("push", str(twice), "--as", "sweep/a.bin")
    admin.run("push", str(twice), "--as", "sweep/b.bin")  # the same bytes: held once
    gone, kept = f"site/content/{digest(once)}", f"site/content/{digest(twice)}"
    assert {gone, kept} <= set(s3.keys(bucket, "site/content/"))
    admin.run("rm", "sweep/once.bin")
    admin.run("rm", "sweep/a.bin")
    wait_until(lambda: gone not in s3.keys(bucket, "site/content/"), 40, "the sweep")
    assert kept in s3.keys(bucket, "site/content/")  # sweep/b.bin still names it
    back = tmp_path / "b.bin"
    admin.run("pull", "sweep/b.bin", str(back))
    assert same_bytes(twice, back)


def test_agent_file_commands_move_records_not_bytes(
    tmp_path: Path,
    bucket_hub: tuple[Hub, str],
    admin: Client,
    s3: S3Server,  # noqa: F811
) -> None:
    hub, bucket = bucket_hub
    root = tmp_path / "root"
    (root / "outbox").mkdir(parents=True)
    lab = Agent(admin, hub, "lab", tmp_path / "lab", root)
    lab.start()
    try:
        sent = random_file(root / "outbox" / "run.bin", 3 * MiB + 5, seed=45)
        res = admin.run("agents", "cmd", "lab", "send_file", "--arg", f"path={sent}",
                        "--arg", "name=from-lab/run.bin", "--wait", "60")  # fmt: skip
        assert json.loads(res.stdout)["state"] == "done"
        back = tmp_path / "run.bin"
        admin.run("pull", "from-lab/run.bin", str(back))
        assert same_bytes(sent, back)
        res = admin.run("agents", "cmd", "lab", "receive_file", "--arg", "name=from-lab/run.bin",
                        "--arg", f"dest={root}/inbox/", "--wait", "60")  # fmt: skip
        assert json.loads(res.stdout)["state"] == "done"
        assert same_bytes(sent, root / "inbox" / "run.bin")
    finally:
        lab.kill()
    assert stored_files(hub) == []
    assert f"site/content/{digest(sent)}" in s3.keys(bucket, "site/content/")


def test_a_push_resumes_on_another_node_from_the_bucket_after_sigkill(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
    pg_database: str,  # noqa: F811
) -> None:
    """Two nodes with their own data folders (nothing shared but the
    database, the bucket and the certificate): the node receiving a push is
    killed; the other rebuilds the partial from the segments and goes on.
    Segments of 5 MiB (the least part S3 copies; checkpoints every 1 MiB
    here): the content is then made of both nodes' segments, copied inside
    the store, and the last bytes."""
    bucket = s3.bucket("freight-two")
    common = ["--database-url", pg_database, "--node-beat", "0.5"]
    a = blobs_hub(tmp_path / "a", s3, bucket, "--node", "a", *common).start()
    tls = a.data / "tls"
    b = blobs_hub(tmp_path / "b", s3, bucket, "--node", "b", *common,
                  "--cert", str(tls / "cert.pem"), "--key", str(tls / "key.pem"))  # fmt: skip
    nodes = {"a": a, "b": b.start()}
    try:
        client = Client(tmp_path / "c", a)
        client.login(f"{a.url},{b.url}")
        size = 32 * MiB + 7
        src = random_file(tmp_path / "big.bin", size, seed=46)
        proc = client.popen("push", str(src), "--as", "big.bin", "--limit", "8M", "--json")
        try:

            def receiving() -> list[str]:
                return [n for n, h in nodes.items() if '"stream_start"' in h.log()]

            wait_until(lambda: len(receiving()) == 1, 30, "a node receiving the push")
            (victim,) = receiving()
            survivor = "b" if victim == "a" else "a"
            segments = lambda: [k for k in s3.keys(bucket, "site/partial/")]  # noqa: E731
            wait_until(lambda: len(segments()) >= 2, 30, "two segments in the bucket")
            nodes[victim].kill()
            in_bucket = max(int(k.rsplit("-", 1)[-1].split(".")[0]) for k in segments())
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        # The survivor had no partial of its own: it resumed from the bucket's.
        (resumed,) = events_of(nodes[survivor], "stream_resume")
        assert resumed["checkpoint"] > 0 and in_bucket - resumed["checkpoint"] <= 5 * MiB
        row = json.loads(out)["pushed"][0]
        assert row["restarted"] is False and row["wire_bytes"] <= size + 10 * MiB + MiB
        back = tmp_path / "back.bin"
        client.run("pull", "big.bin", str(back))
        assert same_bytes(src, back)
        assert s3.keys(bucket, "site/partial/") == {}
        assert nodes[survivor].partials() == []
        head = s3.client.head_object(Bucket=bucket, Key=f"site/content/{digest(src)}")
        # Six segments (from both nodes) copied inside the store, the last 2 MiB sent.
        assert head["ETag"].endswith('-7"'), head["ETag"]
    finally:
        for h in nodes.values():
            h.stop()


def test_a_hub_whose_bucket_cannot_be_reached_refuses_to_start(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    missing = blobs_hub(tmp_path / "d1", s3, "no-such-bucket").run_to_exit()
    assert missing.returncode != 0
    assert "cannot reach its bucket s3://no-such-bucket/site/" in missing.stderr
    assert "--s3-endpoint" in missing.stderr  # the hint: what to check
    closed = Hub(tmp_path / "d2", extra=["--blobs", "s3://freight-x", "--s3-endpoint",
                                         "http://127.0.0.1:9"]).run_to_exit()  # fmt: skip
    assert closed.returncode != 0 and "cannot reach its bucket s3://freight-x/" in closed.stderr


@pytest.mark.parametrize(
    "value",
    ["https://bucket", "s3://UPPER", "s3://b", "s3://bucket/../x", "s3://bucket?endpoint=x"],
)
def test_a_bad_blobs_url_is_refused_with_the_expected_form(value: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "freight", "hub", "--blobs", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "s3://BUCKET" in res.stderr or "bad prefix" in res.stderr


def test_content_lost_from_the_bucket_fails_the_pull_with_a_clear_error(
    tmp_path: Path,
    bucket_hub: tuple[Hub, str],
    admin: Client,
    s3: S3Server,  # noqa: F811
) -> None:
    """Content removed behind the hub's back (by hand, a lifecycle rule):
    the pull stops with the hub's storage error, it does not hang."""
    _, bucket = bucket_hub
    src = random_file(tmp_path / "lost.bin", 2 * MiB + 1, seed=47)
    admin.run("push", str(src), "--as", "lost.bin")
    s3.client.delete_object(Bucket=bucket, Key=f"site/content/{digest(src)}")
    res = admin.run("pull", "lost.bin", str(tmp_path / "back.bin"), check=False, timeout=120)
    assert res.returncode != 0
    assert "the hub cannot read from its bucket" in res.stderr, res.stderr
    assert "the other side's storage failed" in res.stderr
    assert not (tmp_path / "back.bin").exists()


def test_collected_content_lives_in_the_bucket_and_a_get_resumes(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    """An agent's files collected by a hub with a bucket: stored once each
    as ``content/<digest>``, nothing in the data folder's ``cas/``, and
    ``freight collected get`` (a range for a partial it holds) reads them
    back."""
    bucket = s3.bucket("freight-collect")
    hub = blobs_hub(tmp_path / "hub", s3, bucket).start()
    try:
        admin = Client(tmp_path / "admin", hub)
        admin.login()
        (agent,) = enroll_agents(admin, hub, tmp_path, ["lab-c"])
        docs = agent.root / "docs"
        docs.mkdir()
        one = random_file(docs / "one.bin", 3 * MiB + 1, seed=48)
        random_file(docs / "two.bin", 70_000, seed=49)
        (docs / "copy.bin").write_bytes(one.read_bytes())  # the same content: held once
        add_policy(admin, "docs", include=["docs/**"])
        agent.start()
        try:
            wait_online(admin, [agent])
            done = wait_collected(admin, 2, 60, [agent])
        finally:
            agent.kill()
        assert done["unique_files"] == 2
        held = s3.keys(bucket, "site/content/")
        assert f"site/content/{digest(one)}" in held
        assert not [p for p in (hub.data / "cas").rglob("*") if p.is_file()]
        out = tmp_path / "one.bin"
        part = tmp_path / f"one.bin.{digest(one)[:16]}.freight-part"
        part.write_bytes(one.read_bytes()[: MiB + 5])  # an earlier try's first part
        admin.run("collected", "get", digest(one), str(out))
        assert same_bytes(one, out) and not part.exists()
        with Rest(hub) as r:  # the range asked for, and only it
            auth = {"Authorization": f"Bearer {token_of(admin)}", "Range": "bytes=10-19"}
            r.conn.request("GET", f"/v1/collected/{digest(one)}", headers=auth)
            resp = r.conn.getresponse()
            assert (resp.status, resp.read()) == (206, one.read_bytes()[10:20])
            assert resp.getheader("Content-Range") == f"bytes 10-19/{one.stat().st_size}"
    finally:
        hub.stop()


@contextlib.contextmanager
def own_store(tmp_path: Path, bucket: str) -> Iterator[tuple[S3Server, Hub, Client]]:
    """A store of the test's own (moto, which it may stop and start), a
    hub on it and a client logged in."""
    own = S3Server()
    try:
        own.bucket(bucket)
        hub = blobs_hub(tmp_path / "hub", own, bucket).start()
        try:
            client = Client(tmp_path / "c", hub)
            client.login()
            yield own, hub, client
        finally:
            hub.stop()
    finally:
        own.stop()


def outage(
    own: S3Server,
    bucket: str,
    proc: subprocess.Popen[str],
    stopped: Callable[[], bool],
    ready: Callable[[], bool] | None = None,
) -> tuple[str, str]:
    """Once ``ready`` holds, stop the store (without ``ready``: it is down
    already); once the hub shows ``stopped``, start it again empty with
    the bucket; then wait for the client's command: its output and errors."""
    try:
        if ready is not None:
            wait_until(ready, 30, "the transfer under way")
            own.stop()
        wait_until(stopped, 60, "the hub letting the transfer go")
        own.restart()
        own.bucket(bucket)
        return proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_push_waits_out_an_outage_of_its_bucket_and_completes(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811 - (its credentials)
) -> None:
    """The store goes away mid-push (its own moto, stopped, then started
    empty): the hub lets the push go instead of failing it, keeps the
    partial, and the client resumes until the store answers again."""
    bucket = "freight-outage"
    with own_store(tmp_path, bucket) as (own, hub, client):
        src = random_file(tmp_path / "big.bin", 16 * MiB + 3, seed=50)
        proc = client.popen("push", str(src), "--as", "big.bin", "--limit", "4M", "--json")
        out, err = outage(
            own,
            bucket,
            proc,
            stopped=lambda: '"stream_stopped"' in hub.log(),
            ready=lambda: bool(own.keys(bucket, "site/partial/")),  # a first segment
        )
        assert proc.returncode == 0, err
        row = json.loads(out)["pushed"][0]
        assert row["attempts"] >= 2 and row["restarted"] is False
        assert "node_unavailable" in hub.log()  # let go, not failed
        assert f"site/content/{digest(src)}" in own.keys(bucket, "site/content/")
        back = tmp_path / "back.bin"
        client.run("pull", "big.bin", str(back))
        assert same_bytes(src, back)


def test_a_folder_pushed_while_the_bucket_is_away_goes_in_once_it_is_back(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811 - (its credentials)
) -> None:
    """Batches of small files refused while the store does not answer are
    answered node_unavailable, and the client sends them again."""
    bucket = "freight-outage-dir"
    with own_store(tmp_path, bucket) as (own, hub, client):
        tree = tmp_path / "tree"
        for n in range(40):
            (tree / f"d{n % 4}").mkdir(parents=True, exist_ok=True)
            random_file(tree / f"d{n % 4}" / f"f{n}.bin", 3000 + n, seed=60 + n)
        own.stop()
        proc = client.popen("push", str(tree), "--json")
        out, err = outage(own, bucket, proc, stopped=lambda: "node_unavailable" in hub.log())
        assert proc.returncode == 0, err
        assert len(json.loads(out)["pushed"]) == 40
        back = tmp_path / "back"
        client.run("pull", "tree/", str(back), "--quiet")
        for f in (p for p in tree.rglob("*") if p.is_file()):
            assert same_bytes(f, back / f.relative_to(tree)), f
