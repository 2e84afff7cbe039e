"""Transfers in flight, one's own connections and the hub's overview,
through a real hub: each user sees only their own transfers and
connections (someone else's is "not found", like an unknown one), ending
one's own connection tells both ends at once and is logged, and the
overview's figures move with what the hub does."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from freight import __version__
from tests.authsupport import rest, token_of
from tests.relaysupport import BOB_PASSWORD, Proc, fast
from tests.support import Client, Hub, random_file, wait_until


@pytest.fixture(scope="module")
def carol(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    admin.run("users", "add", "carol", "--password-stdin", input=BOB_PASSWORD + "\n")
    c = Client(tmp_path_factory.mktemp("client-carol"), shared_hub)
    c.login(user="carol", password=BOB_PASSWORD)
    return fast(c)


def get(hub: Hub, client: Client, path: str) -> Any:
    status, body = rest(hub, "GET", path, token=token_of(client))
    assert status == 200, body
    return body


def test_a_push_in_flight_is_seen_by_its_owner_and_admins_only(
    tmp_path: Path, shared_hub: Hub, admin: Client, bob: Client, carol: Client
) -> None:
    src = random_file(tmp_path / "slow.bin", 5 * 1024 * 1024, seed=3)
    rows: list[dict[str, Any]] = []
    overview: dict[str, Any] = {}

    def moving() -> bool:
        rows[:] = [
            r
            for r in get(shared_hub, bob, "/v1/transfers")["transfers"]
            if r["name"] == "slow.bin" and r["rate"] > 0
        ]
        if rows:
            overview.update(get(shared_hub, admin, "/v1/admin/overview"))
        return bool(rows) and overview["throughput"] > 0

    with Proc(bob, "push", str(src), "--limit", "1M", "--quiet") as push:
        wait_until(moving, 20, "the push with a rate, and the hub's throughput")
        (row,) = rows
        assert (row["kind"], row["user"], row["size"]) == ("push", "bob", 5 * 1024 * 1024)
        assert 0 < row["done"] < row["size"] and row["eta"] > 0, row
        # 1 MiB/s asked: the rate over the last seconds is about that.
        assert 300_000 < row["rate"] < 3_000_000, row
        assert overview["transfers"] >= 1
        assert get(shared_hub, carol, "/v1/transfers") == {"transfers": [], "next": None}
        everyone = get(shared_hub, admin, "/v1/transfers")["transfers"]
        assert [r["user"] for r in everyone if r["name"] == "slow.bin"] == ["bob"]
        mine = get(shared_hub, admin, "/v1/transfers?mine=1")["transfers"]
        assert [r for r in mine if r["name"] == "slow.bin"] == []
        human = bob.run("transfers").stdout
        assert "push" in human and "slow.bin" in human and "/s" in human
        assert push.wait(30) == 0, push.stderr

    done = get(shared_hub, bob, "/v1/transfers?state=done&limit=5")["transfers"]
    assert done[0]["name"] == "slow.bin" and done[0]["verdict"] == "verified", done
    assert len(done[0]["digest"]) == 64 and done[0]["size"] == 5 * 1024 * 1024
    theirs = get(shared_hub, carol, "/v1/transfers?state=done")["transfers"]
    assert all(r["user"] == "carol" for r in theirs)
    cli = json.loads(bob.run("transfers", "--done", "--json").stdout)
    assert cli[0]["name"] == "slow.bin" and cli[0]["verdict"] == "verified"


def test_the_overview_fields_are_there_and_sane(
    shared_hub: Hub, admin: Client, bob: Client
) -> None:
    first = get(shared_hub, admin, "/v1/admin/overview")
    wait_until(
        lambda: get(shared_hub, admin, "/v1/admin/overview")["uptime"] > first["uptime"] + 0.2,
        10,
        "the uptime to grow",
    )
    assert first["version"] == __version__
    assert first["attached"]["users"] >= 0 and first["attached"]["agents"] >= 0
    assert first["disk"]["free"] > 0 and first["disk"]["total"] >= first["disk"]["free"]
    assert first["bandwidth"]["budget"] == "off"
    assert isinstance(first["hour"], list) and len(first["hour"]) <= 60
    assert len(first["security"]) <= 10
    status = json.loads(admin.run("status", "--json").stdout)
    assert status["version"] == __version__ and status["uptime"] > first["uptime"]
    assert "up " in admin.run("status").stdout
    denied, body = rest(shared_hub, "GET", "/v1/admin/overview", token=token_of(bob))
    assert denied == 403, body


def test_hostile_transfer_queries_are_a_typed_400(shared_hub: Hub, bob: Client) -> None:
    for query, says in (
        ("state=all", "state must be live"),
        ("state=done&limit=0", "limit must be"),
        ("state=done&limit=%C2%B2", "limit must be"),
        ("state=done&cursor=zzz", "cursor must be"),
        ("mine=maybe", "mine must be 1 or 0"),
        ("x=1", "unknown parameter"),
    ):
        status, body = rest(shared_hub, "GET", "/v1/transfers?" + query, token=token_of(bob))
        assert status == 400 and says in body["error"]["message"], (query, body)


def test_ending_ones_own_connection_tells_both_ends(
    shared_hub: Hub, admin: Client, bob: Client, carol: Client
) -> None:
    with Proc(bob, "listen", "observed") as listener:
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "bob", "observed") as dialer:
            listener.wait_stderr("Connected: admin")
            dialer.write(b"x" * 4000)
            listener.wait_stdout(4000)
            (row,) = [r for r in get(shared_hub, bob, "/v1/connections") if r["app"] == "observed"]
            assert (row["from"], row["to"], row["state"]) == ("admin", "bob", "connected")
            listed = json.loads(bob.run("conns", "--json").stdout)
            assert row["id"] in [r["id"] for r in listed]
            assert row["id"] in bob.run("conns").stdout
            # Someone else's connection is "not found", exactly as an unknown one.
            assert get(shared_hub, carol, "/v1/connections") == []
            theirs = rest(
                shared_hub, "DELETE", f"/v1/connections/{row['id']}", token=token_of(carol)
            )
            unknown = rest(shared_hub, "DELETE", "/v1/connections/nosuchid", token=token_of(carol))
            assert theirs[0] == unknown[0] == 404
            assert (
                theirs[1]["error"]["message"].replace(row["id"], "nosuchid")
                == (unknown[1]["error"]["message"])
            )
            meddle = carol.run("conns", "kill", row["id"], check=False)
            assert meddle.returncode == 7 and "no live connection" in meddle.stderr
            assert dialer.running and listener.running

            status, body = rest(
                shared_hub, "DELETE", f"/v1/connections/{row['id']}", token=token_of(bob)
            )
            ended = time.monotonic()
            assert status == 200 and body == {"killed": row["id"]}
            for end in (dialer, listener):
                end.wait_stderr("ended the connection", timeout=5)
            assert time.monotonic() - ended < 1.0
            for end in (dialer, listener):
                assert end.wait() == 7, end.stderr
    assert [r for r in get(shared_hub, bob, "/v1/connections") if r["app"] == "observed"] == []
    log = get(shared_hub, admin, "/v1/admin/events?kind=connection_killed&actor=bob")
    assert [e["detail"]["cid"] for e in log["events"]][:1] == [row["id"]]


def test_agents_come_a_page_at_a_time_by_name(shared_hub: Hub, admin: Client) -> None:
    con = sqlite3.connect(shared_hub.data / "freight.db")
    with con:
        for i in range(25):
            cur = con.execute(
                "INSERT INTO users (name, pw_hash, role, disabled, created, quota) "
                "VALUES (?, '!', 'agent', 0, 0, 0)",
                (f"pg-{i:02d}",),
            )
            con.execute(
                "INSERT INTO agents (user_id, enrolled, last_seen, version, address, cap) "
                "VALUES (?, 0, 0, '', '', 0)",
                (cur.lastrowid,),
            )
    con.close()
    everyone = get(shared_hub, admin, "/v1/agents")
    names: list[str] = []
    after = ""
    for _ in range(10):
        page = get(shared_hub, admin, "/v1/agents?limit=7" + (f"&after={after}" if after else ""))
        assert len(page["agents"]) <= 7
        names += [a["name"] for a in page["agents"]]
        after = page["next"]
        if after is None:
            break
    assert names == [a["name"] for a in everyone] == sorted(names) and len(names) >= 25
    assert [a["name"] for a in json.loads(admin.run("agents", "ls", "--json").stdout)] == names
    for query in (
        "limit=0",
        "limit=1001",
        "limit=x",
        "limit=%C2%B2",
        "limit=00000000001000",
        "after=" + "a" * 100,
    ):
        status, body = rest(shared_hub, "GET", "/v1/agents?" + query, token=token_of(admin))
        assert status == 400, (query, body)
