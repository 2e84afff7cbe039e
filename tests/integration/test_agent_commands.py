"""The agents' command queue against poison and lies: a large folder is
listed in pages (by the command and by ``freight ls``), oversized
arguments are refused when queued, a command that keeps breaking its
agent's channel is failed after a few deliveries, an admin cancels one;
an answer is taken once, from the agent it was asked of (a replayed
``send_file`` result, another agent finishing a collection upload).
Real hub, real ``freight agent run`` where an agent behaves; an agent's
credentials driven by hand (tests/hostile.py) where it does not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freight.protocol import messages as m
from freight.protocol.frames import encode_frame
from tests.agentsupport import Agent, api
from tests.authsupport import rest, token_of
from tests.collectsupport import (
    add_policy,
    blake3_of,
    check_cas,
    enroll_agents,
    hub_events,
    wait_collected,
)
from tests.collectsupport import wait_online as wait_agents_online
from tests.hostile import RawAgent, recv_frame, settled
from tests.support import Client, Hub, random_file, same_bytes, wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client
) -> Iterator[Agent]:
    home = tmp_path_factory.mktemp("pager")
    root = home / "root"
    root.mkdir()
    agent = Agent(admin, shared_hub, "pager", home, root)
    agent.start()
    yield agent
    agent.kill()


def cmd(admin: Client, agent: str, kind: str, *args: str, wait: str = "30") -> dict[str, Any]:
    extra = [x for a in args for x in ("--arg", a)]
    res = admin.run("agents", "cmd", agent, kind, *extra, "--wait", wait, timeout=90)
    return dict(json.loads(res.stdout))


def test_list_dir_of_a_large_folder_comes_in_pages(admin: Client, lab: Agent) -> None:
    big = lab.roots[0] / "big"
    big.mkdir()
    names = sorted(f"entry-{i:05d}-{'x' * 40}.dat" for i in range(1200))
    for name in names:
        (big / name).write_bytes(b"")
    row = cmd(admin, "pager", "list_dir", f"path={big}")
    assert row["state"] == "done", row  # before: the agent was cut off, again and again
    first = row["result"]
    assert first["total"] == 1200 and first["offset"] == 0
    assert 0 < len(first["entries"]) < 1200 and first["next"] == len(first["entries"])
    seen = [e["name"] for e in first["entries"]]
    offset = first["next"]
    while offset is not None:
        page = cmd(admin, "pager", "list_dir", f"path={big}", f"offset={offset}")["result"]
        assert page["offset"] == offset
        seen += [e["name"] for e in page["entries"]]
        offset = page["next"]
    assert seen == names

    # freight ls fetches every page.
    listed = json.loads(admin.run("ls", f"pager:{big}", "--json", timeout=120).stdout)
    assert [e["name"] for e in listed] == names
    text = admin.run("ls", f"pager:{big}", timeout=120).stdout.splitlines()
    assert len(text) == 1200 and text[-1].endswith(names[-1])


def test_ls_of_a_folder_larger_than_a_relay_message(admin: Client, lab: Agent) -> None:
    # ~11,000 entries of ~800 bytes of JSON each (non-ASCII names are
    # escaped): more than the 8 MiB one relayed message may carry.
    huge = lab.roots[0] / "huge"
    huge.mkdir()
    names = sorted(f"{i:05d}-{'é' * 120}" for i in range(11_000))
    for name in names:
        (huge / name).write_bytes(b"")
    res = admin.run("ls", f"pager:{huge}", "--json", timeout=180)
    assert [e["name"] for e in json.loads(res.stdout)] == names


def test_oversized_arguments_are_refused_when_queued(admin: Client, lab: Agent) -> None:
    res = admin.run(
        "agents", "cmd", "pager", "list_dir", "--arg", "path=/" + "a" * 70_000, "--wait", "5",
        check=False,
    )  # fmt: skip
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "at most 16384 fit in a command" in res.stderr
    assert cmd(admin, "pager", "ping")["state"] == "done"  # the agent is fine


def test_a_command_that_breaks_its_agent_is_failed_after_five_deliveries(
    admin: Client, shared_hub: Hub, tmp_path: Path
) -> None:
    crasher = Agent(admin, shared_hub, "crasher", tmp_path, tmp_path)  # never runs
    queued = cmd(admin, "crasher", "ping", wait="0")
    assert queued["state"] == "queued"
    raw = RawAgent(shared_hub, crasher.client.config)

    async def crash_on_every_delivery() -> int:
        """Attach; when the command comes, hang up without a word (as an
        agent whose channel it breaks); again, until it comes no more."""
        token = await raw.token()
        deliveries = 0
        for _ in range(8):
            session, ws, welcome = await raw.attach(token)
            try:
                assert isinstance(welcome, m.Welcome)
                try:
                    msg = await recv_frame(ws, timeout=3)
                except TimeoutError:
                    return deliveries
                assert isinstance(msg, m.Command) and msg.id == queued["id"], msg
                deliveries += 1
            finally:
                await session.close()
        return deliveries

    assert asyncio.run(crash_on_every_delivery()) == 5
    row = api(admin, "GET", f"/v1/agents/commands/{queued['id']}")
    assert row["state"] == "failed" and row["deliveries"] == 5, row
    assert "handed to crasher 5 times without an answer" in row["result"]["error"]
    failed = json.loads(admin.run("admin", "events", "--kind", "command_failed", "--json").stdout)
    assert any(e["detail"]["id"] == queued["id"] for e in failed)


def test_an_admin_cancels_a_queued_command(admin: Client, shared_hub: Hub, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    sleeper = Agent(admin, shared_hub, "sleeper", tmp_path, root)  # enrolled, offline
    ping = cmd(admin, "sleeper", "ping", wait="0")
    src = random_file(tmp_path / "gift.bin", 20_000)
    admin.run("push", str(src), "--as", "gift.bin")
    gift = cmd(admin, "sleeper", "receive_file", "name=gift.bin", f"dest={root}/", wait="0")
    inbox = list(shared_hub.data.glob(f"files/*/.inbox/{gift['id']}"))
    assert inbox, "the agent's copy is linked when the command is queued"

    for row in (ping, gift):
        res = admin.run("agents", "cancel", str(row["id"]))
        assert f"cancelled command {row['id']}" in res.stderr
    assert not inbox[0].exists()  # its copy went with it
    again = admin.run("agents", "cancel", str(ping["id"]), check=False)
    assert again.returncode == 7 and "is cancelled already" in again.stderr
    later = admin.run("agents", "result", str(ping["id"]), "--wait", "0", check=False)
    assert later.returncode == 7 and json.loads(later.stdout)["state"] == "cancelled"

    sleeper.start()  # it comes online: nothing is delivered
    assert not (root / "gift.bin").exists()
    for row in (ping, gift):
        now = api(admin, "GET", f"/v1/agents/commands/{row['id']}")
        assert (now["state"], now["deliveries"]) == ("cancelled", 0), now
    events = json.loads(
        admin.run("admin", "events", "--kind", "command_cancelled", "--json").stdout
    )
    assert {e["detail"]["id"] for e in events} >= {ping["id"], gift["id"]}
    sleeper.kill()


def test_a_replayed_send_file_result_does_not_overwrite_the_file(
    admin: Client, shared_hub: Hub, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    report = random_file(root / "report.bin", 100_000, seed=1)
    sender = Agent(admin, shared_hub, "reporter", tmp_path, root)
    sender.start()
    row = cmd(admin, "reporter", "send_file", f"path={report}", "name=report.bin")
    assert row["state"] == "done", row
    sender.kill()
    forged = random_file(tmp_path / "forged.bin", 100_000, seed=2)
    raw = RawAgent(shared_hub, sender.client.config)

    async def replay() -> None:
        token = await raw.token()
        # The agent's login may push into its own files, .sent/ID too...
        await raw.push(token, forged, f".sent/{row['id']}")
        session, ws, welcome = await raw.attach(token)
        try:
            assert isinstance(welcome, m.Welcome)
            # ...and answer the finished command once more.
            result = m.CommandResult(id=row["id"], ok=True, result="{}")
            await ws.send_bytes(encode_frame(result))
            await settled(ws)
        finally:
            await session.close()

    asyncio.run(replay())
    admin.run("pull", "report.bin", str(tmp_path / "got.bin"))
    assert same_bytes(report, tmp_path / "got.bin")
    after = api(admin, "GET", f"/v1/agents/commands/{row['id']}")
    assert (after["state"], after["result"], after["updated"]) == (
        "done",
        row["result"],
        row["updated"],
    )


def test_only_the_agent_asked_finishes_a_collection_upload(tmp_path: Path) -> None:
    """``holder`` uploads (slowed by the hub's budget) while ``other``, an
    enrolled agent holding nothing, answers every command id it can think
    of with success, as if it had done the upload."""
    hub = Hub(tmp_path / "hub", extra=["--bandwidth", "2M", "--checkpoint-interval", "1M"]).start()
    holder, other = None, None
    try:
        admin = Client(tmp_path / "admin", hub)
        admin.login()
        holder, other = enroll_agents(admin, hub, tmp_path, ["holder", "other"])
        big = random_file(holder.root / "big.bin", 16 * MiB, seed=5)
        add_policy(admin, "mine", agents="holder", every="1h")
        holder.start()
        wait_agents_online(admin, [holder])
        wait_until(lambda: bool(hub_events(hub, "stream_start")), 30, "the upload started")
        raw = RawAgent(hub, other.client.config)

        async def claim_everything() -> None:
            token = await raw.token()
            session, ws, _ = await raw.attach(token)
            try:
                for command_id in range(1, 60):
                    result = m.CommandResult(id=command_id, ok=True, result="{}")
                    await ws.send_bytes(encode_frame(result))
                await settled(ws)
            finally:
                await session.close()

        asyncio.run(claim_everything())
        assert not hub_events(hub, "stream_end"), "the upload ended before the claims"
        admin.run("admin", "bandwidth", "off")
        wait_collected(admin, 1, 60, [holder])
        assert set(check_cas(hub)) == {blake3_of(big)}
        assert hub_events(hub, "collect_rejected") == []  # one upload, taken as it came
        assert len(hub_events(hub, "stream_start")) == 1
    finally:
        if holder is not None:
            holder.kill()
        hub.stop()


def test_a_command_id_beyond_what_the_database_holds_is_not_found(
    admin: Client, shared_hub: Hub
) -> None:
    """A 30-digit id once failed the request (500) instead of answering."""
    token = token_of(admin)
    huge = "295902144646348294384638754816"
    for method, path in (
        ("GET", f"/v1/agents/commands/{huge}?wait=0"),
        ("POST", f"/v1/agents/commands/{huge}/cancel"),
        ("GET", f"/v1/agents/commands/{1 << 63}"),
    ):
        status, body = rest(shared_hub, method, path, token=token)
        assert status == 404, (path, body)
        assert body["error"]["code"] == "not_found"
        assert body["error"]["message"].startswith("no command '")
    status, body = rest(shared_hub, "GET", "/v1/agents/commands/seven", token=token)
    assert status == 400 and "must be a number" in body["error"]["message"]
