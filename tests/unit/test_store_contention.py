"""A crowd of agents attaching at once to one hub on SQLite: every attach
writes (enrolment, login token, last seen, event log) while the hub's one
event loop is busy with the others' handshakes. SQLite admits one writer
at a time; a write that waits longer than the busy timeout fails with
"database is locked" and the agent's attach fails with it. The busy
timeout is shortened here (0.2 s instead of 10 s) so that what a crowd of
thousands does to the production timeout shows with a few hundred."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from pathlib import Path

from freight.store import Database

AGENTS = 300
BUSY_TIMEOUT = 0.2  # seconds; the hub's is 10


def busy_loop(ms: float) -> None:
    """The event loop busy with other work (TLS handshakes, JSON) for ``ms``."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        hashlib.sha256(b"x" * 1024).digest()


async def test_hundreds_of_concurrent_attaches_all_get_their_writes_in(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "freight.db", busy_timeout=BUSY_TIMEOUT)
    await db.migrate()
    try:
        tokens = [secrets.token_hex(16) for _ in range(AGENTS)]
        for i, token in enumerate(tokens):
            await db.add_enrol_token(token, f"pc-{i}", time.time() + 600)
        failures: list[str] = []

        async def attach(i: int) -> None:
            try:
                busy_loop(2)
                enrolled = await db.enrol_agent(tokens[i], secrets.token_hex(32), time.time())
                assert enrolled[0] == f"pc-{i}", enrolled
                user_id = int(enrolled[1])
                busy_loop(2)
                await db.add_token(secrets.token_hex(32), user_id, time.time() + 3600)
                await db.touch_agent(user_id, "freight-agent/test", "127.0.0.1")
                await db.add_event("agent_login", f"pc-{i}", {"address": "127.0.0.1"})
            except Exception as exc:  # what the attach would have answered
                failures.append(f"pc-{i}: {exc}".splitlines()[0])

        await asyncio.wait_for(asyncio.gather(*(attach(i) for i in range(AGENTS))), 120)
        assert failures == [], f"{len(failures)} of {AGENTS} attaches failed: {failures[:3]}"
        agents = await db.list_agents()
        assert len(agents) == AGENTS
        assert all(a.last_seen > 0 for a in agents)
        assert len(await db.list_events("agent_login", limit=AGENTS + 1)) == AGENTS
    finally:
        await db.close()
