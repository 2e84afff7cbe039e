"""Several hub nodes on one PostgreSQL database and one data folder
(docs/cluster.md): clients keep the nodes' addresses, move on when a node
dies or is drained, and a push resumes on another node from its checkpoint.
Every node is a real `freight hub` process; skipped without PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentsupport import AgentProc, agent_rows, wait_online
from tests.consolesupport import Browser
from tests.faultproxy import FaultProxy
from tests.integration.test_faults import hub_events as events_of
from tests.integration.test_postgres import (
    PG_HOST,
    PG_PORT,
    pg_database,  # noqa: F401 - a fixture
)
from tests.relaysupport import fast
from tests.support import Client, Hub, as_from_a_terminal, random_file, same_bytes, wait_until

MiB = 1024 * 1024
CKPT = 2 * MiB  # the nodes' checkpoint interval here
OVERHEAD = 1 * MiB  # frame headers, tags, handshakes: far below this here
BEAT = "0.5"  # seconds between heartbeats: a dead node's pushes lapse in 1.5 s


class Cluster:
    def __init__(self, tmp: Path, database: str) -> None:
        self.tmp = tmp
        self.database = database
        self.data = tmp / "shared"  # the folder every node shares
        self.nodes: dict[str, Hub] = {}

    def start(self, name: str, *extra: str, beat: str = BEAT) -> Hub:
        hub = Hub(
            self.data,
            extra=[
                "--database-url",
                self.database,
                "--node",
                name,
                "--node-beat",
                beat,
                "--checkpoint-interval",
                str(CKPT),
                *extra,
            ],
        ).start()
        self.nodes[name] = hub
        return hub

    @property
    def urls(self) -> str:
        return ",".join(h.url for h in self.nodes.values())

    def client(self, name: str = "c") -> Client:
        first = next(iter(self.nodes.values()))
        c = Client(self.tmp / name, first)
        c.login(self.urls)
        return c

    def stop(self) -> None:
        for hub in self.nodes.values():
            hub.stop()

    def receiver(self, checkpoints: int, timeout: float = 30) -> tuple[str, str]:
        """The name of the one node receiving an upload, once its partial
        file holds ``checkpoints`` checkpoints, and the other node's name."""
        wait_until(lambda: len(self.receiving()) == 1, timeout, "a node receiving the upload")
        (victim,) = self.receiving()
        hub = self.nodes[victim]
        what = f"{checkpoints} checkpoints at the node"
        wait_until(lambda: hub.partial_size() >= checkpoints * CKPT, timeout, what)
        return victim, next(name for name in self.nodes if name != victim)

    def enroll(self, admin: Client, client: Client, name: str, root: Path) -> None:
        """Enrol ``client``'s agent ``name`` (files under ``root``) with
        every node's address."""
        token = json.loads(
            admin.run("agents", "token", "--name", name, "--ttl", "10m", "--json").stdout
        )["token"]
        first = next(iter(self.nodes.values()))
        client.run(
            "agent", "enroll", self.urls, token,
            "--fingerprint", first.fingerprint, "--root", str(root),
        )  # fmt: skip

    def receiving(self) -> list[str]:
        """The nodes whose log shows a push starting or resuming."""
        return [
            name
            for name, hub in self.nodes.items()
            if any('"stream_start"' in ln or '"stream_resume"' in ln for ln in hub.lines)
        ]


@pytest.fixture
def cluster(tmp_path: Path, pg_database: str) -> Iterator[Cluster]:  # noqa: F811
    c = Cluster(tmp_path, pg_database)
    try:
        yield c
    finally:
        c.stop()


async def console_overview(hub: Hub) -> str:
    async with Browser(hub) as b:
        await b.login()
        return await b.page("/console/dashboard/overview")


def admin_nodes(client: Client) -> dict[str, dict[str, Any]]:
    rows = json.loads(client.run("admin", "nodes", "--json").stdout)
    return {r["name"]: r for r in rows}


