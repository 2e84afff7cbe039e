"""Where a cluster's relay rendezvous are held (``relay_places``): a
connection stays with the node that opened it while that node beats, goes
to the first node that asks once it is dead, and a listener or an offer is
wherever it was made last."""

from __future__ import annotations

from freight.store import Database
from tests.unit.test_store_repositories import Clock, clock, db  # noqa: F401 - fixtures

DEAD = 9.0  # unseen this long, a node is dead


async def _nodes(database: Database) -> None:
    for name in ("a", "b"):
        await database.put_node(
            name, url=f"https://{name}:8443/", host="h", pid=1, incarnation=name
        )


async def test_a_connection_stays_with_a_live_holder_and_moves_from_a_dead_one(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    await _nodes(db)
    alive = clock.now - DEAD
    assert await db.claim_place("c:1", "a", alive_after=alive) == "a"
    assert await db.claim_place("c:1", "b", alive_after=alive) == "a"  # a beats: b is told a
    assert await db.place_of("c:1", alive_after=alive) == ("a", "https://a:8443/")
    # a stops beating, b goes on: b takes the connection, and then holds it.
    clock.now += DEAD + 1
    assert await db.beat("b", "b", clients=0, transfers=0, lease_for=DEAD) is not None
    alive = clock.now - DEAD
    assert await db.place_of("c:1", alive_after=alive) is None  # a dead holder is nobody
    assert await db.claim_place("c:1", "b", alive_after=alive) == "b"
    assert await db.claim_place("c:1", "a", alive_after=alive) == "b"  # a's node, restarted
    assert await db.place_of("c:1", alive_after=alive) == ("b", "https://b:8443/")


async def test_listeners_follow_the_last_listen_and_only_the_holder_drops_them(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    await _nodes(db)
    alive = clock.now - DEAD
    await db.put_place("l:bob/chat", "a")
    await db.put_place("l:bob/chat", "b")  # bob listens again, on b
    assert await db.place_of("l:bob/chat", alive_after=alive) == ("b", "https://b:8443/")
    await db.drop_places(["l:bob/chat"], "a")  # a's late clean-up takes nothing of b's
    assert await db.place_of("l:bob/chat", alive_after=alive) is not None
    await db.drop_places(["l:bob/chat"], "b")
    assert await db.place_of("l:bob/chat", alive_after=alive) is None


async def test_a_node_that_starts_again_forgets_what_it_held(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    await _nodes(db)
    alive = clock.now - DEAD
    for key in ("l:bob/chat", "o:12", "c:9"):
        await db.put_place(key, "a")
    await db.put_place("c:10", "b")
    await db.clear_places("a")
    assert [await db.place_of(k, alive_after=alive) for k in ("l:bob/chat", "o:12", "c:9")] == [
        None
    ] * 3
    assert await db.place_of("c:10", alive_after=alive) == ("b", "https://b:8443/")


async def test_a_drained_nodes_connections_go_to_the_first_other_node_that_asks(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    await _nodes(db)
    alive = clock.now - DEAD
    assert await db.claim_place("c:1", "a", alive_after=alive) == "a"
    await db.set_draining("a", True)
    assert await db.place_of("c:1", alive_after=alive) is None
    assert await db.claim_place("c:1", "b", alive_after=alive) == "b"
