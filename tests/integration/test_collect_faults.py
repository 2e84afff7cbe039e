"""Deduplicated collection under the faults a real deployment meets: hub
killed mid-collection, agent killed mid-upload, a file rewritten while it
is uploaded, a full disk, files deleted before their upload. (Split from
test_collect.py so the two halves can run on two test workers.)

Real hub processes, real ``freight agent run`` processes (each with its own
config folder and root), real CLI clients, loopback. Progress is watched
through ``collected stats`` (SDK polls), the hub's event log and its
``partial/`` folder, never by sleeping. The hub's Prometheus counter
``freight_bytes_received`` (stream payload written, since the hub process
started) is the independent measure of bytes that crossed, next to the
hub's own ``received_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.collectsetup import (
    RECEIVED,
    KiB,
    MiB,
    holders_by_digest,
    mid_stream,
    save_hub_log,
    setups,
    spread_files,
    start_agents,
)
from tests.collectsupport import (
    add_policy,
    blake3_of,
    cas_files,
    check_cas,
    contents,
    hub_events,
    hub_metric,
    poll,
    run_command,
    stats,
    wait_collected,
)
from tests.support import random_file


@pytest.fixture
def setup_factory(tmp_path: Path) -> Iterator[Any]:
    yield from setups(tmp_path)


# --- faults --------------------------------------------------------------------


def test_hub_killed_mid_collection_resumes(setup_factory: Any) -> None:
    """Killed (SIGKILL) while every agent is in the middle of an upload and
    some content is stored; restarted on the same port and data. Throttled
    (--bandwidth, before and after) so the kill lands mid-stream, with a
    checkpoint every 1 MiB. (A kill between an upload's end and the
    handling of its result is another matter: see the report of
    test_agent_killed_mid_upload_resumes.)"""
    hub_args = ("--bandwidth", "12M", "--checkpoint-interval", "1M")
    s = setup_factory(["lab-0", "lab-1", "lab-2"], *hub_args)
    size = 12 * MiB
    want = spread_files(s.agents, unique_each=2, shared=1, size=size)  # 7 contents
    add_policy(s.admin, "all", every="1h")
    start_agents(s)

    def all_mid_stream() -> bool:
        if not all(mid_stream(s.hub, a, 3 * MiB // 2, size - 3 * MiB) for a in s.agents):
            return False
        now = stats(s.admin)
        return now["unique_files"] >= 1 and now["pending"] > 0

    poll(all_mid_stream, 30, "some stored, every agent mid-upload", every=0.02)
    s.hub.kill()
    save_hub_log(s.hub)
    held = {d: p.stat().st_size for d, p in cas_files(s.hub).items()}
    partial = s.hub.partial_size()  # bytes of the three cut uploads on disk
    assert held, "the hub held nothing of the file"
    assert len(held) < len(want)
    s.hub.start()  # same data folder, same port, same options
    # An agent's uploads retry as FREIGHT_RETRY_INTERVAL says (agent/offers.py
    # reads the environment), here every 0.2 s: they resume at once.
    done = wait_collected(s.admin, len(want), 50, s.agents.values())
    assert set(check_cas(s.hub)) == set(want)
    assert done["failed"] == 0
    # The hub's account: each content once (a cut upload is counted when it completes).
    assert done["received_bytes"] == done["unique_bytes"] == sum(want.values())
    # The three cut uploads resumed from a checkpoint instead of starting over.
    resumes = hub_events(s.hub, "stream_resume")
    assert len({e["sid"] for e in resumes}) == 3, resumes
    assert all(e["checkpoint"] >= 1 * MiB for e in resumes), resumes
    # Payload that crossed in all: stored before + partials at the kill + after.
    wire = sum(held.values()) + partial + hub_metric(s.hub, RECEIVED)
    resent = wire - sum(want.values())
    back = datetime.fromisoformat(hub_events(s.hub, "hub_start")[0]["timestamp"])
    waited = [(datetime.fromisoformat(e["timestamp"]) - back).total_seconds() for e in resumes]
    print(
        f"\nhub kill: {len(held)}/{len(want)} stored, {partial} B in 3 partial uploads at "
        f"the kill; resumed at {sorted(e['checkpoint'] for e in resumes)}, "
        f"{min(waited):.1f}-{max(waited):.1f} s after the restart; {resent:.0f} B sent twice"
    )
    assert resent >= 0
    assert resent <= 3 * (1 * MiB + 256 * KiB)  # past the last checkpoint only


def test_agent_killed_mid_upload_resumes(setup_factory: Any) -> None:
    hub_args = ("--checkpoint-interval", "1M", "--bandwidth", "8M")
    s = setup_factory(["lab-0", "lab-1", "lab-2"], *hub_args)
    want = spread_files(s.agents, unique_each=10, shared=5, size=64 * KiB)
    big = random_file(s.agents["lab-1"].root / "big.bin", 16 * MiB, seed=77)
    want[blake3_of(big)] = big.stat().st_size
    add_policy(s.admin, "all", every="1h")
    start_agents(s)
    poll(lambda: mid_stream(s.hub, "lab-1", 3 * MiB, 12 * MiB), 30, "lab-1 mid-upload", 0.02)
    s.agents["lab-1"].kill()
    assert stats(s.admin)["pending"] > 0
    s.admin.run("admin", "bandwidth", "off")
    start_agents(s, "lab-1")
    done = wait_collected(s.admin, len(want), 15, s.agents.values())
    assert set(check_cas(s.hub)) == set(want)
    assert done["received_bytes"] == done["unique_bytes"] == sum(want.values())
    assert done["failed"] == 0
    # Nothing missing from the catalogue either: 10 + 5 files per agent, + big.
    assert sum(len(h) for h in holders_by_digest(s.admin).values()) == 3 * 15 + 1
    # The big file resumed from a checkpoint instead of starting over.
    resumes = [e for e in hub_events(s.hub, "stream_resume") if e["actor"] == "lab-1"]
    assert resumes and resumes[-1]["checkpoint"] >= 1 * MiB, resumes
    resent = hub_metric(s.hub, RECEIVED) - sum(want.values())
    assert resent >= 0
    assert resent <= 2 * MiB


def test_file_rewritten_during_its_upload_is_not_stored_under_the_old_digest(
    setup_factory: Any, tmp_path: Path
) -> None:
    """64 MiB uploaded at 4 MiB/s (the hub's --bandwidth: `agents cap` does
    not slow collection, see test_agent_cap_limits_its_collection_uploads),
    rewritten in place once 8 MiB have arrived. The agent rescans by itself
    (every 5 s): a `rescan` command sent while it uploads would be lost (see
    test_command_sent_while_the_agent_uploads_is_answered)."""
    s = setup_factory(["lab-0"], "--bandwidth", "4M")
    size = 64 * MiB
    big = random_file(s.agents["lab-0"].root / "big.bin", size, seed=5)
    old = blake3_of(big)
    v2 = random_file(tmp_path / "v2", size, seed=6)
    add_policy(s.admin, "all", every="5s")
    start_agents(s)
    poll(lambda: mid_stream(s.hub, "lab-0", 8 * MiB, 32 * MiB), 30, "the upload under way")
    with open(big, "r+b") as f:  # in place: what the agent reads changes under it
        f.write(v2.read_bytes())
    new = blake3_of(big)
    assert not hub_events(s.hub, "stream_end"), "the upload ended before the rewrite"
    s.admin.run("admin", "bandwidth", "off")
    done = wait_collected(s.admin, 1, 30, s.agents.values())
    store = check_cas(s.hub)  # every stored file matches its name
    assert set(store) == {new}
    assert store[new].read_bytes() == v2.read_bytes()
    rejected = hub_events(s.hub, "collect_rejected")
    assert [(e["digest"], e["reason"]) for e in rejected] == [
        (old, "content changed during the upload")
    ], rejected  # once: the path no longer counts as holding the old digest
    # Every upload is counted, the rejected one too.
    assert done["received_bytes"] == 2 * size
    print(f"\nrewrite: {len(rejected)} upload(s) of the old digest rejected; {done}")


def test_disk_reserve_pauses_uploads_until_restarted_with_room(setup_factory: Any) -> None:
    s = setup_factory(["lab-0"], "--collect-reserve", "100000T")
    root = s.agents["lab-0"].root
    want = contents(random_file(root / f"f{i}.bin", 20_000 + i, seed=i) for i in range(5))
    add_policy(s.admin, "all", every="10s")
    start_agents(s)

    def paused() -> bool:
        now = stats(s.admin)
        return now["paused_for_disk"] == 1 and now["pending"] == len(want)

    poll(paused, 20, "offers recorded, collection paused")
    assert set(holders_by_digest(s.admin)) == set(want)  # the offers are in the catalogue
    now = stats(s.admin)
    assert now["unique_files"] == 0 and now["received_bytes"] == 0
    assert hub_metric(s.hub, RECEIVED) == 0 and not cas_files(s.hub)
    assert not hub_events(s.hub, "stream_start")
    s.hub.stop()
    save_hub_log(s.hub)
    s.hub.extra = []  # the default reserve (1 GiB)
    s.hub.start()
    done = wait_collected(s.admin, len(want), 30, s.agents.values())
    assert done["paused_for_disk"] == 0
    assert done["received_bytes"] == done["unique_bytes"] == sum(want.values())
    assert set(check_cas(s.hub)) == set(want)


def test_files_deleted_before_their_upload_leave_nothing_pending(setup_factory: Any) -> None:
    """Offered while the hub's disk is low (so nothing is uploaded yet), then
    deleted; one new file offered after them: the 200 are 'superseded', not
    pending, and do not starve the new one (the scheduler looks at the 200
    oldest wanted rows at a time)."""
    s = setup_factory(["lab-0"], "--collect-reserve", "100000T")
    root = s.agents["lab-0"].root
    gone = [random_file(root / f"old{i}.bin", 1000 + i, seed=i) for i in range(200)]
    add_policy(s.admin, "all", every="1h")
    start_agents(s)
    poll(lambda: stats(s.admin)["pending"] == 200, 20, "200 offers recorded")
    for p in gone:
        p.unlink()
    keep = random_file(root / "keep.bin", 5000, seed=999)
    assert run_command(s.admin, "lab-0", "rescan")["state"] == "done"
    poll(lambda: set(holders_by_digest(s.admin)) == {blake3_of(keep)}, 20, "the deletions known")
    s.hub.stop()
    save_hub_log(s.hub)
    s.hub.extra = []
    s.hub.start()
    done = wait_collected(s.admin, 1, 15, s.agents.values())
    assert set(check_cas(s.hub)) == {blake3_of(keep)}
    assert done["pending"] == 0
