"""Commands to agents across a cluster's nodes (docs/cluster.md): an admin
on one node, the agent attached to another. With NATS (``--bus``) the
agent's node hears of the command at once and the admin's node of its
result; without, each node's heartbeat finds them in the database. A
stranger on the bus is ignored; a node that cannot reach NATS does not
start. Real nodes, a real nats-server started here, real agents."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentsupport import Agent, agent_rows
from tests.integration.test_cluster import Cluster, cluster  # noqa: F401 - a fixture
from tests.integration.test_faults import hub_events as events_of
from tests.integration.test_postgres import pg_database  # noqa: F401 - a fixture
from tests.support import (
    ADMIN_PASSWORD,
    Client,
    Hub,
    free_port,
    random_file,
    same_bytes,
    wait_until,
)

MiB = 1024 * 1024
USER, PASSWORD = "freight", "bus-secret-7"


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server of the test's own, with a user and password."""
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("nats-server is not installed (Debian: nats-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "--user", USER, "--pass", PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip("nats-server did not start")
                time.sleep(0.05)
        yield f"nats://{USER}:{PASSWORD}@127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def send_file(admin: Client, agent: str, path: Path) -> dict[str, object]:
    res = admin.run(
        "agents", "cmd", agent, "send_file", "--arg", f"path={path}", "--wait", "60",
        check=False, timeout=90,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


@pytest.mark.parametrize("with_bus", [True, False], ids=["nats", "database"])
def test_a_command_queued_on_one_node_reaches_an_agent_on_another(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
    request: pytest.FixtureRequest,
    with_bus: bool,
) -> None:
    # With the bus the heartbeat is slow (30 s): only the bus can be quick.
    bus = ["--bus", request.getfixturevalue("nats_url")] if with_bus else []
    beat = "30" if with_bus else "0.5"
    b = cluster.start("b", *bus, beat=beat)
    admin = Client(tmp_path / "admin", b)
    admin.login()  # while b is alone: it knows node b only
    a = cluster.start("a", *bus, beat=beat)
    root = tmp_path / "root"
    root.mkdir()
    lab = Agent(admin, a, "lab", tmp_path / "lab", root)  # enrolled at node a alone
    lab.start()  # waits until node b shows it online (attached to a)
    assert agent_rows(admin)["lab"]["node"] == "a"
    src = random_file(root / "report.bin", 3 * MiB + 1, seed=17)
    started = time.monotonic()
    row = send_file(admin, "lab", src)
    took = time.monotonic() - started
    assert row["state"] == "done", row
    admin.run("pull", "report.bin", str(tmp_path / "got.bin"))
    assert same_bytes(src, tmp_path / "got.bin")
    if with_bus:
        # Queued on b, run by the agent on a, its end heard on b: all well
        # within one 30-s heartbeat, so by the bus.
        assert took < 20, f"{took:.1f} s: the notices did not cross"
    lab.kill()


def test_a_stranger_on_the_bus_is_ignored_and_logged(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
    nats_url: str,
    pg_database: str,  # noqa: F811
) -> None:
    a = cluster.start("a", "--bus", nats_url)

    async def forge() -> str:
        import asyncpg
        import nats

        dsn = pg_database.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            cluster_id = await conn.fetchval("SELECT value FROM settings WHERE key='cluster_id'")
        finally:
            await conn.close()
        nc = await nats.connect(nats_url)
        notice = {"topic": "commands", "from": "x", "ts": time.time(), "body": {"agent": 1}}
        text = json.dumps(notice).encode()
        await nc.publish(f"freight.{cluster_id}.commands", b"0" * 64 + b"." + text)
        await nc.publish(f"freight.{cluster_id}.settled", b"no signature at all")
        await nc.publish(f"freight.{cluster_id}.commands", b"x" * 10_000)
        await nc.flush()
        await nc.close()
        return str(cluster_id)

    asyncio.run(forge())
    wait_until(lambda: len(events_of(a, "bus_notice_refused")) == 3, 10, "three refusals")
    reasons = sorted(e["reason"] for e in events_of(a, "bus_notice_refused"))
    assert reasons == ["bad signature", "bad signature", "too large"]
    # The node still serves.
    c = Client(tmp_path / "c", a)
    c.login()
    assert c.run("ls").returncode == 0


def test_a_node_that_cannot_reach_nats_does_not_start(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
    nats_url: str,
) -> None:
    wrong = nats_url.replace(PASSWORD, "not-the-password")
    hub = Hub(cluster.data, extra=["--database-url", cluster.database, "--bus", wrong])
    started = time.monotonic()
    res = hub.run_to_exit()
    assert res.returncode != 0
    assert "cannot reach NATS at 127.0.0.1:" in res.stderr
    assert "Authorization Violation" in res.stderr
    # Refused credentials are final: said at once, not after START_TIMEOUT (15 s) of retries.
    assert time.monotonic() - started < 10
    assert "not-the-password" not in res.stderr  # credentials never shown


def test_failed_logins_count_on_every_node(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
    nats_url: str,
) -> None:
    """A guesser spreading its tries over the nodes gets no more of them:
    five failed logins for one account, three on a and two on b, lock it
    on both (each node alone saw fewer than five)."""
    nodes = [cluster.start(name, "--bus", nats_url) for name in ("a", "b")]
    guesser = Client(tmp_path / "guesser", nodes[0])

    def login(node: Hub, password: str) -> subprocess.CompletedProcess[str]:
        return guesser.run(
            "login", node.url, "--user", "admin", "--password-stdin",
            "--fingerprint", node.fingerprint, input=password + "\n", check=False,
        )  # fmt: skip

    for node in (nodes[0], nodes[0], nodes[0], nodes[1], nodes[1]):
        res = login(node, "wrong guess")
        assert res.returncode != 0 and "too many failed logins" not in res.stderr, res.stderr
    for node in nodes:  # the right password too: the account is locked everywhere
        res = login(node, ADMIN_PASSWORD)
        assert res.returncode != 0, node.url
        assert "too many failed logins" in res.stderr, res.stderr
