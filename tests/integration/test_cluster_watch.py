"""Each node keeps a database session of its own (freight.store.watch): a
node whose process dies loses its pushes to another node within seconds,
not after its heartbeat's lease; a node that is alive but lost its session
stops writing at once. Real `freight hub` nodes on one PostgreSQL database;
skipped without PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from tests.integration.test_cluster import BEAT, Cluster, cluster  # noqa: F401 - a fixture
from tests.integration.test_faults import hub_events as events_of
from tests.integration.test_postgres import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    pg_database,  # noqa: F401 - a fixture
)
from tests.support import random_file, same_bytes, wait_until

MiB = 1024 * 1024
# Heartbeats 5 s apart: a lease lasts 15 s and is renewed at each beat, so a
# dead node's pushes lapse 10 s after its death at the earliest.
SLOW_BEAT = "5"


def _push(
    nodes: Cluster, src: Path, limit: str, beat: str
) -> tuple[subprocess.Popen[str], str, str]:
    nodes.start("a", beat=beat)
    nodes.start("b", beat=beat)
    client = nodes.client()
    proc = client.popen("push", str(src), "--as", src.name, "--limit", limit, "--json")
    victim, survivor = nodes.receiver(2)
    return proc, victim, survivor


def _pulled_back(nodes: Cluster, src: Path, tmp: Path) -> bool:
    back = tmp / "back.bin"
    nodes.client("check").run("pull", src.name, str(back))
    return same_bytes(src, back)


def test_a_killed_nodes_push_is_taken_over_before_its_lease_lapses(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    src = random_file(tmp_path / "big.bin", 16 * MiB, seed=31)
    proc, victim, survivor = _push(cluster, src, "8M", SLOW_BEAT)
    try:
        cluster.nodes[victim].kill()
        killed = time.monotonic()
        wait_until(
            lambda: events_of(cluster.nodes[survivor], "stream_taken_over"), 30, "the takeover"
        )
        took = time.monotonic() - killed
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (ev,) = events_of(cluster.nodes[survivor], "stream_taken_over")
    assert ev["node"] == victim
    assert took < 10, f"taken over {took:.1f} s after the kill: the lease's time, not the session's"
    assert _pulled_back(cluster, src, tmp_path)


async def _end_session_of(database_url: str, node: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=urlsplit(database_url).path[1:]
    )
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'freight-node ' || "
                "(SELECT incarnation FROM nodes WHERE name = $1)",
                node,
            )
        )
    finally:
        await conn.close()


def test_a_node_that_loses_its_session_gives_up_its_push_which_resumes_whole(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
    pg_database: str,  # noqa: F811
) -> None:
    """The node lives on, but the database ended its session: other nodes
    may now take its push over, so it must stop writing it at once."""
    src = random_file(tmp_path / "big.bin", 16 * MiB, seed=32)
    proc, victim, _ = _push(cluster, src, "4M", BEAT)
    try:
        assert asyncio.run(_end_session_of(pg_database, victim)) == 1
        node = cluster.nodes[victim]
        wait_until(lambda: events_of(node, "node_session_lost"), 30, "the node to notice")
        wait_until(lambda: events_of(node, "node_session_back"), 30, "a new session")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert _pulled_back(cluster, src, tmp_path)
    assert cluster.nodes[victim].partials() == []
    # The node told the sender it let go: the push resumed at once, not
    # after the sender's stall timeout without acknowledgements.
    (lost,) = events_of(node, "node_session_lost")
    resumed = [e for n in cluster.nodes.values() for e in events_of(n, "stream_resume")]
    assert resumed
    waited = _seconds(resumed[0]["timestamp"]) - _seconds(lost["timestamp"])
    assert waited < 10, f"resumed {waited:.1f} s after the node let go"


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_only_a_node_that_keeps_a_session_is_taken_for_gone_without_one(
    pg_database: str,  # noqa: F811
) -> None:
    """A node of an earlier version keeps no session of its own: its pushes
    must wait for their leases, never be taken over while it writes."""
    from freight.hub.nodes import NodeService, NodeSettings
    from freight.store.db import Database
    from freight.store.watch import SessionWatch

    db = Database(pg_database)
    watch: SessionWatch | None = None
    try:
        await db.migrate()
        me = NodeService(db, None, None, None, None, NodeSettings("me", ""))  # type: ignore[arg-type]
        for name, watched in (("old", False), ("new", True)):
            await db.put_node(name, url="", host="h", pid=1, incarnation=name, watched=watched)
        assert not await me.gone("old")  # no session, but it never kept one
        assert await me.gone("new")  # kept one, and it is gone
        watch = SessionWatch(db.engine, "new")
        await watch.ping()
        assert not await me.gone("new")  # its session is there: alive
        assert not await me.gone("nobody")
    finally:
        if watch is not None:
            await watch.aclose()
        await db.close()
