"""Fill a hub data folder's database for the console's queries: 10,000
agents and 1,000,000 events with realistic kinds, actors, agents,
addresses and details, by bulk inserts (well under two minutes).

    python bench/console_seed.py DATA [--agents 10000] [--events 1000000]

The schema is made by the hub's own migrations; rows go in through
SQLite directly, many thousand per transaction, with the full-text index
filled by its trigger as the hub fills it. The event log spans the last 30
days, oldest first; exactly one event mentions the rare word ``quokka``
(bench/console_queries.py searches for it). Then ``freight hub --data DATA``
serves it (bench/console_queries.py measures the console's requests)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
from pathlib import Path

from freight.hub.auth import hash_password
from freight.store import Database, DataLayout
from freight.store.eventcols import event_address, event_agent

RARE = "quokka"
ADMIN_PASSWORD = "console-bench-password"  # bench/console_queries.py logs in with it
BATCH = 50_000

# Kind, share of the log, and how its actor and detail are made.
KINDS = (
    ("agent_login", 0.40),
    ("login", 0.08),
    ("login_failure", 0.03),
    ("stream_start", 0.08),
    ("stream_end", 0.08),
    ("pull_start", 0.04),
    ("pull_end", 0.04),
    ("command_queued", 0.05),
    ("command_done", 0.05),
    ("connection_open", 0.05),
    ("connection_closed", 0.05),
    ("collect_stored", 0.04),
    ("security", 0.005),
    ("agent_login_failure", 0.005),
)
USERS = [f"user{i:03d}" for i in range(200)] + ["admin"]
WORDS = ("report", "invoice", "backup", "photo", "logs", "dump", "archive", "scan", "build", "data")


def agent_name(i: int) -> str:
    return f"lab-{i:05d}"


def address(rnd: random.Random) -> str:
    return f"10.{rnd.randrange(4)}.{rnd.randrange(40)}.{rnd.randrange(1, 255)}"


def event(rnd: random.Random, kind: str, agents: int) -> tuple[str, dict[str, object]]:
    """(actor, detail) of one event of ``kind``."""
    agent = agent_name(rnd.randrange(agents))
    user = rnd.choice(USERS)
    name = f"{rnd.choice(WORDS)}/{rnd.choice(WORDS)}-{rnd.randrange(10**6)}.bin"
    sid = f"{rnd.getrandbits(64):016x}"
    if kind in ("agent_login", "agent_login_failure"):
        addr = address(rnd)
        d: dict[str, object] = {"address": addr}
        if kind == "agent_login_failure":
            d["reason"] = "bad signature"
        return agent, d
    if kind in ("login", "login_failure"):
        addr = address(rnd)
        return user, {"address": addr}
    if kind in ("stream_start", "stream_end", "pull_start", "pull_end"):
        d = {"sid": sid, "name": name, "size": rnd.randrange(1, 10**9)}
        if kind == "stream_end":
            d["digest"] = f"{rnd.getrandbits(256):064x}"
        if kind == "pull_end":
            d = {"sid": sid, "name": name, "verified": True}
        return user, d
    if kind == "command_queued":
        return "admin", {"agent": agent, "id": rnd.randrange(10**6), "command": "get"}
    if kind == "command_done":
        return agent, {"id": rnd.randrange(10**6)}
    if kind in ("connection_open", "connection_closed"):
        d = {"cid": sid, "to": rnd.choice(USERS), "app": rnd.choice(("ssh", "db", "code:"))}
        if kind == "connection_closed":
            d = {"cid": sid, "code": "closed", "by": "peer", "bytes": rnd.randrange(10**8)}
        return user, d
    if kind == "collect_stored":
        return agent, {"digest": f"{rnd.getrandbits(256):064x}", "reason": ""}
    d = {"op": "get", "path": f"/etc/{rnd.choice(WORDS)}", "peer": user, "reason": "outside roots"}
    return agent, d


def seed(data: Path, agents: int, events: int, seed_value: int = 1) -> None:
    layout = DataLayout(data)
    layout.create()
    layout.create_database()

    async def migrate() -> None:
        db = Database.sqlite(layout.db_path)
        await db.migrate()
        if await db.user_by_name("admin") is None:
            await db.add_user("admin", hash_password(ADMIN_PASSWORD), "admin")
        await db.close()

    asyncio.run(migrate())
    rnd = random.Random(seed_value)
    con = sqlite3.connect(layout.db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")  # 256 MiB
    now = time.time()
    t0 = time.monotonic()
    with con:
        first = (con.execute("SELECT COALESCE(MAX(id), 0) FROM users").fetchone()[0]) + 1
        con.executemany(
            "INSERT INTO users (id, name, pw_hash, role, disabled, created, quota) "
            "VALUES (?, ?, '!', 'agent', 0, ?, 0)",
            [(first + i, agent_name(i), now - 86400 * 60) for i in range(agents)],
        )
        con.executemany(
            "INSERT INTO agents (user_id, enrolled, last_seen, version, address, cap) "
            "VALUES (?, ?, ?, '0.1.0', ?, 0)",
            [
                (first + i, now - 86400 * 60, now - rnd.randrange(86400 * 30), address(rnd))
                for i in range(agents)
            ],
        )
    print(f"{agents} agents in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    # Indexes and the full-text trigger are dropped for the bulk insert and
    # made again after it (one sorted build each instead of a million
    # random inserts), exactly as the migration made them.
    saved = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'events' "
        "AND type IN ('index', 'trigger') AND sql IS NOT NULL"
    ).fetchall()
    with con:
        for name, sql in saved:
            kind = "TRIGGER" if sql.upper().startswith("CREATE TRIGGER") else "INDEX"
            con.execute(f"DROP {kind} {name}")
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    span = 30 * 86400.0
    rare_at = events // 2
    done = 0
    while done < events:
        n = min(BATCH, events - done)
        chosen = rnd.choices(kinds, weights, k=n)
        rows = []
        for j, kind in enumerate(chosen):
            i = done + j
            actor, detail = event(rnd, kind, agents)
            if i == rare_at:
                detail["note"] = f"seen a {RARE} near the rack"
            ts = now - span + span * i / events
            agent, addr = event_agent(kind, actor, detail), event_address(detail)
            rows.append((ts, kind, actor, json.dumps(detail), agent, addr))
        with con:
            con.executemany(
                "INSERT INTO events (ts, kind, actor, detail, agent, address) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        done += n
        print(f"\r{done} events, {time.monotonic() - t0:.1f} s", end="", file=sys.stderr)
    print(f"\nadmin password: {ADMIN_PASSWORD}", end="", file=sys.stderr)
    print(file=sys.stderr)
    with con:
        for _name, sql in saved:
            con.execute(sql)
        if any(name == "events_fts_insert" for name, _ in saved):
            con.execute("INSERT INTO events_fts(events_fts) VALUES ('rebuild')")
    print(f"indexes made again, {time.monotonic() - t0:.1f} s", file=sys.stderr)
    con.execute("ANALYZE")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    print(f"seeded {data} in {time.monotonic() - t0:.1f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="the hub's data folder (made if missing)")
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    seed(args.data, args.agents, args.events)


if __name__ == "__main__":
    main()
