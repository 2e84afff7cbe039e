"""Deduplicated collection end to end: policies selecting files on agents,
offers, one upload per unique content into the hub's content-addressed
store, incremental rescans, an agent that is offline when a command is
queued, a per-agent cap, content given up and offered again, a command
sent during an upload. The faults a real deployment meets (hub killed
mid-collection, agent killed mid-upload, a file rewritten while it is
uploaded, a full disk) are in test_collect_faults.py.

Real hub processes, real ``freight agent run`` processes (each with its own
config folder and root), real CLI clients, loopback. Progress is watched
through ``collected stats`` (SDK polls), the hub's event log and its
``partial/`` folder, never by sleeping. The hub's Prometheus counter
``freight_bytes_received`` (stream payload written, since the hub process
started) is the independent measure of bytes that crossed, next to the
hub's own ``received_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.authsupport import rest, token_of
from tests.collectsetup import (
    RECEIVED,
    KiB,
    MiB,
    Setup,
    holders_by_digest,
    mid_stream,
    save_hub_log,
    setups,
    start_agents,
    start_setup,
    stop_setup,
)
from tests.collectsupport import (
    AgentProc,
    add_policy,
    api,
    blake3_of,
    catalogue,
    check_cas,
    enroll_agents,
    hub_events,
    hub_metric,
    poll,
    run_command,
    stats,
    wait_collected,
)
from tests.integration.test_logins import agent_login, enrol
from tests.support import Client, Hub, random_file


@pytest.fixture
def setup_factory(tmp_path: Path) -> Iterator[Any]:
    yield from setups(tmp_path)


# --- three agents with overlapping files (shared by the first tests) ------------

MAX_SIZE = 256 * KiB
# Contents by key: size (each key's bytes are the same wherever it appears).
SIZES = {
    "S0": 100_000,  # on all three agents, under different names
    "S1": 60_000,  # on lab-0 and lab-1
    "S2": 150_001,  # on lab-1 and lab-2
    "S3": 33_333,  # twice on lab-0 itself
    "OWN0": 70_000,  # same path on each agent, different bytes
    "OWN1": 70_001,
    "OWN2": 70_002,
    "EDGE": MAX_SIZE,  # exactly --max-size: taken
    "EMPTY": 0,  # empty files on two agents
    "HUGE": MAX_SIZE + 1,  # above --max-size: left
    "TMP": 40_000,  # a .jpg below the excluded tmp/
    "NOTE0": 5_000,  # not a .jpg
    "NOTE1": 5_001,
    "NOTE2": 5_002,
}
# (agent, path below its root, content key, taken by the policy?)
CORPUS = [
    ("lab-0", "pics/s0.jpg", "S0", True),
    ("lab-1", "pics/s0.jpg", "S0", True),
    ("lab-2", "deep/a/b/copy of s0.jpg", "S0", True),
    ("lab-0", "pics/s1.jpg", "S1", True),
    ("lab-1", "x/renamed.jpg", "S1", True),
    ("lab-1", "pics/s2.jpg", "S2", True),
    ("lab-2", "pics/s2.jpg", "S2", True),
    ("lab-0", "pics/dup1.jpg", "S3", True),
    ("lab-0", "other/dup2.jpg", "S3", True),
    ("lab-0", "pics/own.jpg", "OWN0", True),
    ("lab-1", "pics/own.jpg", "OWN1", True),
    ("lab-2", "pics/own.jpg", "OWN2", True),
    ("lab-2", "pics/edge.jpg", "EDGE", True),
    ("lab-0", "pics/empty.jpg", "EMPTY", True),
    ("lab-2", "empty.jpg", "EMPTY", True),
    ("lab-1", "pics/huge.jpg", "HUGE", False),
    ("lab-0", "tmp/cache.jpg", "TMP", False),
    ("lab-0", "tmp/s0.jpg", "S0", False),  # S0 is taken, but not from here
    ("lab-0", "notes.txt", "NOTE0", False),
    ("lab-1", "pics/s1.jpeg", "S1", False),  # S1 is taken, but not from here
    ("lab-2", "notes.txt", "NOTE2", False),
]


def write_corpus(agents: dict[str, AgentProc], work: Path) -> dict[str, Path]:
    """Each content written once to ``work`` and copied where CORPUS puts it."""
    master = {}
    for i, (key, size) in enumerate(SIZES.items()):
        master[key] = random_file(work / key, size, seed=1000 + i)
    for agent, rel, key, _taken in CORPUS:
        dst = agents[agent].root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(master[key].read_bytes())
    return master


@dataclass
class Trio:
    setup: Setup
    master: dict[str, Path]  # content key -> its bytes
    digest: dict[str, str]  # content key -> BLAKE3

    @property
    def admin(self) -> Client:
        return self.setup.admin

    @property
    def hub(self) -> Hub:
        return self.setup.hub

    def path(self, agent: str, rel: str) -> str:
        return str(self.setup.agents[agent].root / rel)

    def expected_holders(self) -> dict[str, set[tuple[str, str]]]:
        out: dict[str, set[tuple[str, str]]] = {}
        for agent, rel, key, taken in CORPUS:
            if taken:
                out.setdefault(self.digest[key], set()).add((agent, self.path(agent, rel)))
        return out


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """Hub + lab-0..2 holding CORPUS, policy ``photos`` (every 1 h, so only
    an explicit rescan finds later changes), first round collected."""
    tmp = tmp_path_factory.mktemp("trio").resolve()
    s = start_setup(tmp, ["lab-0", "lab-1", "lab-2"])
    try:
        master = write_corpus(s.agents, tmp)
        digest = {k: blake3_of(p) for k, p in master.items()}
        add_policy(
            s.admin,
            "photos",
            agents="lab-*",
            include=["**/*.jpg"],
            exclude=["tmp/**"],
            max_size="256K",
            every="1h",
        )
        start_agents(s)
        t = Trio(s, master, digest)
        wait_collected(s.admin, len(t.expected_holders()), 30, s.agents.values())
        yield t
    finally:
        stop_setup(s)


def test_each_unique_content_is_stored_once(trio: Trio, tmp_path: Path) -> None:
    expected = trio.expected_holders()
    taken_keys = {k for _a, _r, k, taken in CORPUS if taken}
    unique_bytes = sum(SIZES[k] for k in taken_keys)
    s = stats(trio.admin)
    assert s == {
        "unique_files": len(expected),
        "unique_bytes": unique_bytes,
        "received_bytes": unique_bytes,  # each content crossed exactly once
        "pending": 0,
        "failed": 0,
        "paused_for_disk": 0,
    }
    # Independently of the hub's bookkeeping: payload bytes it wrote.
    assert hub_metric(trio.hub, RECEIVED) == unique_bytes
    # The store: one file per content, named by its BLAKE3.
    store = check_cas(trio.hub)
    assert set(store) == set(expected)
    for key in taken_keys:
        assert store[trio.digest[key]].read_bytes() == trio.master[key].read_bytes()
    for key in ("HUGE", "TMP", "NOTE0", "NOTE2"):
        assert trio.digest[key] not in store
    # The catalogue: every (agent, path) holding a taken content, nothing else.
    rows = catalogue(trio.admin)
    assert all(r["state"] == "stored" for r in rows)
    assert {r["digest"]: r["size"] for r in rows} == {trio.digest[k]: SIZES[k] for k in taken_keys}
    assert holders_by_digest(trio.admin) == expected
    listed = {h["path"] for r in rows for h in r["holders"]}
    for agent, rel, _key, taken in CORPUS:
        assert (trio.path(agent, rel) in listed) is taken, (agent, rel)
    # freight collected get: by digest and by AGENT:/path, same bytes.
    by_digest, by_path = tmp_path / "by-digest", tmp_path / "by-path"
    trio.admin.run("collected", "get", trio.digest["S2"], str(by_digest))
    trio.admin.run("collected", "get", "lab-2:" + trio.path("lab-2", "pics/s2.jpg"), str(by_path))
    assert by_digest.read_bytes() == by_path.read_bytes() == trio.master["S2"].read_bytes()
    into = tmp_path / "into"
    into.mkdir()
    trio.admin.run("collected", "get", "lab-0:" + trio.path("lab-0", "pics/empty.jpg"), str(into))
    assert (into / "empty.jpg").read_bytes() == b""
    # Not collected: refused, nothing written.
    res = trio.admin.run(
        "collected",
        "get",
        "lab-1:" + trio.path("lab-1", "pics/huge.jpg"),
        str(tmp_path / "no"),
        check=False,
    )
    assert res.returncode != 0 and not (tmp_path / "no").exists()


def test_collected_get_resumes_a_partial_of_the_same_content(trio: Trio, tmp_path: Path) -> None:
    digest, want = trio.digest["EDGE"], trio.master["EDGE"].read_bytes()
    out = tmp_path / "edge.jpg"
    part = tmp_path / f"edge.jpg.{digest[:16]}.freight-part"
    # An earlier try left the first half: the rest is fetched, same bytes.
    part.write_bytes(want[: len(want) // 2])
    trio.admin.run("collected", "get", digest, str(out))
    assert out.read_bytes() == want and not part.exists()
    # A partial that holds it all already: nothing more to fetch.
    out.unlink()
    part.write_bytes(want)
    trio.admin.run("collected", "get", digest, str(out))
    assert out.read_bytes() == want and not part.exists()
    # A prefix changed by hand is kept (resumed, not fetched again), so the
    # digest check fails: the user is told, the partial is gone, nothing
    # is published, and the next try starts afresh.
    out.unlink()
    part.write_bytes(b"x" * 1000)
    res = trio.admin.run("collected", "get", digest, str(out), check=False)
    assert res.returncode != 0 and "does not match its digest; try again" in res.stderr
    assert not part.exists() and not out.exists()
    trio.admin.run("collected", "get", digest, str(out))
    assert out.read_bytes() == want
    # A link planted at the partial's name is not followed.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    out.unlink()
    part.symlink_to(victim)
    res = trio.admin.run("collected", "get", digest, str(out), check=False)
    assert res.returncode != 0 and "refusing to follow the symbolic link" in res.stderr
    assert victim.read_bytes() == b"keep" and not out.exists()


def test_rescan_stores_only_the_new_file(trio: Trio) -> None:
    before = stats(trio.admin)
    metric_before = hub_metric(trio.hub, RECEIVED)
    agents = trio.setup.agents
    new = random_file(agents["lab-2"].root / "pics" / "new.jpg", 77_777, seed=4242)
    new_digest = blake3_of(new)
    # A further copy of stored content: a new holder, nothing to upload.
    copy = agents["lab-0"].root / "pics" / "s2-copy.jpg"
    copy.write_bytes(trio.master["S2"].read_bytes())
    for name in ("lab-2", "lab-0"):
        assert run_command(trio.admin, name, "rescan")["state"] == "done"

    def settled() -> bool:
        h = holders_by_digest(trio.admin)
        s = stats(trio.admin)
        return (
            ("lab-0", str(copy)) in h.get(trio.digest["S2"], set())
            and s["unique_files"] == before["unique_files"] + 1
            and s["pending"] == 0
        )

    poll(settled, 20, "the new file stored and the new holder listed", every=0.2)
    after = stats(trio.admin)
    assert after["received_bytes"] == before["received_bytes"] + 77_777
    assert after["unique_bytes"] == before["unique_bytes"] + 77_777
    assert hub_metric(trio.hub, RECEIVED) == metric_before + 77_777
    assert new_digest in check_cas(trio.hub)
    assert holders_by_digest(trio.admin)[new_digest] == {("lab-2", str(new))}


def queued_commands(admin: Client) -> dict[str, int]:
    return {r["name"]: r["queued"] for r in api(admin, "GET", "/v1/agents")}


def test_policy_changes_wait_for_offline_agents_as_rescans(setup_factory: Any) -> None:
    """Agents learn of new and removed policies through their command queue
    (they poll only hourly): a change queues a ``rescan`` for each agent the
    policy selects, delivered when it attaches."""
    s = setup_factory(["late-1", "other"])
    late = s.agents["late-1"]
    f = random_file(late.root / "report.bin", 30_000, seed=21)
    add_policy(s.admin, "late-only", agents="late-*", every="1h")
    assert queued_commands(s.admin) == {"late-1": 1, "other": 0}

    start_agents(s, "late-1")
    poll(lambda: queued_commands(s.admin)["late-1"] == 0, 20, "the rescan answered")
    done = wait_collected(s.admin, 1, 20, [late])
    assert done["unique_bytes"] == f.stat().st_size
    late.kill()

    s.admin.run("collect", "rm", "late-only")
    assert queued_commands(s.admin) == {"late-1": 1, "other": 0}


def test_offline_agent_gets_its_queued_command_on_return(trio: Trio, tmp_path: Path) -> None:
    """``solo`` is not selected by the policy (lab-*): only the command matters."""
    (solo,) = enroll_agents(trio.admin, trio.hub, tmp_path.resolve(), ["solo"])
    res = trio.admin.run("agents", "cmd", "solo", "ping", "--wait", "0")
    queued = json.loads(res.stdout)
    assert queued["state"] == "queued"
    row: dict[str, Any] = {}

    def answered() -> bool:
        nonlocal row
        if not solo.running:
            assert solo.proc is not None
            raise AssertionError(f"solo exited {solo.proc.returncode}: {solo.log()[-600:]}")
        row = api(trio.admin, "GET", f"/v1/agents/commands/{queued['id']}")
        return row["state"] in ("done", "failed")

    try:
        solo.start()
        poll(answered, 20, "the queued ping answered")
        assert row["state"] == "done", row
        assert row["result"]["roots"] == [str(solo.root)]
        res = trio.admin.run("admin", "events", "--kind", "command_done", "--json")
        assert any(
            e["actor"] == "solo" and e["detail"].get("id") == queued["id"]
            for e in json.loads(res.stdout)
        )
    finally:
        solo.kill()


# --- more bugs found on the way ----------------------------------------------------------


def test_agent_cap_limits_its_collection_uploads(setup_factory: Any) -> None:
    s = setup_factory(["lab-0"])
    random_file(s.agents["lab-0"].root / "big.bin", 24 * MiB, seed=3)
    s.admin.run("agents", "cap", "lab-0", "4M")
    add_policy(s.admin, "all", every="1h")
    start_agents(s)
    wait_collected(s.admin, 1, 30, s.agents.values())
    (start,) = hub_events(s.hub, "stream_start")
    (end,) = hub_events(s.hub, "stream_end")
    took = datetime.fromisoformat(end["timestamp"]) - datetime.fromisoformat(start["timestamp"])
    # 24 MiB at 4 MiB/s: 6 s (less a burst of a few MiB at most).
    assert took.total_seconds() >= 4, took


@pytest.mark.parametrize("given_up", ["failed", "superseded"])
def test_content_given_up_is_collected_when_offered_again(
    setup_factory: Any, given_up: str
) -> None:
    """Offered while the hub's disk is low, deleted before its upload:
    either the agent does not notice (every 1 h) and the hub's 5 upload
    attempts fail, or a rescan withdraws the offer. Then the file is back."""
    s = setup_factory(["lab-0"], "--collect-reserve", "100000T")
    f = random_file(s.agents["lab-0"].root / "back.bin", 50_000, seed=11)
    saved = f.read_bytes()
    add_policy(s.admin, "all", every="1h")
    start_agents(s)
    poll(lambda: stats(s.admin)["pending"] == 1, 20, "the offer recorded")
    f.unlink()
    if given_up == "superseded":
        assert run_command(s.admin, "lab-0", "rescan")["state"] == "done"
        poll(lambda: not holders_by_digest(s.admin), 20, "the offer withdrawn")
    s.hub.stop()
    save_hub_log(s.hub)
    s.hub.extra = []
    s.hub.start()
    if given_up == "failed":
        poll(lambda: stats(s.admin)["failed"] == 1, 20, "the upload given up")
    else:
        poll(lambda: stats(s.admin)["pending"] == 0, 20, "the content superseded")
    f.write_bytes(saved)  # back again
    assert run_command(s.admin, "lab-0", "rescan")["state"] == "done"
    done = wait_collected(s.admin, 1, 10, s.agents.values())
    assert done["failed"] == 0
    assert set(check_cas(s.hub)) == {blake3_of(f)}


def test_command_sent_while_the_agent_uploads_is_answered(setup_factory: Any) -> None:
    s = setup_factory(["lab-0"], "--bandwidth", "4M")
    for i in range(3):
        random_file(s.agents["lab-0"].root / f"big{i}.bin", 8 * MiB, seed=i)
    add_policy(s.admin, "all", every="1h")
    start_agents(s)
    for i in range(3):  # one ping during each upload

        def uploading() -> bool:
            started = len(hub_events(s.hub, "stream_start")) > i  # noqa: B023
            return started and mid_stream(s.hub, "lab-0", 1 * MiB, 6 * MiB)

        poll(uploading, 30, f"upload {i + 1} under way", every=0.05)
        ping = api(s.admin, "POST", "/v1/agents/lab-0/commands", {"kind": "ping", "args": {}})
        row: dict[str, Any] = {}

        def answered() -> bool:
            nonlocal row
            row = api(s.admin, "GET", f"/v1/agents/commands/{ping['id']}")  # noqa: B023
            return row["state"] in ("done", "failed")

        poll(answered, 5, f"the ping sent during upload {i + 1} answered")
        assert row["state"] == "done", row
        # The same root, every time: the upload's channel counts as the agent.
        (agent,) = api(s.admin, "GET", "/v1/agents")
        assert agent["version"].startswith("freight-agent/"), agent


def test_a_policy_with_an_impossible_schedule_or_size_is_refused(
    shared_hub: Hub, admin: Client
) -> None:
    """'every': NaN and a max_size of hundreds of digits once failed the
    request (500); a negative 'every' was stored."""
    token = token_of(admin)
    for body, message in (
        ({"every": "nan"}, "'every' is seconds between scans"),
        ({"every": -5}, "'every' is seconds between scans"),
        ({"every": 0}, "'every' is seconds between scans"),
        ({"every": "inf"}, "'every' is seconds between scans"),
        ({"max_size": "9" * 400}, "is too large: at most"),
        ({"max_size": "99999999999999999999T"}, "is too large: at most"),
    ):
        status, answer = rest(shared_hub, "PUT", "/v1/collect/policies/odd", body, token=token)
        assert status == 400, (body, answer)
        assert message in answer["error"]["message"], answer
    status, rows = rest(shared_hub, "GET", "/v1/collect/policies", token=token)
    assert status == 200 and "odd" not in {r["name"] for r in rows}


def test_offers_with_sizes_or_times_no_file_has_are_refused(shared_hub: Hub, admin: Client) -> None:
    """A size of 2**70 or 1e400 and a NaN mtime once failed the request
    (500), as did an mtime of -3.5e168 (no clock has it); a negative size
    was taken."""
    status, body = agent_login(shared_hub, "offerer", enrol(shared_hub, token_of(admin), "offerer"))
    assert status == 200, body
    digest = "ab" * 32
    hostile = [(1 << 70, 1), (float("inf"), 1), (-5, 1), (True, 1), (1, float("nan"))]
    hostile += [(1, -3.5e168), (1, 1e300)]
    for size, mtime in hostile:
        offer = {"path": "/data/x", "size": size, "mtime": mtime, "digest": digest}
        status, answer = rest(
            shared_hub,
            "POST",
            "/v1/collect/offers",
            {"batch": "b1", "policy": "p", "offers": [offer]},
            token=body["token"],
        )
        assert status == 400, (offer, answer)
        assert answer["error"]["message"] == (
            "each offer needs path, size (bytes), mtime (seconds) and a BLAKE3 digest (64 hex)"
        )
