"""The approvals repository on SQLite and (when one is reachable)
PostgreSQL: registrations in a state and bounded while pending, decisions
as compare-and-set, the last-admin rule under a race, an admin's password
reset ending every login, and the application names admins decide on."""

from __future__ import annotations

import asyncio

from freight.store import Database
from freight.store.rows import AppRow
from tests.unit.test_store_repositories import Clock, clock, db  # noqa: F401  (fixtures)


async def test_registrations_are_active_or_pending_and_pending_ones_are_bounded(
    db: Database,  # noqa: F811
) -> None:
    active = await db.register_user("ann", "h", "active", max_pending=2)
    assert isinstance(active, int)
    assert await db.register_user("ann", "h", "pending", max_pending=2) == "taken"
    for name in ("bo", "cy"):
        assert isinstance(await db.register_user(name, "h", "pending", max_pending=2), int)
    assert await db.register_user("dee", "h", "pending", max_pending=2) == "full"
    # An open registration is not held back by the waiting ones.
    assert isinstance(await db.register_user("ed", "h", "active", max_pending=2), int)
    pending = await db.users_in_state("pending")
    assert [u.name for u in pending] == ["bo", "cy"]
    assert all(u.role == "user" and not u.disabled for u in pending)
    row = await db.user_by_name("ann")
    assert row is not None and row.state == "active"


async def test_a_decision_is_taken_once(db: Database) -> None:  # noqa: F811
    uid = await db.register_user("bo", "h", "pending", max_pending=10)
    assert isinstance(uid, int)
    assert await db.decide_user(uid, "refused") is True
    assert await db.decide_user(uid, "active") is False  # refused stays refused
    row = await db.user_by_id(uid)
    assert row is not None and row.state == "refused"
    assert [u.name for u in await db.users_in_state("refused")] == ["bo"]
    assert await db.users_in_state("pending") == []


async def test_the_last_enabled_admin_keeps_its_role_even_under_a_race(
    db: Database,  # noqa: F811
) -> None:
    a = await db.add_user("a", "h", "admin")
    b = await db.add_user("b", "h", "admin")
    # Both demote each other at once: one wins, one admin is left.
    results = await asyncio.gather(db.set_role(a, "user"), db.set_role(b, "user"))
    assert sorted(results) == [False, True]
    admins = [u.name for u in await db.list_users() if u.role == "admin"]
    assert len(admins) == 1
    last = (await db.user_by_name(admins[0])).id  # type: ignore[union-attr]
    assert await db.set_role(last, "user") is False
    assert await db.disable_unless_last_admin(last) is False
    # A disabled admin does not count: another enabled one must exist.
    c = await db.add_user("c", "h", "admin")
    assert await db.disable_unless_last_admin(last) is True
    assert await db.set_role(c, "user") is False
    assert await db.set_role(c, "admin") is True  # nothing to keep


async def test_a_password_reset_ends_every_login(db: Database, clock: Clock) -> None:  # noqa: F811
    uid = await db.add_user("ann", "old", "user")
    for tok in ("t1", "t2"):
        await db.add_token(tok * 32, uid, clock() + 100)
    assert await db.reset_password(uid, "new") == 2
    assert await db.logins.login_by_token("t1" * 32, clock()) is None
    row = await db.user_by_id(uid)
    assert row is not None and row.pw_hash == "new"


async def test_application_names_wait_then_are_decided(
    db: Database,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    assert await db.request_app("chat", "ann", max_pending=2) == ("pending", True)
    assert await db.request_app("chat", "bo", max_pending=2) == ("pending", False)  # ann's
    assert await db.request_app("news", "bo", max_pending=2) == ("pending", True)
    assert await db.request_app("more", "bo", max_pending=2) is None  # two wait already
    clock.now = 2000.0
    row = await db.decide_app("chat", "approved", "admin")
    assert row == AppRow("chat", "approved", "ann", 1000.0, "admin", 2000.0)
    assert await db.request_app("chat", "cy", max_pending=2) == ("approved", False)
    assert await db.request_app("more", "bo", max_pending=2) == ("pending", True)  # room again
    # Decided ahead of any request: recorded with the admin as requester.
    ahead = await db.decide_app("blocked", "refused", "admin")
    assert (ahead.state, ahead.requested_by) == ("refused", "admin")
    assert [a.name for a in await db.list_apps("pending")] == ["more", "news"]
    assert [a.name for a in await db.list_apps()] == ["blocked", "chat", "more", "news"]
    assert await db.app_row("nothing") is None
