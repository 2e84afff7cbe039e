"""The local job record and the digests both ends of a job compute."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, cast

import pytest

from freight.client.config import ClientConfig
from freight.client.jobmanners import RECEIVERS, ReceiveSide, Tapped, entries_digest
from freight.client.jobs import JobOutcome
from freight.client.jobstore import JobStore
from freight.client.options import QuietReporter
from freight.client.receiving import Destination, receive_entries
from freight.client.sendrecv import Entry, build_manifest, send_entries
from freight.errors import JobFailed, JobMismatch, NotFound
from freight.tasks import Supervisor


def test_store_records_attempts_and_finds_jobs(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        jid = store.new_job("ab" * 16, "send", "bob", "inbox", files=2, nbytes=10)
        store.record(jid, 1, "direct", "refused", "direct: not accepted here")
        store.begin_attempt(jid, 2)
        store.record(jid, 2, "relay", "accepted")
        store.record(jid, 2, "relay", "ok", nbytes=10)
        store.finish(jid, True, manner="relay", blake3="cd" * 32)
    with JobStore(tmp_path) as store:  # it lasts
        job = store.get(str(jid))
        assert store.get("abab").id == jid
        assert (job.state, job.manner, job.files, job.bytes) == ("ok", "relay", 2, 10)
        assert [(a.n, a.manner, a.verdict, a.reason) for a in job.attempts] == [
            (1, "direct", "refused", "direct: not accepted here"),
            (2, "relay", "ok", ""),
        ]
        assert job.attempts[1].bytes == 10
        assert job.attempts[1].elapsed >= 0
        assert [r.id for r in store.list()] == [jid]
        for ref in ("999", "ff", "%", "_"):
            with pytest.raises(NotFound, match="no job"):
                store.get(ref)


class Pipe:
    """One end of an in-memory message pipe (send/recv, b"" at the end)."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self.inbox, self.outbox = inbox, outbox

    async def send(self, data: bytes) -> None:
        await self.outbox.put(bytes(data))

    async def recv(self) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), 10)


def pipe() -> tuple[Pipe, Pipe]:
    a: asyncio.Queue[bytes] = asyncio.Queue(16)
    b: asyncio.Queue[bytes] = asyncio.Queue(16)
    return Pipe(a, b), Pipe(b, a)


async def move(src: list[Path], out: Path, entries: list[Entry] | None = None) -> Tapped:
    """send_entries to receive_entries through a tapped pipe."""
    here, there = pipe()
    tapped = Tapped(there)
    entries = build_manifest(src) if entries is None else entries
    async with Supervisor("test-move") as tasks:
        sending = tasks.spawn(send_entries(cast(Any, here), entries, QuietReporter()))
        await receive_entries(cast(Any, tapped), Destination.folder(out), QuietReporter())
        await asyncio.wait_for(sending, 10)
    return tapped


async def test_the_receiver_digests_the_tree_the_sender_declared(tmp_path: Path) -> None:
    src = tmp_path / "src" / "top"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))  # sent in chunks
    (src / "y.txt").write_bytes(b"y")  # in a batch
    (src / "empty").write_bytes(b"")
    entries = build_manifest([src])
    declared = entries_digest(entries)
    assert declared[0] == 3 * 1024 * 1024 + 6
    tapped = await move([src], tmp_path / "out")
    assert tapped.digest() == declared
    # Received again: every file is held already, and the digest is the same.
    again = await move([src], tmp_path / "out")
    assert again.digest() == declared
    # Another file content gives another digest.
    (src / "y.txt").write_bytes(b"z")
    assert entries_digest(build_manifest([src])) != declared


def test_a_receiver_without_a_hub_login_refuses_relay(tmp_path: Path) -> None:
    side = ReceiveSide(ClientConfig(tmp_path / "nobody"), None, tmp_path, QuietReporter())
    assert RECEIVERS["relay"](side).unavailable() == "no hub login on this host"


def test_outcome_lines_and_errors() -> None:
    ok = JobOutcome(3, "ab" * 16, "send", True, "direct", 12, 1288490189, "cd" * 32, "", 2.14)
    assert ok.line() == "job 3: 12 files, 1.2 GiB, BLAKE3 ok, by direct in 2.1 s"
    assert ok.check() is ok
    bad = JobOutcome(4, "ab" * 16, "send", False, error="mismatch: received 1 bytes")
    with pytest.raises(JobMismatch, match="job 4: mismatch"):
        bad.check()
    refused = JobOutcome(5, "ab" * 16, "send", False, error="no manner worked: relay: x")
    with pytest.raises(JobFailed) as exc:
        refused.check()
    assert not isinstance(exc.value, JobMismatch)
    assert exc.value.exit_code == 7
    # The next step names this job, not a placeholder.
    assert exc.value.hint == "see the attempts and their reasons: freight job show 5"
