"""The hub's database, one repository per aggregate, on SQLite and (when
one is reachable) PostgreSQL: typed frozen rows, the injected clock, and
state changes that apply the lifecycle tables as compare-and-set."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol.commands import (
    CommandInput,
    CommandLifecycle,
    CommandState,
    ContentState,
    InvalidTransition,
)
from freight.store import Database, relaykeys
from freight.store.rows import (
    AgentRow,
    CodeRow,
    CommandRow,
    ContentRow,
    EventRow,
    FileRow,
    LoginRow,
    StreamRow,
    UserRow,
)
from tests.support import Clock

PG_HOST = os.environ.get("FREIGHT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FREIGHT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("FREIGHT_TEST_PG_USER", "postgres")
DIGEST = "cd" * 32


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Database]:
    name = ""
    if request.param == "sqlite":
        d = Database.sqlite(tmp_path / "freight.db", clock)
    else:
        name = "freight_test_" + secrets.token_hex(4)
        try:
            await _pg_admin(f'CREATE DATABASE "{name}"')
        except Exception as exc:  # no server, no driver, or no rights
            pytest.skip(f"no PostgreSQL at {PG_HOST}:{PG_PORT}: {exc!r}")
        d = Database(f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}", clock)
    await d.migrate()
    try:
        yield d
    finally:
        await d.close()
        if name:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_users_and_logins_are_typed_frozen_rows(db: Database, clock: Clock) -> None:
    uid = await db.users.add_user("ann", "hash", "user")
    assert await db.create_user("ann", "h2", "user") is None  # the name is taken
    row = await db.users.user_by_name("ann")
    assert row == UserRow(uid, "ann", "hash", "user", False, 1000.0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.name = "bob"  # type: ignore[misc]
    clock.now = 1001.0
    await db.add_token("t" * 64, uid, 5000.0, "k" * 64)
    login = await db.logins.login_by_token("t" * 64, clock())
    assert isinstance(login, LoginRow) and login.id == uid
    assert (login.token_expires, login.token_key) == (5000.0, "k" * 64)
    assert await db.login_by_token("t" * 64, 6000.0) is None  # expired
    keys = await db.logins.list_keys(uid)
    assert [(k.key, k.created) for k in keys] == []
    assert await db.register_key(uid, "t" * 64, "a" * 64)
    assert [(k.key, k.created) for k in await db.list_keys(uid)] == [("a" * 64, 1001.0)]
    assert [u.name for u in await db.list_users()] == ["ann"]


async def test_streams_and_files(db: Database, clock: Clock) -> None:
    uid = await db.add_user("ann", "h", "user")
    assert await db.start_stream(
        uid, "s1", name="a.bin", size=10, mtime=5.0, owner="n1", lease_for=9.0
    )
    clock.now = 1002.0
    assert await db.checkpoint_owned(uid, "s1", 4, "n1")
    row = await db.get_stream(uid, "s1")
    assert row == StreamRow(
        uid, "s1", "a.bin", 10, 5.0, 4, "receiving", 1000.0, 1002.0, "n1", 1009.0
    )
    assert await db.stale_streams(1001.0) == []
    assert [s.sid for s in await db.stale_streams(1003.0)] == ["s1"]
    await db.publish(uid, "s1", name="a.bin", size=10, digest=DIGEST, mtime=5.0)
    assert await db.get_stream(uid, "s1") is None
    f = await db.file_by_sid(uid, "s1")
    assert f == FileRow(uid, "a.bin", 10, DIGEST, 5.0, 1002.0, "s1")
    assert await db.list_files(uid) == [f]


async def test_codes_and_events(db: Database, clock: Clock) -> None:
    uid = await db.add_user("ann", "h", "user")
    plate = await db.relay_keys.create_code(uid, 60.0)
    code = await db.get_code(plate)
    assert code == CodeRow(plate, uid, 1000.0, 1060.0, 0, None, None, 0)
    clock.now = 1061.0
    assert await db.get_code(plate) is None
    assert await db.get_code(plate, expired=True) is not None
    assert await db.count_codes(uid) == 0
    await db.events.add_event("login", "ann", {"address": "x"})
    (event,) = await db.list_events()
    assert event == EventRow(event.id, 1061.0, "login", "ann", {"address": "x"}, "", "x")
    assert event.as_json()["detail"] == {"address": "x"}


async def test_finished_codes_stop_counting_and_stay_bounded(
    db: Database, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = await db.add_user("ann", "h", "user")
    plates = [await db.relay_keys.create_code(uid, 600.0) for _ in range(3)]
    assert await db.count_codes(uid) == 3
    await db.relay_keys.set_code_finished(plates[0], True)
    assert await db.count_codes(uid) == 2
    row = await db.get_code(plates[0])
    assert row is not None and row.finished == 1  # still valid: its owner may offer it again
    await db.relay_keys.set_code_finished(plates[0], False)
    assert await db.count_codes(uid) == 3

    # Finished codes are kept up to a bound; past it the oldest expires.
    monkeypatch.setattr(relaykeys, "MAX_FINISHED_CODES", 4)
    for plate in plates:
        await db.relay_keys.set_code_finished(plate, True)
    for _ in range(3):
        clock.now += 1
        await db.relay_keys.set_code_finished(await db.relay_keys.create_code(uid, 600.0), True)
    clock.now += 1
    await db.relay_keys.create_code(uid, 600.0)
    valid = [p for p in plates if await db.get_code(p) is not None]
    assert len(valid) == 0  # the three oldest finished ones expired
    assert await db.count_codes(uid) == 1


async def test_agents(db: Database) -> None:
    await db.agents.add_enrol_token("e" * 64, "lab", 2000.0)
    name, uid = await db.enrol_agent("e" * 64, "a" * 64, 1500.0)
    assert name == "lab" and isinstance(uid, int)
    assert await db.enrol_agent("e" * 64, "a" * 64, 1500.0) == (
        None,
        "this enrolment token was already used",
    )
    await db.set_agent_cap(uid, 100)
    assert await db.agent_cap(uid) == 100
    assert await db.list_agents() == [AgentRow(uid, "lab", False, uid, 1500.0, 0.0, "", "", 100)]


async def test_commands_change_state_only_as_their_table_allows(db: Database, clock: Clock) -> None:
    agent = await db.add_user("lab", "!", "agent")
    cid = await db.commands.add_command(agent, "ping", "{}", "admin")
    row = await db.get_command(cid)
    assert isinstance(row, CommandRow) and row.state is CommandState.QUEUED
    assert row.state == "queued" and row.deliveries == 0
    clock.now = 1005.0
    assert await db.mark_delivered(cid, agent, 2) == 1
    assert await db.acknowledge(cid, agent)
    assert not await db.acknowledge(cid, agent)  # an ack is taken once
    assert await db.mark_delivered(cid, agent, 2) == 2  # again after a reconnect
    assert await db.mark_delivered(cid, agent, 2) == 0  # the limit: nothing changed
    assert [c.id for c in await db.open_commands(agent)] == [cid]
    assert await db.open_command_counts() == {agent: 1}
    assert await db.finish(cid, agent, "failed", '"no"')
    row = await db.get_command(cid)
    assert row is not None and row.state is CommandState.FAILED
    assert (row.result, row.updated, row.deliveries) == ('"no"', 1005.0, 2)
    assert not await db.finish(cid, None, "cancelled", "{}")
    assert await db.open_command(cid, agent) is None and await db.open_commands(agent) == []


async def _content(db: Database) -> ContentRow:
    row = await db.get_content(DIGEST)
    assert row is not None
    return row


async def test_content_changes_state_only_as_its_table_allows(db: Database, clock: Clock) -> None:
    agent = await db.add_user("lab", "!", "agent")
    offer = {"path": "/a", "digest": DIGEST, "size": 7, "mtime": 1.0}
    assert await db.collection.record_offers(agent, "p", [offer], clock()) == 1
    assert (await _content(db)).state is ContentState.WANTED
    assert [h.path for h in await db.holders(DIGEST)] == ["/a"]
    cid = await db.add_command(agent, "upload", "{}", "collector")
    # Nothing to claim until the upload is issued.
    assert await db.claim_upload(cid, agent) is None
    assert await db.update_content(DIGEST, state="issued", source=agent, command_id=cid)
    assert await db.claim_upload(cid, agent + 1) is None  # not that agent's
    claimed = await db.claim_upload(cid, agent)
    assert claimed is not None and claimed.state is ContentState.FINISHING
    assert await db.claim_upload(cid, agent) is None  # once
    # A stale "issued" reset finds it finishing and changes nothing.
    assert not await db.update_content(DIGEST, state="wanted", was="issued")
    clock.now = 1010.0
    assert await db.update_content(DIGEST, state="stored", received=7)
    stored = await _content(db)
    assert (stored.state, stored.received, stored.updated) == (ContentState.STORED, 7, 1010.0)
    # Nothing moves stored content, whatever a late round asks.
    for state in ("wanted", "failed", "superseded", "issued", "finishing"):
        assert not await db.update_content(DIGEST, state=state)
    with pytest.raises(InvalidTransition):
        await db.update_content(DIGEST, state="wanted", was="stored")
    # Offering it again does not revive stored content.
    assert await db.record_offers(agent, "p", [offer], clock()) == 0
    assert (await _content(db)).state is ContentState.STORED
    assert await db.collection_stats() == {
        "unique_files": 1,
        "unique_bytes": 7,
        "received_bytes": 7,
        "pending": 0,
        "failed": 0,
    }
    (held,) = await db.collected()
    assert (held.agent, held.path, held.state) == ("lab", "/a", ContentState.STORED)


async def test_given_up_content_is_wanted_again_when_offered_anew(db: Database) -> None:
    agent = await db.add_user("lab", "!", "agent")
    offer = {"path": "/a", "digest": DIGEST, "size": 7, "mtime": 1.0}
    await db.record_offers(agent, "p", [offer], 1.0)
    assert await db.update_content(DIGEST, state="failed", attempts=5)
    await db.record_offers(agent, "p", [offer], 2.0)
    row = await _content(db)
    assert (row.state, row.attempts) == (ContentState.WANTED, 0)


_COMMAND_CALLS = {
    CommandInput.DELIVER: lambda db, cid, agent: db.mark_delivered(cid, agent, 1000),
    CommandInput.ACK: lambda db, cid, agent: db.acknowledge(cid, agent),
    CommandInput.SUCCEED: lambda db, cid, agent: db.finish(cid, agent, "done", "{}"),
    CommandInput.FAIL: lambda db, cid, agent: db.finish(cid, agent, "failed", "{}"),
    CommandInput.CANCEL: lambda db, cid, agent: db.finish(cid, None, "cancelled", "{}"),
}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.lists(st.sampled_from(list(CommandInput)), max_size=8), max_size=12))
def test_the_database_follows_the_command_machine(
    tmp_path_factory: pytest.TempPathFactory, runs: list[list[CommandInput]]
) -> None:
    """Random inputs to a stored command and to the pure machine: the
    database changes the state exactly when the machine allows the input."""

    async def go() -> None:
        db = Database.sqlite(tmp_path_factory.mktemp("model") / "freight.db")
        await db.migrate()
        try:
            agent = await db.add_user("lab", "!", "agent")
            for events in runs:
                cid = await db.add_command(agent, "ping", "{}", "admin")
                machine = CommandLifecycle(CommandState.QUEUED)
                for event in events:
                    allowed = machine.allows(event)
                    changed = await _COMMAND_CALLS[event](db, cid, agent)
                    assert bool(changed) is allowed, (event, machine.state)
                    if allowed:
                        machine.handle(event, 0.0)
                    row = await db.get_command(cid)
                    assert row is not None and row.state is machine.state
        finally:
            await db.close()

    asyncio.run(go())
