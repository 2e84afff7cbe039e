"""The local record of transfer jobs (``freight job show|list``): SQLite in
the config folder, ``jobs.sqlite``. A job has a short number local to this
host and its global id; each attempt its manner, verdict, reason, start,
elapsed time and bytes."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotFound, StorageError

KEEP_JOBS = 10_000  # the newest jobs kept in the record

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    peer TEXT NOT NULL,
    app TEXT NOT NULL,
    state TEXT NOT NULL,
    manner TEXT NOT NULL DEFAULT '',
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    blake3 TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL,
    elapsed REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    job INTEGER NOT NULL REFERENCES jobs(id),
    n INTEGER NOT NULL,
    manner TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL,
    elapsed REAL NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, n)
);
"""


@dataclass
class Attempt:
    n: int
    manner: str
    verdict: str
    reason: str
    started: float
    elapsed: float
    bytes: int


@dataclass
class JobRow:
    id: int
    uuid: str
    role: str
    peer: str
    app: str
    state: str
    manner: str
    files: int
    bytes: int
    blake3: str
    error: str
    started: float
    elapsed: float
    attempts: list[Attempt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["attempts"] = [dict(a.__dict__) for a in self.attempts]
        return out


class JobStore:
    """One connection to ``root``/jobs.sqlite (writes are small and few:
    made on the event loop's thread)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "jobs.sqlite"
        self._begun: dict[tuple[int, int], float] = {}  # (job, n) -> monotonic start
        self._job_begun: dict[int, float] = {}
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the job record {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"the job record {self.path} failed: {exc}") from None

    def new_job(
        self, uuid: str, role: str, peer: str, app: str, *, files: int = 0, nbytes: int = 0
    ) -> int:
        cur = self._run(
            "INSERT INTO jobs (uuid, role, peer, app, state, files, bytes, started) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
            (uuid, role, peer, app, files, nbytes, time.time()),
        )
        jid = int(cur.lastrowid or 0)
        self._job_begun[jid] = time.monotonic()
        if jid > KEEP_JOBS and jid % 100 == 0:  # the record stays bounded
            self._run("DELETE FROM attempts WHERE job <= ?", (jid - KEEP_JOBS,))
            self._run("DELETE FROM jobs WHERE id <= ?", (jid - KEEP_JOBS,))
        return jid

    def update_totals(self, jid: int, files: int, nbytes: int) -> None:
        self._run("UPDATE jobs SET files = ?, bytes = ? WHERE id = ?", (files, nbytes, jid))

    def record(
        self, jid: int, n: int, manner: str, verdict: str, reason: str = "", nbytes: int = 0
    ) -> None:
        """Attempt ``n``'s verdict: the first one starts the attempt's row,
        later ones (accepted, then ok or failed) update it."""
        now = time.monotonic()
        begun = self._begun.setdefault((jid, n), now)
        self._run(
            "INSERT INTO attempts (job, n, manner, verdict, reason, started, elapsed, bytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job, n) DO UPDATE SET "
            "verdict = excluded.verdict, reason = excluded.reason, "
            "elapsed = excluded.elapsed, bytes = excluded.bytes",
            (jid, n, manner, verdict, reason, time.time() - (now - begun), now - begun, nbytes),
        )

    def begin_attempt(self, jid: int, n: int) -> None:
        """The attempt's clock starts now (before any verdict)."""
        self._begun[(jid, n)] = time.monotonic()

    def finish(
        self, jid: int, ok: bool, *, manner: str = "", error: str = "", blake3: str = ""
    ) -> float:
        """The job's end; returns its elapsed seconds."""
        elapsed = time.monotonic() - self._job_begun.get(jid, time.monotonic())
        self._run(
            "UPDATE jobs SET state = ?, manner = ?, error = ?, blake3 = ?, elapsed = ? "
            "WHERE id = ?",
            ("ok" if ok else "failed", manner, error, blake3, elapsed, jid),
        )
        return elapsed

    def get(self, ref: str) -> JobRow:
        """A job by its local number or its global id (or a prefix of it)."""
        if ref.isdigit() and len(ref) < 12:
            rows = self._run("SELECT * FROM jobs WHERE id = ?", (int(ref),)).fetchall()
        elif re.fullmatch(r"[0-9a-f]{4,32}", ref):
            rows = self._run(
                "SELECT * FROM jobs WHERE substr(uuid, 1, ?) = ? LIMIT 2", (len(ref), ref)
            ).fetchall()
        else:
            rows = []
        if len(rows) != 1:
            raise NotFound(f"no job {ref!r} in {self.path}", hint="see: freight job list")
        job = JobRow(*rows[0])
        for a in self._run(
            "SELECT n, manner, verdict, reason, started, elapsed, bytes FROM attempts "
            "WHERE job = ? ORDER BY n",
            (job.id,),
        ):
            job.attempts.append(Attempt(*a))
        return job

    def list(self, limit: int = 50) -> list[JobRow]:
        rows = self._run("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [JobRow(*r) for r in rows]
