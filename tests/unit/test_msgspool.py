"""The messaging spool: rows are committed before add() returns, in batches
(one commit per loop turn, at most 256 rows), what a stopped run left is read
back in order, and answered ids are remembered across a restart."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

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
