"""What the CLI prints arrives whole, whatever reads it: a reader slower than
the command, a pipe someone else made non-blocking. Real hub, real CLI
processes; the answer is large (over 600 KB, ten times a pipe's buffer)."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import termios
import time

import pytest

from tests.support import PYTHON, Client, Hub, wait_until

ROWS = 1000  # the most `admin events --limit` shows
PIPE_BUFFER = 65536  # Linux's default pipe capacity
# Short writes share pages: a pipe fed lines can be full a little below it.
FULL = PIPE_BUFFER - 4096


@pytest.fixture(scope="module")
def busy(shared_hub: Hub, shared_client: Client) -> Client:
    """A hub whose event log holds ROWS long events (written straight into
    its database: producing them through the API would take minutes)."""
    db = sqlite3.connect(shared_hub.data / "freight.db")
    with db:
        db.executemany(
            "INSERT INTO events (ts, kind, actor, detail) VALUES (?, ?, ?, ?)",
            [
                (time.time(), "test_filler", "nobody", json.dumps({"n": i, "pad": "x" * 600}))
                for i in range(ROWS)
            ],
        )
    db.close()
    return shared_client


def queued(fd: int) -> int:
    """Bytes waiting in the pipe behind ``fd``."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")


def read_slowly(client: Client, *args: str, env: dict[str, str] | None = None) -> bytes:
    """Run ``freight ARGS`` into a pipe that nobody reads until it is full
    and a second has passed, as `freight ... | (sleep 2; wc -c)` does."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [PYTHON, "-m", "freight", *args],
            env={**client.env, **(env or {})},
            stdout=w,
            stderr=subprocess.PIPE,
        )
        os.close(w)
        w = -1
        wait_until(lambda: queued(r) >= FULL or proc.poll() is not None, 60, "the pipe to fill")
        time.sleep(1.0)  # the slow reader under test, not a wait for an event
        chunks = []
        with os.fdopen(r, "rb", closefd=False) as f:
            while block := f.read(1 << 16):
                chunks.append(block)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        return b"".join(chunks)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# PYTHONUNBUFFERED=1 (set in many container images) gives sys.stdout no
# buffer that would retry a short write; without it the same writes go
# through CPython's BufferedWriter.
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["PYTHONUNBUFFERED", "buffered"])
def test_json_answer_arrives_whole_through_a_slow_reader(busy: Client, unbuffered: str) -> None:
    fast = busy.run("admin", "events", "--limit", str(ROWS), "--json").stdout.encode()
    assert len(fast) > 10 * PIPE_BUFFER
    got = read_slowly(
        busy,
        "admin",
        "events",
        "--limit",
        str(ROWS),
        "--json",
        env={"PYTHONUNBUFFERED": unbuffered},
    )
    assert len(got) == len(fast)
    assert len(json.loads(got)) == ROWS


def test_table_output_arrives_whole_through_a_slow_reader(busy: Client) -> None:
    fast = busy.run("admin", "events", "--limit", str(ROWS)).stdout.encode()
    got = read_slowly(busy, "admin", "events", "--limit", str(ROWS), env={"PYTHONUNBUFFERED": "1"})
    assert got.count(b"\n") == fast.count(b"\n") >= ROWS
    assert len(got) == len(fast)


def test_output_into_a_non_blocking_pipe_arrives_whole(busy: Client) -> None:
    """A pipe whose other users made it O_NONBLOCK (the flag belongs to the
    pipe, not to one process): every write the pipe cannot take at once
    waits instead of failing or being dropped."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        proc = subprocess.Popen(
            [PYTHON, "-m", "freight", "admin", "events", "--limit", str(ROWS), "--json"],
            env=busy.env,
            stdout=w,
            stderr=subprocess.PIPE,
        )
        os.close(w)
        w = -1
        wait_until(lambda: queued(r) >= FULL or proc.poll() is not None, 60, "the pipe to fill")
        chunks = []
        with os.fdopen(r, "rb", closefd=False) as f:
            while block := f.read(4096):  # small reads: the writer waits often
                chunks.append(block)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert len(json.loads(b"".join(chunks))) == ROWS
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
