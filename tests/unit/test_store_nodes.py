"""Nodes of a cluster in the database, and who receives each push: a node
takes a push over only once the holder's lease lapsed or it let go, and a
node that lost a push can record no checkpoint of it (on SQLite and, when
one is reachable, PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy.exc import DBAPIError

from freight.store import Database
from freight.store import schema as t
from tests.unit.test_store_repositories import Clock, clock, db  # noqa: F401 - fixtures

LEASE = 9.0


async def _user(database: Database) -> int:
    return await database.add_user("ann", "h", "user")


async def test_a_push_is_received_by_one_node_until_its_lease_lapses(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    uid = await _user(db)
    assert await db.start_stream(uid, "s", name="f", size=9, mtime=0, owner="a", lease_for=LEASE)
    # Node b cannot start it afresh, nor take it over, while a holds it.
    assert not await db.start_stream(
        uid, "s", name="f", size=9, mtime=0, owner="b", lease_for=LEASE
    )
    claimed, row = await db.claim_stream(uid, "s", "b", LEASE)
    assert not claimed and row is not None and row.owner == "a"
    # a's heartbeat renews its lease; b still waits.
    await db.put_node("a", url="https://a/", host="h", pid=1, incarnation="i1")
    clock.now += LEASE - 1
    assert await db.beat("a", "i1", clients=0, transfers=1, lease_for=LEASE) is not None
    clock.now += LEASE - 1
    assert not (await db.claim_stream(uid, "s", "b", LEASE))[0]
    assert await db.checkpoint_owned(uid, "s", 3, "a")
    # a stops beating (killed): once its lease lapsed b takes the push over,
    # from a's last checkpoint, and a can no longer record one.
    clock.now += LEASE + 0.1
    claimed, row = await db.claim_stream(uid, "s", "b", LEASE)
    assert claimed and row is not None and (row.owner, row.checkpoint) == ("b", 3)
    assert not await db.checkpoint_owned(uid, "s", 6, "a")
    assert (await db.get_stream(uid, "s")).checkpoint == 3  # type: ignore[union-attr]
    assert await db.checkpoint_owned(uid, "s", 6, "b")


async def test_a_node_that_lets_go_is_taken_over_at_once(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    uid = await _user(db)
    assert await db.start_stream(uid, "s", name="f", size=9, mtime=0, owner="a", lease_for=LEASE)
    await db.release_stream(uid, "s", "b")  # not b's to give
    assert not (await db.claim_stream(uid, "s", "b", LEASE))[0]
    await db.release_stream(uid, "s", "a")
    assert (await db.claim_stream(uid, "s", "b", LEASE))[0]
    # The holder itself may always claim it again (its sender came back).
    assert (await db.claim_stream(uid, "s", "b", LEASE))[0]


async def test_two_nodes_racing_for_one_push_never_both_win(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    uid = await _user(db)
    for round_ in range(20):
        sid = f"s{round_}"
        started = await asyncio.gather(
            *(
                db.start_stream(uid, sid, name="f", size=9, mtime=0, owner=n, lease_for=LEASE)
                for n in ("a", "b", "c")
            )
        )
        row = await db.get_stream(uid, sid)
        assert row is not None and started.count(True) == 1
        # Whoever the row names is the one that may write; the others may not.
        for n in ("a", "b", "c"):
            assert await db.checkpoint_owned(uid, sid, 1, n) == (n == row.owner)
        claims = await asyncio.gather(*(db.claim_stream(uid, sid, n, LEASE) for n in "abc"))
        assert [c for c, _ in claims].count(True) == 1


async def test_nodes_heartbeat_and_a_lost_name_is_noticed(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    await db.put_node("a", url="https://a:8443/", host="m1", pid=10, incarnation="one")
    row = await db.beat("a", "one", clients=3, transfers=1, lease_for=LEASE)
    assert row is not None and (row.clients, row.transfers, row.draining) == (3, 1, 0)
    assert await db.set_draining("a", True)
    assert not await db.set_draining("nobody", True)
    assert (await db.beat("a", "one", clients=0, transfers=0, lease_for=LEASE)).draining  # type: ignore[union-attr]
    # Another process started as "a": the first one's heartbeat is refused.
    await db.put_node("a", url="https://a:8443/", host="m2", pid=11, incarnation="two")
    assert await db.beat("a", "one", clients=0, transfers=0, lease_for=LEASE) is None
    # A node that still beats is not forgotten; one unseen since is.
    assert not await db.forget_node("a", unseen_since=clock.now - 1)
    clock.now += 100
    assert await db.forget_node("a", unseen_since=clock.now - 10)
    assert await db.nodes() == []


async def test_a_node_stopped_inside_a_transaction_does_not_hold_its_pushes_forever(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    """A node stopped (SIGSTOP, a paused VM) between two statements of its
    heartbeat keeps its connection open and the rows it updated locked. The
    database ends that transaction, so another node can take its push over
    instead of waiting for as long as the node stays stopped."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no cluster: one process holds the database")
    uid = await _user(db)
    assert await db.start_stream(uid, "s", name="f", size=9, mtime=0, owner="a", lease_for=LEASE)
    stopped = Database(db.url, clock, stuck_after=1.0)  # node a, as it was started
    try:
        with contextlib.suppress(DBAPIError):  # its transaction was ended under it
            async with stopped.engine.begin() as c:
                # The first statement of a's heartbeat, and then nothing more.
                await c.execute(
                    t.streams.update().where(t.streams.c.owner == "a").values(lease=clock.now + 9)
                )
                async with asyncio.timeout(15):
                    claimed, row = await db.claim_stream(uid, "s", "b", LEASE, dead="a")
        assert claimed and row is not None and row.owner == "b"
    finally:
        await stopped.close()
