"""Two relay routers of a cluster on one database (real SQLite, fake
channels): a dial that reaches the node without the listener is sent to the
one with it, and what hostile clients make a node record stays bounded."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from freight.hub.observe import EventLog, Metrics
from freight.hub.places import Places
from freight.hub.relay import Router
from freight.hub.streams import User
from freight.protocol import messages as m
from freight.protocol.relaycodes import RefusalCode
from freight.store import Database, schema
from tests.unit.test_relay_router import Chan, settle

DEAD = 9.0


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Database, Router, Router]]:
    db = Database.sqlite(tmp_path / "freight.db")
    await db.migrate()
    routers = []
    for name in ("a", "b"):
        await db.put_node(name, url=f"https://{name}:8443/", host="h", pid=1, incarnation=name)
        r = Router(db, EventLog(db), Metrics(), 64 * 1024)
        r.places = Places(db, lambda n=name: n, DEAD)
        routers.append(r)
    yield db, routers[0], routers[1]
    for r in routers:
        for att in list(r.attachments):
            r.detach(att)
        await r.aclose()
    await db.close()


async def _users(db: Database) -> tuple[User, User]:
    alice = User(await db.add_user("alice", "h", "user"), "alice", "user")
    bob = User(await db.add_user("bob", "h", "user"), "bob", "user")
    return alice, bob


async def test_a_dial_on_the_node_without_the_listener_is_sent_to_the_listeners(
    nodes: tuple[Database, Router, Router],
) -> None:
    db, a, b = nodes
    alice, bob = await _users(db)
    listener, dialer = Chan(), Chan()
    await a.handle(a.attach(bob, listener, "ws"), m.Listen(rid="l1", app="chat"), b"")
    at_b = b.attach(alice, dialer, "ws")
    await b.handle(at_b, m.Dial(rid="d1", cid="c1", peer="bob", app="chat"), b"")
    await settle()
    (refusal,) = dialer.of(m.Error)
    assert (refusal.code, refusal.rid, refusal.at) == (
        RefusalCode.ELSEWHERE,
        "d1",
        "https://a:8443/",
    )
    assert "node a" in refusal.message
    assert "c1" not in b.conns  # nothing waits on b
    # On a, where the listener is, the same dial links.
    at_a = a.attach(alice, Chan(), "ws")
    await a.handle(at_a, m.Dial(rid="d2", cid="c1", peer="bob", app="chat"), b"")
    await settle()
    assert "c1" in a.conns and a.conns["c1"].complete()


async def test_hostile_dials_and_rejoins_leave_no_places_behind(
    nodes: tuple[Database, Router, Router],
) -> None:
    db, _, b = nodes
    alice, _ = await _users(db)
    chan = Chan()
    att = b.attach(alice, chan, "ws")
    for i in range(40):  # rejoins of connections that never were, dials of nobody's apps
        cid = secrets.token_hex(12)
        rejoin = m.Dial(rid=f"r{i}", cid=cid, peer="bob", app="x", role="dial", rejoin=True)
        await b.handle(att, rejoin, b"")
        await b.handle(att, m.Dial(rid=f"d{i}", cid=f"n{i}", peer="nobody", app="x"), b"")
    await settle()
    assert len(chan.of(m.Error)) >= 40  # the unknown account, each time
    b.detach(att)
    b.sweep(time.time() + 3600)  # the rejoins' grace is over: they end
    for _ in range(50):
        async with db.engine.connect() as c:
            left = await c.scalar(sa.select(sa.func.count()).select_from(schema.relay_places))
        if left == 0:
            break
        await asyncio.sleep(0.02)
    assert left == 0


async def test_a_waiting_end_is_sent_on_to_the_node_that_took_its_connection(
    nodes: tuple[Database, Router, Router],
) -> None:
    """A dial that waits on b for a listener that then listens on a, and a
    rejoin that waits on b for a connection that a then takes (its accepting
    end came back there): b's next heartbeat sends both ends to a."""
    db, a, b = nodes
    alice, bob = await _users(db)
    waiting, rejoining = Chan(), Chan()
    await b.handle(
        b.attach(alice, waiting, "ws"), m.Dial(rid="d", cid="w1", peer="bob", app="x"), b""
    )
    rejoin = m.Dial(rid="r", cid="r1", peer="bob", app="y", role="dial", rejoin=True)
    await b.handle(b.attach(alice, rejoining, "ws"), rejoin, b"")
    await settle()
    assert not waiting.of(m.Error) and not rejoining.of(m.Error)  # both wait on b
    await b.recheck_places()
    await settle()
    assert not waiting.of(m.Error) and not rejoining.of(m.Error)  # nothing elsewhere yet
    await a.handle(a.attach(bob, Chan(), "ws"), m.Listen(rid="l", app="x"), b"")
    back = m.Dial(rid="r2", cid="r1", peer="alice", app="y", role="accept", rejoin=True)
    await a.handle(a.attach(bob, Chan(), "ws"), back, b"")
    await b.recheck_places()
    await settle()
    for chan in (waiting, rejoining):
        (moved,) = chan.of(m.Error)
        assert (moved.code, moved.rid, moved.at) == (RefusalCode.ELSEWHERE, "", "https://a:8443/")


async def test_a_dialling_end_that_comes_back_follows_its_listener(
    nodes: tuple[Database, Router, Router],
) -> None:
    db, a, b = nodes
    alice, bob = await _users(db)
    await a.handle(a.attach(bob, Chan(), "ws"), m.Listen(rid="l", app="files"), b"")
    chan = Chan()
    rejoin = m.Dial(rid="r", cid="c9", peer="bob", app="files", role="dial", rejoin=True)
    await b.handle(b.attach(alice, chan, "ws"), rejoin, b"")
    await settle()
    (moved,) = chan.of(m.Error)
    assert (moved.code, moved.rid, moved.at) == (RefusalCode.ELSEWHERE, "r", "https://a:8443/")
    assert "c9" not in b.conns