def test_a_push_survives_sigkill_of_its_node_and_resumes_on_another(
    tmp_path: Path, cluster: Cluster
) -> None:
    cluster.start("a")
    cluster.start("b")
    client = cluster.client()
    assert set(admin_nodes(client)) == {"a", "b"}
    size = 48 * MiB
    src = random_file(tmp_path / "big.bin", size, seed=15)
    proc = client.popen("push", str(src), "--as", "big.bin", "--limit", "8M", "--json")
    try:
        victim, survivor = cluster.receiver(3)
        hub = cluster.nodes[victim]
        hub.kill()
        at_kill = hub.partial_size()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    row = json.loads(out)["pushed"][0]
    # Resumed on the other node from a checkpoint, not from zero: at most one
    # checkpoint interval of what had arrived is sent again.
    (resumed,) = events_of(cluster.nodes[survivor], "stream_resume")
    assert resumed["node"] == survivor
    assert 0 < resumed["checkpoint"] <= at_kill
    assert at_kill - resumed["checkpoint"] <= CKPT
    assert row["attempts"] >= 2 and row["restarted"] is False
    assert row["wire_bytes"] <= size + CKPT + OVERHEAD
    back = tmp_path / "back.bin"
    client.run("pull", "big.bin", str(back))
    assert same_bytes(src, back)
    assert cluster.nodes[survivor].partials() == []
    # The dead node is shown down once its heartbeats stop.
    wait_until(lambda: admin_nodes(client)[victim]["state"] == "down", 10, "the node shown down")
    assert admin_nodes(client)[survivor]["state"] == "up"


def test_a_drained_node_refuses_new_work_and_its_clients_use_another(
    tmp_path: Path, cluster: Cluster
) -> None:
    a = cluster.start("a")
    only_a = Client(tmp_path / "only-a", a)  # logged in while a was alone: knows a only
    only_a.login()
    cluster.start("b")
    client = cluster.client()
    src = random_file(tmp_path / "small.bin", 300_000, seed=16)
    client.run("push", str(src), "--quiet")
    client.run("admin", "drain", "a")
    wait_until(lambda: admin_nodes(client)["a"]["state"] == "draining", 10, "a draining")
    # The console of node b shows the cluster as it is.
    overview = asyncio.run(console_overview(cluster.nodes["b"]))
    assert 'id="nodes-up">1 / 2 up<' in overview
    assert "a draining (" in overview and "b up (" in overview and ", this one" in overview
    # A client of the cluster goes on working (on b, whichever it preferred).
    for _ in range(3):
        listing = json.loads(client.run("ls", "--json").stdout)
        assert [f["name"] for f in listing] == ["small.bin"]
    back = tmp_path / "back.bin"
    client.run("pull", "small.bin", str(back))
    assert same_bytes(src, back)
    # One that knows only node a is told why, and what to do.
    res = only_a.run("ls", check=False)
    assert res.returncode == 6, res.stderr
    assert "node a is being drained; use another node" in res.stderr
    assert "freight login https://A,https://B" in res.stderr
    kinds = [
        (e["kind"], e["actor"], e["detail"].get("target"), e["detail"].get("node"))
        for e in json.loads(client.run("admin", "events", "--json").stdout)
        if e["kind"].startswith("node_")
    ]
    assert any(k[:3] == ("node_drain", "admin", "a") and k[3] in "ab" for k in kinds)
    assert ("node_draining", "hub", "a", "a") in kinds
    client.run("admin", "drain", "a", "--undo")
    wait_until(lambda: only_a.run("ls", check=False).returncode == 0, 10, "a serving again")


def test_a_second_node_with_a_running_nodes_name_refuses_to_start(
    tmp_path: Path, cluster: Cluster
) -> None:
    cluster.start("a")
    twin = Hub(cluster.data, extra=["--database-url", cluster.database, "--node", "a"])
    res = twin.run_to_exit()
    assert res.returncode != 0
    assert "node 'a' already runs" in res.stderr
    assert "freight hub --node NAME" in res.stderr


def test_login_refuses_nodes_that_serve_another_certificate(
    tmp_path: Path, cluster: Cluster, hubs: Callable[..., Hub]
) -> None:
    a = cluster.start("a")
    stranger = hubs()  # its own data folder: its own certificate
    c = Client(tmp_path / "c", a)
    res = c.run(
        "login",
        f"{a.url},{stranger.url}",
        "--user",
        "admin",
        "--password-stdin",
        "--fingerprint",
        a.fingerprint,
        input="x\n",
        check=False,
    )
    assert res.returncode == 4, res.stderr
    assert f"presents {stranger.fingerprint}, not {a.fingerprint}" in res.stderr


