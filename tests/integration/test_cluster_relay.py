"""Relayed connections whose two ends attach to different nodes of a cluster
(docs/cluster.md "Relayed connections"): the node that a dial, a claim or a
rejoin reaches sends it to the node holding the other end (``elsewhere``),
the client attaches there, and both ends meet on one node. Every node is a
real `freight hub` process on one PostgreSQL database; skipped without it."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.request
from pathlib import Path

import pytest

from freight.client.relay import Connection
from freight.client.session import canonical_url, parse_hub_url
from freight.errors import Elsewhere
from tests.agentsupport import AgentProc, agent_rows, wait_online
from tests.integration.test_cluster import Cluster, cluster  # noqa: F401 - a fixture
from tests.integration.test_faults import hub_events as events_of
from tests.integration.test_postgres import pg_database  # noqa: F401 - a fixture
from tests.integration.test_relay import receive, sender_result, start_send
from tests.relaysupport import BOB_PASSWORD, Proc, code_pair, fast, sdk
from tests.support import Client, Hub, random_file, same_bytes, until, wait_until

MiB = 1024 * 1024


def knowing_one_node(group: Cluster, node: str, name: str, user: str = "admin") -> Client:
    """A client that knows node ``node`` alone (as one that logged in there
    before the cluster grew): any move to another node is the hub's doing."""
    c = fast(Client(group.tmp / name, group.nodes[node]))
    if user == "admin":
        c.login(group.nodes[node].url)
    else:
        c.login(group.nodes[node].url, user=user, password=BOB_PASSWORD)
    path = c.config / "config.json"
    cfg = json.loads(path.read_text())
    url = canonical_url(parse_hub_url(group.nodes[node].url))
    login = cfg["hubs"][url]
    login.pop("nodes", None)
    cfg["hub"], cfg["hubs"] = url, {url: login}
    path.write_text(json.dumps(cfg))
    return c


def opened_on(group: Cluster) -> list[str]:
    """The nodes whose log shows a relayed connection opening."""
    return [name for name, hub in group.nodes.items() if events_of(hub, "connection_open")]


def metrics(hub: Hub) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"{hub.url}/metrics", context=ctx, timeout=10) as resp:
        return str(resp.read().decode())


def add_bob(group: Cluster) -> None:
    admin = knowing_one_node(group, "a", "admin-setup")
    admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")


def knowing_every_node(group: Cluster, tmp: Path) -> tuple[Client, Client]:
    """alice (the admin) and bob, each logged in with every node's address."""
    add_bob(group)
    alice = fast(group.client("alice"))
    bob = fast(Client(tmp / "bob", next(iter(group.nodes.values()))))
    bob.login(group.urls.split(",")[0], user="bob", password=BOB_PASSWORD)
    return alice, bob


