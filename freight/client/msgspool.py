"""A messaging host's on-disk state: the spool of messages whose final
answer is not known yet, and the ids of messages it has answered (its dedupe
window), in one SQLite file (WAL) in the config folder.

Writes are batched: they gather during one turn of the event loop (at most
:data:`BATCH` rows) and are committed together; :meth:`Spool.add` returns
once its row is committed, so a message is on disk before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import StorageError

BATCH: Final = 256
SEEN_KEEP_SECONDS: Final = 600.0
SEEN_KEEP_IDS: Final = 100_000

# Both tables are keyed by their row number alone and written at their end:
# a row costs one B-tree, not three (a table with a text key and an index on
# time wrote three, and the spool's commits were a quarter of a receiving
# host's CPU per message). A spooled row is removed by its number (kept in
# memory by id); the answered ids are read whole at start and pruned by
# number and age.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, dest TEXT NOT NULL, app TEXT NOT NULL,
    type INTEGER NOT NULL, ticket TEXT NOT NULL, from_ticket TEXT NOT NULL,
    reply_to TEXT NOT NULL, body BLOB NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS answered (
    n INTEGER PRIMARY KEY, id TEXT NOT NULL, at REAL NOT NULL, count INTEGER NOT NULL,
    reason TEXT NOT NULL);
"""
# A spool written by an earlier release (outbox and seen, keyed by id).
_UPGRADE = """
INSERT INTO spool (seq, id, dest, app, type, ticket, from_ticket, reply_to, body, expires)
    SELECT seq, id, dest, app, type, ticket, from_ticket, reply_to, body, expires
    FROM outbox ORDER BY seq;
INSERT INTO answered (id, at, count, reason) SELECT id, at, count, reason FROM seen ORDER BY at;
DROP TABLE outbox;
DROP TABLE seen;
"""


@dataclass(frozen=True, slots=True)
class Spooled:
    """A message accepted from an application and not answered finally;
    ``expires`` is wall-clock time (it must survive a restart)."""

    id: str
    dest: str
    app: str
    type: int
    ticket: str
    from_ticket: str
    reply_to: str
    body: bytes
    expires: float


class Spool:
    """The SQLite file; every method runs on the event loop's thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            old = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
            ).fetchone()[0]
            if old:
                self._db.executescript(f"BEGIN; {_UPGRADE} COMMIT;")
            last = self._db.execute("SELECT max(seq) FROM spool").fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the message spool {path}: {exc}") from None
        self._ops: list[tuple[str, tuple[object, ...]]] = []
        self._waiters: list[Callable[[StorageError | None], None]] = []
        self._scheduled = False
        self._seq = last or 0
        self._seqs: dict[str, int] = {}  # id -> row number, of the rows spooled
        self._seen_added = 0
        self.commits = 0

    # --- reading at start ----------------------------------------------------------

    def left(self) -> list[Spooled]:
        """Messages a previous run accepted and never saw answered, oldest first."""
        rows = self._db.execute(
            "SELECT id, dest, app, type, ticket, from_ticket, reply_to, body, expires, seq "
            "FROM spool ORDER BY seq"
        ).fetchall()
        for r in rows:
            self._seqs[r[0]] = r[9]
        return [Spooled(*r[:9]) for r in rows]

    def seen(self, now: float) -> list[tuple[str, float, int, str]]:
        """(id, wall time, count, reason) of the answered ids worth keeping,
        in the order they were answered."""
        self._prune(now)
        return self._db.execute("SELECT id, at, count, reason FROM answered ORDER BY n").fetchall()

    def _prune(self, now: float) -> None:
        """Forget the answered ids that are neither among the last
        SEEN_KEEP_IDS nor younger than SEEN_KEEP_SECONDS."""
        self._db.execute(
            "DELETE FROM answered WHERE n <= (SELECT max(n) FROM answered) - ? AND at < ?",
            (SEEN_KEEP_IDS, now - SEEN_KEEP_SECONDS),
        )

    # --- batched writes ---------------------------------------------------------------

    async def add(self, msg: Spooled) -> None:
        """Store ``msg``; returns once it is committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def then(error: StorageError | None) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        self.add_then(msg, then)
        await fut

    def add_then(self, msg: Spooled, then: Callable[[StorageError | None], None]) -> None:
        """Store ``msg``; ``then`` is called once it is committed (with
        None) or could not be (with the error)."""
        self._seq += 1
        self._seqs[msg.id] = self._seq
        self._waiters.append(then)
        self._queue("add", (self._seq, *_row(msg)))

    def remove(self, mid: str) -> None:
        seq = self._seqs.pop(mid, None)
        if seq is not None:  # (None: not spooled by this run or the last)
            self._queue("del", (seq,))

    def answered(self, mid: str, count: int, reason: str) -> None:
        self._queue("seen", (mid, time.time(), count, reason))

    def _queue(self, op: str, args: tuple[object, ...]) -> None:
        self._ops.append((op, args))
        if len(self._ops) >= BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit every write gathered so far (in order, one transaction)."""
        self._scheduled = False
        ops, waiters = self._ops, self._waiters
        if not ops:
            return
        self._ops, self._waiters = [], []
        error: StorageError | None = None
        try:
            db = self._db
            db.execute("BEGIN")
            # Runs of one kind in one statement each, in order.
            for op, run in itertools.groupby(ops, key=_kind):
                rows = [args for _, args in run]
                db.executemany(_SQL[op], rows)
                if op == "seen":
                    self._seen_added += len(rows)
            if self._seen_added >= SEEN_KEEP_IDS // 4:
                self._seen_added = 0
                self._prune(time.time())
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            error = StorageError(f"cannot write the message spool {self.path}: {exc}")
        for then in waiters:
            then(error)

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


_SQL: Final = {
    "add": "INSERT INTO spool VALUES (?,?,?,?,?,?,?,?,?,?)",
    "del": "DELETE FROM spool WHERE seq = ?",
    "seen": "INSERT INTO answered (id, at, count, reason) VALUES (?,?,?,?)",
}


def _kind(op: tuple[str, tuple[object, ...]]) -> str:
    return op[0]


def _row(msg: Spooled) -> tuple[object, ...]:
    return (
        msg.id,
        msg.dest,
        msg.app,
        msg.type,
        msg.ticket,
        msg.from_ticket,
        msg.reply_to,
        msg.body,
        msg.expires,
    )