def test_a_node_cut_from_its_database_refuses_to_serve_until_it_is_back(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    proxy = FaultProxy(PG_PORT, PG_HOST).start()
    try:
        cluster = Cluster(tmp_path, pg_database.replace(f":{PG_PORT}/", f":{proxy.port}/"))
        try:
            hub = cluster.start("a")
            client = cluster.client()
            client.run("ls")
            proxy.hold()  # new database connections wait, open ones freeze
            proxy.stall()
            wait_until(lambda: events_of(hub, "node_not_serving"), 30, "the node to notice")
            res = client.run("ls", check=False, timeout=60)
            assert res.returncode == 6, res.stderr
            assert "node a cannot reach the database" in res.stderr
            assert "try another node" in res.stderr
            proxy.release()
            wait_until(lambda: events_of(hub, "node_serving_again"), 30, "the node to recover")
            assert client.run("ls", check=False, timeout=60).returncode == 0
        finally:
            cluster.stop()
    finally:
        proxy.close()


def test_the_documented_cluster_command_starts_three_nodes_and_stops_them(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    """``make cluster`` runs bench/cluster.py: three nodes, one login line."""
    proc = subprocess.Popen(
        [sys.executable, "bench/cluster.py", "--first-port", "0", "--data", str(tmp_path / "d")],
        env={**os.environ, "FREIGHT_CLUSTER_DB": pg_database, "FREIGHT_ADMIN_PASSWORD": "pw-1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).parents[2],
        preexec_fn=as_from_a_terminal,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:  # bounded: the script gives up on a node after 60 s
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        login = next(ln.split() for ln in lines if "freight login" in ln)
        assert login[:2] == ["freight", "login"] and login[2].count(",") == 2
        c = Client(tmp_path / "c", Hub(tmp_path / "d"))
        c.run(*login[1:], "--password-stdin", input="pw-1\n")
        nodes = admin_nodes(c)
        assert sorted(nodes) == ["a", "b", "c"]
        assert {n["state"] for n in nodes.values()} == {"up"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        # Every node stopped with it: none answers any more.
        assert c.run("ls", check=False).returncode == 6
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_an_agent_moves_to_another_node_when_its_node_dies(
    tmp_path: Path, cluster: Cluster
) -> None:
    cluster.start("a")
    cluster.start("b")
    admin = cluster.client("admin")
    root = tmp_path / "root"
    root.mkdir()
    lab = fast(Client(tmp_path / "lab", cluster.nodes["a"]))
    cluster.enroll(admin, lab, "lab", root)
    with AgentProc(lab, tmp_path / "lab.log") as proc:
        wait_online(admin, "lab", proc=proc)
        first = agent_rows(admin)["lab"]["node"]
        other = "b" if first == "a" else "a"
        cluster.nodes[first].kill()
        wait_until(
            lambda: agent_rows(admin)["lab"].get("node") == other, 30, "the agent on the other node"
        )
        assert agent_rows(admin)["lab"]["online"] is True
        # Its commands still reach it.
        res = admin.run("agents", "cmd", "lab", "ping", "--wait", "30")
        assert json.loads(res.stdout)["state"] == "done"


def test_a_frozen_node_loses_its_push_to_another_and_writes_nothing_more(
    tmp_path: Path, cluster: Cluster
) -> None:
    """SIGSTOP, not SIGKILL: the node's sockets stay open and it wakes up
    later with a push it no longer holds. Another node must take the push
    over, and the woken node must not write into the file again."""
    cluster.start("a")
    cluster.start("b")
    client = cluster.client()
    client.env["FREIGHT_STALL_TIMEOUT"] = "3"
    client.env["FREIGHT_LOG"] = "debug"  # on stderr: what the push did, should the takeover fail
    size = 32 * MiB
    src = random_file(tmp_path / "big.bin", size, seed=18)
    proc = client.popen("push", str(src), "--as", "big.bin", "--limit", "4M", "--json")
    try:
        victim, survivor = cluster.receiver(2)
        frozen = cluster.nodes[victim]
        assert frozen.proc is not None
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: events_of(cluster.nodes[survivor], "stream_resume"), 60, "the takeover"
            )
        except AssertionError:
            proc.kill()
            out, err = proc.communicate()  # its notices (JSON) and its log
            raise AssertionError(
                f"no takeover by {survivor}; the push said:\n{out[-3000:]}\n"
                f"the push's log:\n{err[-6000:]}\n"
                f"{survivor}'s log:\n{cluster.nodes[survivor].log()[-3000:]}"
            ) from None
        frozen.proc.send_signal(signal.SIGCONT)  # it wakes up holding nothing
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if frozen.proc is not None and frozen.proc.poll() is None:
            frozen.proc.send_signal(signal.SIGCONT)
    assert proc.returncode == 0, err
    back = tmp_path / "back.bin"
    client.run("pull", "big.bin", str(back))
    assert same_bytes(src, back)
    # The woken node published nothing and recorded no checkpoint of it.
    assert not events_of(frozen, "stream_end")
