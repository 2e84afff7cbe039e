"""``freight loadtest --start-hub --nodes N``: the load tester starts a
cluster of its own (real nodes on one PostgreSQL database, a NATS bus when
one runs here), SIGKILLs the first node with ``hub_kill@T``, and its
clients carry on through the others; skipped without PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from tests.integration.test_postgres import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    pg_database,  # noqa: F401 - a fixture
)
from tests.support import Client, Hub

SHEET = """\
id,count,role,peer,app,size,rate,transport,attach_at,ramp,faults,expect
idle,20,agent-idle,,,,,ws,0s,2s,,attached>=99.9%
inbox,2,listen,*,mail,,,auto,0s,1s,,
streams,4,message,inbox,mail,1KiB,10/s,auto,1s,1s,,loss=0
uploaders,3,push,,,8MiB,concurrency:1,auto,1s,1s,hub_kill@4s,errors=0;verified=100%
"""


def _nats_here() -> list[str]:
    with socket.socket() as s:
        s.settimeout(1.0)
        if s.connect_ex(("127.0.0.1", 4222)) == 0:
            return ["--bus", "nats://127.0.0.1:4222"]
    return []


async def _node_names(database_url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=urlsplit(database_url).path[1:]
    )
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM nodes ORDER BY name")]
    finally:
        await conn.close()


def test_a_cluster_of_the_testers_own_loses_nothing_when_a_node_is_killed(
    tmp_path: Path,
    shared_hub: Hub,
    pg_database: str,  # noqa: F811
) -> None:
    sheet = tmp_path / "cluster.csv"
    sheet.write_text(SHEET, encoding="utf-8")
    tester = Client(tmp_path / "cfg", shared_hub)  # no login: --start-hub makes its own
    res = tester.run(
        "loadtest", str(sheet), "--start-hub", "--nodes", "2",
        "--database-url", pg_database, *_nats_here(),
        "--duration", "10s", "--seed", "5", "--json",
        check=False, timeout=200,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    # Each node's start is told as it happens (seconds each on PostgreSQL).
    assert "starting node n1 of 2 on loopback" in res.stderr
    assert re.search(r"node n2 of 2: listening on https://127\.0\.0\.1:\d+/", res.stderr)
    report = json.loads(res.stdout)
    assert report["passed"] and report["hub_restarts"] == 1 and report["hub_alive"]
    rows = report["rows"]
    # Pushes went on across the SIGKILL of a node, each checked by its digest.
    assert rows["uploaders"]["verified"] > 3 and rows["uploaders"]["mismatched"] == 0
    assert rows["uploaders"]["faults"] == 3
    # Every message answered; every agent attached again.
    assert rows["streams"]["operations"] > 0 and rows["streams"]["lost"] == 0
    assert rows["idle"]["attached_peak"] == 20
    # Two nodes served, on the database given.
    assert asyncio.run(_node_names(pg_database)) == ["n1", "n2"]


def test_several_nodes_need_a_database_they_share(tmp_path: Path, shared_hub: Hub) -> None:
    sheet = tmp_path / "cluster.csv"
    sheet.write_text(SHEET, encoding="utf-8")
    res = Client(tmp_path / "cfg", shared_hub).run(
        "loadtest", str(sheet), "--start-hub", "--nodes", "3", check=False
    )
    assert res.returncode == 2
    assert "several nodes share one database: give --database-url" in res.stderr
