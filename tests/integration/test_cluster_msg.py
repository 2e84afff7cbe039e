"""Messaging in a cluster: every host attaches to the cluster's messaging
node (docs/cluster.md "Messaging"), whichever node it reached first; when
that node dies another takes its place, the hosts follow, and messages in
flight through the SIGKILL are each delivered exactly once. Real hub
processes on one PostgreSQL database; skipped without it."""

from __future__ import annotations

import asyncio

import pytest

from freight.client.session import parse_hub_url
from tests.integration.test_cluster import Cluster, cluster  # noqa: F401 - a fixture
from tests.integration.test_cluster_relay import add_bob, knowing_one_node
from tests.integration.test_msg_hosts import Taker, msg_host
from tests.integration.test_postgres import pg_database  # noqa: F401 - a fixture
from tests.relaysupport import FAST_RELAY


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAST_RELAY.items():
        monkeypatch.setenv(name, value)


async def test_hosts_on_different_nodes_meet_and_survive_a_sigkill_of_their_node(
    cluster: Cluster,  # noqa: F811
) -> None:
    for name in ("a", "b"):
        cluster.start(name, "--msg-warmup", "5")
    add_bob(cluster)
    admin = knowing_one_node(cluster, "a", "admin")
    bob = knowing_one_node(cluster, "b", "bob", user="bob")
    urls = [cluster.nodes[n].url for n in ("a", "b")]
    async with msg_host(bob, urls[0]) as b, msg_host(admin, urls[1]) as a:
        taker = Taker(b.register("jobs", 0xFF))
        await asyncio.wait_for(b.announced(), 30)
        assert (await asyncio.wait_for(a.send("bob", "jobs", 0x1, b"warm"), 30)).count == 1
        # Both hosts are on one node now: the one that holds messaging.
        assert a.relay.session.url == b.relay.session.url
        home = next(
            n for n, h in cluster.nodes.items() if parse_hub_url(h.url) == a.relay.session.url
        )
        flying = [
            asyncio.create_task(a.send("bob", "jobs", 0x1, b"fly %d" % i, timeout=90))
            for i in range(100)
        ]
        await asyncio.sleep(0)
        await asyncio.to_thread(cluster.nodes[home].kill)
        results = await asyncio.wait_for(asyncio.gather(*flying), 90)
        assert [r.count for r in results] == [1] * 100, results
        await taker.wait(101, timeout=30)
        bodies = sorted(d.body for d in taker.got)
        assert bodies == sorted([b"warm"] + [b"fly %d" % i for i in range(100)])  # each once
        assert len({d.id for d in taker.got}) == 101
        taker.stop()
        other = "b" if home == "a" else "a"
        assert a.relay.session.url == b.relay.session.url == parse_hub_url(cluster.nodes[other].url)