def test_send_and_receive_from_different_nodes_meet_on_the_senders(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    cluster.start("a")
    cluster.start("b")
    add_bob(cluster)
    alice = knowing_one_node(cluster, "a", "alice")
    bob = knowing_one_node(cluster, "b", "bob", user="bob")
    src = random_file(tmp_path / "report.bin", 3 * MiB, seed=3)
    sender, code = start_send(alice, str(src))
    try:
        done = receive(bob, code, tmp_path / "in")
        assert done["bytes"] == src.stat().st_size
        sender_result(sender, timeout=30)
    finally:
        sender.kill()
    assert same_bytes(src, tmp_path / "in" / "report.bin")
    # The receiver was sent to the sender's node: the records crossed no
    # other node.
    assert opened_on(cluster) == ["a"]
    assert 'freight_relay_elsewhere_total{when="request"} 1.0' in metrics(cluster.nodes["b"])


def test_connect_reaches_a_listener_attached_to_another_node(
    cluster: Cluster,  # noqa: F811
) -> None:
    cluster.start("a")
    cluster.start("b")
    add_bob(cluster)
    bob = knowing_one_node(cluster, "b", "bob", user="bob")
    alice = knowing_one_node(cluster, "a", "alice")
    with Proc(bob, "listen", "ask") as listener:
        listener.wait_stderr("Listening")
        with Proc(alice, "connect", "bob", "ask") as dialer:
            dialer.write(b"question\n")
            dialer.close_stdin()
            assert listener.wait_stdout(9, 20) == b"question\n"
            listener.write(b"answer\n")
            listener.close_stdin()
            assert dialer.wait(20) == 0 and listener.wait(20) == 0
            assert dialer.stdout == b"answer\n"
    assert opened_on(cluster) == ["b"]


def test_a_transfer_whose_node_dies_resumes_where_its_ends_meet_again(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    """SIGKILL of the node both ends met on: each end attaches to a node of
    its own list; the first to come back holds the connection, the other is
    sent there, and the transfer resumes with identical bytes."""
    for name in ("a", "b", "c"):
        cluster.start(name)
    alice, bob = knowing_every_node(cluster, tmp_path)
    src = random_file(tmp_path / "big.bin", 48 * MiB, seed=7)
    sender, code = start_send(alice, str(src), "--limit", "6M")
    try:
        receiver = Proc(bob, "receive", code, "-o", str(tmp_path / "in"), "--json")
        try:
            wait_until(lambda: len(opened_on(cluster)) == 1, 30, "the connection opening")
            (meeting,) = opened_on(cluster)
            partial = tmp_path / "in"
            wait_until(
                lambda: sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) > 6 * MiB,
                60,
                "some of the file received",
            )
            cluster.nodes[meeting].kill()
            assert receiver.wait(180) == 0, receiver.stderr
        finally:
            receiver.kill()
        sender_result(sender, timeout=60)
    finally:
        sender.kill()
    assert same_bytes(src, tmp_path / "in" / "big.bin")
    # The transfer ended on one node: the one both ends met on again.
    closed = {
        n: [e["code"] for e in events_of(cluster.nodes[n], "connection_closed")]
        for n in cluster.nodes
        if n != meeting
    }
    assert sorted(closed.values()) == [[], ["closed"]], closed


def test_a_transfer_on_a_drained_node_moves_with_its_ends_to_another(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    """Drain the node a transfer's ends met on: both attach to the other
    node, the connection goes with them, and the transfer ends there."""
    cluster.start("a")
    cluster.start("b")
    alice, bob = knowing_every_node(cluster, tmp_path)
    src = random_file(tmp_path / "big.bin", 24 * MiB, seed=8)
    sender, code = start_send(alice, str(src), "--limit", "4M")
    try:
        receiver = Proc(bob, "receive", code, "-o", str(tmp_path / "in"), "--json")
        try:
            wait_until(lambda: len(opened_on(cluster)) == 1, 30, "the connection opening")
            (meeting,) = opened_on(cluster)
            other = "b" if meeting == "a" else "a"
            alice.run("admin", "drain", meeting)
            assert receiver.wait(120) == 0, receiver.stderr
        finally:
            receiver.kill()
        sender_result(sender, timeout=60)
    finally:
        sender.kill()
    assert same_bytes(src, tmp_path / "in" / "big.bin")
    closed = [e["code"] for e in events_of(cluster.nodes[other], "connection_closed")]
    assert closed == ["closed"]


async def test_ends_that_come_back_to_different_nodes_are_sent_to_one(
    cluster: Cluster,  # noqa: F811
) -> None:
    """The node both ends met on dies; the sender comes back to b, the
    receiver to c (the nodes each knows): the first rejoin holds the
    connection, the other end is sent to it, and no record is lost or
    repeated."""
    for name in ("a", "b", "c"):
        cluster.start(name)
    add_bob(cluster)
    alice = knowing_one_node(cluster, "a", "alice")
    bob = knowing_one_node(cluster, "c", "bob", user="bob")
    url = {name: parse_hub_url(hub.url) for name, hub in cluster.nodes.items()}
    async with sdk(alice) as sender, sdk(bob) as receiver:
        sender.session.nodes.append(url["b"])  # a, then b, in that order
        sender.session._ranked = time.monotonic()
        out, inc = await code_pair(sender, receiver)
        assert receiver.session.url == url["a"]  # sent to the sender's node
        count, size = 400, 32 * 1024
        await send_numbered(out, range(50), size)
        got = [await asyncio.wait_for(inc.recv(), 20) for _ in range(50)]
        cluster.nodes["a"].kill()
        # The rest is sent after the kill: it cannot all have been on its
        # way already.
        sent = asyncio.create_task(send_numbered(out, range(50, count), size))
        try:
            got += [await asyncio.wait_for(inc.recv(), 60) for _ in range(count - 50)]
            await asyncio.wait_for(sent, 20)
        finally:
            sent.cancel()
        assert got == [numbered(i, size) for i in range(count)]
        # Each end came back to a node of its own list; one was sent to the
        # other's (which may finish after the last record arrived).
        await until(lambda: sender.session.url == receiver.session.url != url["a"], 30, "one node")
        assert receiver.session.url in (url["b"], url["c"])


def numbered(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


async def send_numbered(conn: Connection, which: range, size: int) -> None:
    for i in which:
        await conn.send(numbered(i, size))


def test_an_agents_files_are_reached_through_another_node(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    cluster.start("a")
    cluster.start("b")
    admin = knowing_one_node(cluster, "a", "admin")
    token = json.loads(
        admin.run("agents", "token", "--name", "lab", "--ttl", "10m", "--json").stdout
    )["token"]
    root = tmp_path / "root"
    root.mkdir()
    src = random_file(root / "data.bin", 2 * MiB, seed=5)
    lab = fast(Client(tmp_path / "lab", cluster.nodes["b"]))
    lab.run(
        "agent", "enroll", cluster.nodes["b"].url, token,
        "--fingerprint", cluster.nodes["b"].fingerprint, "--root", str(root),
    )  # fmt: skip
    with AgentProc(lab, tmp_path / "lab.log") as proc:
        wait_online(admin, "lab", proc=proc)
        assert agent_rows(admin)["lab"]["node"] == "b"
        listing = admin.run("ls", f"lab:{root}/", timeout=60)
        assert "data.bin" in listing.stdout
        admin.run("cp", f"lab:{root}/data.bin", str(tmp_path / "copy.bin"), timeout=60)
    assert same_bytes(src, tmp_path / "copy.bin")
    assert opened_on(cluster) == ["b"]


async def test_a_client_linked_on_one_node_is_told_it_cannot_follow_a_peer_to_another(
    cluster: Cluster,  # noqa: F811
) -> None:
    cluster.start("a")
    cluster.start("b")
    add_bob(cluster)
    alice = knowing_one_node(cluster, "a", "alice")
    bob_a = knowing_one_node(cluster, "a", "bob-a", user="bob")
    bob_b = knowing_one_node(cluster, "b", "bob-b", user="bob")
    async with sdk(bob_a) as on_a, sdk(bob_b) as on_b, sdk(alice) as dialer:
        near = await on_a.listen("near")
        await on_b.listen("far")
        linked = await dialer.connect("bob", "near", timeout=20)
        accepted = await asyncio.wait_for(near.accept(), 20)
        with pytest.raises(Elsewhere, match="another node of the cluster") as refused:
            await dialer.connect("bob", "far", timeout=20)
        assert "separate freight command" in str(refused.value.hint)
        # The connection it has goes on, where it was.
        await linked.send(b"still here")
        assert await asyncio.wait_for(accepted.recv(), 20) == b"still here"
        assert dialer.session.url == parse_hub_url(cluster.nodes["a"].url)
