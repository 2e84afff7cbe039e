"""The messaging spool: rows are committed before add() returns, in batches
(one commit per loop turn, at most 256 rows), what a stopped run left is read
back in order, and answered ids are remembered across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from freight.client import msgspool
from freight.client.msgspool import BATCH, Spool, Spooled


def row(i: int, expires: float = 0.0) -> Spooled:
    return Spooled(
        f"{i:032x}",
        "bob",
        "sensors",
        0x10000,
        "",
        "",
        "",
        b"body %d" % i,
        expires or time.time() + 30,
    )


async def test_adds_are_committed_in_batches(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "msgspool.db")
    await asyncio.wait_for(asyncio.gather(*(spool.add(row(i)) for i in range(1000))), 10)
    # 1000 rows: at most 256 per commit, so at least four commits, and
    # far fewer than one per row.
    assert spool.commits >= 1000 // BATCH
    assert spool.commits < 20
    spool.close()
    again = Spool(tmp_path / "msgspool.db")
    left = again.left()
    assert [r.id for r in left] == [f"{i:032x}" for i in range(1000)]
    assert left[7] == row(7, left[7].expires)
    again.close()
    assert stat.S_IMODE(os.stat(tmp_path / "msgspool.db").st_mode) == 0o600


async def test_removed_rows_are_not_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "msgspool.db")
    for i in range(5):
        await spool.add(row(i))
    spool.remove(row(1).id)
    spool.remove(row(3).id)
    spool.close()
    again = Spool(tmp_path / "msgspool.db")
    assert [r.id for r in again.left()] == [row(0).id, row(2).id, row(4).id]
    again.close()


async def test_answered_ids_are_remembered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "msgspool.db")
    spool.answered("a" * 32, 3, "")
    spool.answered("b" * 32, 0, "no_interest")
    spool.close()
    again = Spool(tmp_path / "msgspool.db")
    seen = {mid: (count, reason) for mid, _, count, reason in again.seen(time.time())}
    assert seen == {"a" * 32: (3, ""), "b" * 32: (0, "no_interest")}
    # An hour later both are still kept: the newest 100,000 ids stay at any age.
    assert len(again.seen(time.time() + 3600)) == 2
    again.close()


async def test_old_answered_ids_are_pruned_beyond_the_newest_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(msgspool, "SEEN_KEEP_IDS", 3)
    spool = Spool(tmp_path / "msgspool.db")
    for i in range(5):
        spool.answered(f"{i:032x}", 1, "")
    spool.close()
    again = Spool(tmp_path / "msgspool.db")
    # Within the window every id is kept; past it, only the newest three.
    assert [r[0] for r in again.seen(time.time())] == [f"{i:032x}" for i in range(5)]
    later = [r[0] for r in again.seen(time.time() + msgspool.SEEN_KEEP_SECONDS + 1)]
    assert later == [f"{i:032x}" for i in range(2, 5)]
    again.close()


async def test_a_spool_of_an_earlier_release_is_carried_over(tmp_path: Path) -> None:
    """Its messages are left to send in their order, its answered ids kept,
    and removing one of its messages works as for any other."""
    path = tmp_path / "msgspool.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE outbox (id TEXT PRIMARY KEY, dest TEXT NOT NULL, app TEXT NOT NULL,"
            " type INTEGER NOT NULL, ticket TEXT NOT NULL, from_ticket TEXT NOT NULL,"
            " reply_to TEXT NOT NULL, body BLOB NOT NULL, expires REAL NOT NULL,"
            " seq INTEGER NOT NULL);"
            "CREATE TABLE seen (id TEXT PRIMARY KEY, at REAL NOT NULL, count INTEGER NOT NULL,"
            " reason TEXT NOT NULL);"
            "CREATE INDEX seen_at ON seen (at);"
        )
        for i, seq in ((1, 9), (0, 4), (2, 12)):
            r = row(i)
            db.execute(
                "INSERT INTO outbox VALUES (?,?,?,?,?,?,?,?,?,?)",
                (r.id, r.dest, r.app, r.type, r.ticket, r.from_ticket, r.reply_to, r.body,
                 r.expires, seq),
            )  # fmt: skip
        db.execute("INSERT INTO seen VALUES (?,?,?,?)", ("e" * 32, time.time(), 2, ""))
    spool = Spool(path)
    left = spool.left()
    assert [r.id for r in left] == [row(0).id, row(1).id, row(2).id]
    assert left[1] == row(1, left[1].expires)
    assert [(r[0], r[2]) for r in spool.seen(time.time())] == [("e" * 32, 2)]
    spool.remove(row(1).id)
    await spool.add(row(3))
    spool.close()
    again = Spool(path)
    assert [r.id for r in again.left()] == [row(0).id, row(2).id, row(3).id]
    tables = {n for (n,) in again._db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"spool", "answered"}
    again.close()


def test_message_ids_are_unique_random_hex_and_not_shared_with_a_forked_child() -> None:
    import os
    import re

    from freight.client.msgsend import _new_id

    ids = [_new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(w, "".join(_new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        child = f.read()
    ours = "".join(_new_id() for _ in range(10))
    assert len(child) == len(ours) == 320
    assert child != ours
