"""``freight loadtest`` for real: the CLI runs simulated clients (agents,
listeners, connections, pushes, garbage) over real TLS against a real hub,
strikes faults of every kind through its gates, and judges the sheet's
expect clauses; a failed clause gives exit 1, a wrong sheet exit 2 with the
line, row and column."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.support import Client, Hub

pytestmark = pytest.mark.timeout(240)

EVERY_FAULT = """\
id,count,role,peer,app,size,rate,transport,attach_at,ramp,faults,expect
idle,12,agent-idle,,,,,ws,0s,1s,reconnect_storm@5s,attached>=50%
listeners,4,listen,*,chat,,,auto,0s,1s,slow_reader(256KiB),
pairs,4,connect,listeners,chat,1KiB,20/s,auto,1s,1s,drop_every(4s±1s);drop@3s;stall@9s,recovered>=25%
halfopen,2,connect,listeners,chat,512,5/s,ws,1s,0s,half_open@6s,
uploaders,2,push,,,uniform(64KiB;256KiB),concurrency:1,auto,1s,1s,garbage@4s;hub_kill@7s,verified=100%
tls,2,garbage,,,,2/s,ws,1s,0s,bad_tls,hub_alive
"""


def sheet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_role_and_every_fault_against_a_hub_of_its_own(
    tmp_path: Path, shared_hub: Hub
) -> None:
    tester = Client(tmp_path / "cfg", shared_hub)  # no login: --start-hub makes its own
    res = tester.run(
        "loadtest",
        str(sheet(tmp_path, EVERY_FAULT)),
        "--start-hub",
        "--duration",
        "12s",
        "--seed",
        "7",
        "--json",
        "--csv-interval",
        str(tmp_path / "seconds.csv"),
        "--hdr-log",
        str(tmp_path / "lat"),
        check=False,
        timeout=200,
    )
    assert res.returncode in (0, 1), res.stderr
    assert "starting a hub on loopback" in res.stderr
    assert "a hub: listening on https://127.0.0.1:" in res.stderr
    report = json.loads(res.stdout)
    rows = report["rows"]
    assert report["seed"] == 7 and report["hub_restarts"] == 1 and report["hub_alive"]
    # Every clause of the sheet was judged, each with what it measured.
    assert [(e["row"], e["clause"]) for e in report["expect"]] == [
        ("idle", "attached>=50%"),
        ("pairs", "recovered>=25%"),
        ("uploaders", "verified=100%"),
        ("tls", "hub_alive"),
    ]
    assert all(e["measured"] != "nothing measured" for e in report["expect"])
    assert res.returncode == (0 if report["passed"] else 1)
    # Agents attached, and came back after the storm cut them all at once.
    assert rows["idle"]["attached_peak"] == 12 and rows["idle"]["faults"] == 12
    assert rows["idle"]["recovered"] >= 6
    # Messages went both ways: each one echoed by a listener was measured.
    assert rows["pairs"]["operations"] > 50
    assert rows["listeners"]["operations"] >= rows["pairs"]["operations"]
    assert rows["pairs"]["faults"] >= 4 * 3 and rows["pairs"]["recovered"] > 0
    assert set(rows["pairs"]["latency"]) >= {"min", "p50", "p90", "p99", "p99.9", "max"}
    # Pushes were checked by their digest, across the hub's SIGKILL.
    assert rows["uploaders"]["verified"] > 0 and rows["uploaders"]["mismatched"] == 0
    # Broken TLS and garbage were turned away while the hub kept serving.
    assert rows["tls"]["operations"] > 0
    assert "kept_open" not in rows["tls"]["errors"]
    # One CSV line per row and second, one HDR log per row.
    lines = (tmp_path / "seconds.csv").read_text().splitlines()
    assert lines[0].startswith("t,row,clients,attached")
    assert len(lines) - 1 >= 6 * 10
    log = (tmp_path / "lat-pairs.hlog").read_text()
    assert "HISTFAAA" in log


EVERY_ROLE = """\
id,count,role,peer,app,size,rate,transport,attach_at,ramp,expect,hosts
echo,3,listen,*,lt-all,,,auto,0s,1s,
pairs,3,connect,echo,lt-all,1KiB,20/s,auto,1s,1s,loss=0
msgs,3,message,echo,lt-all,512,20/s,auto,1s,1s,errors=0,1
reqs,2,request,echo,lt-all,256,10/s,ws,1s,1s,verified=100%
fwd,2,forward,echo,lt-all,4KiB,20/s,auto,1s,1s,loss=0
senders,2,send,inbox,,uniform(64KiB;256KiB),concurrency:1,auto,1s,0s,verified=100%
inbox,2,receive,,,,,auto,0s,0s,verified=100%
pullers,2,pull,,,256KiB,2/s,tls,1s,0s,verified=100%
pushers,2,push,,,lognormal(64KiB;1),total:4/s,http,1s,0s,verified=100%
copies,1,push,,,file:SAMPLE,1/s,auto,1s,0s,verified=100%
"""


def test_every_role_through_the_testers_admin_login(tmp_path: Path, admin: Client) -> None:
    """With --hub the tester's own login makes the accounts: messages,
    requests, tunnel exchanges, code transfers, pulls and pushes all move
    and are checked, on a hub the test started."""
    sample = tmp_path / "sample.bin"
    sample.write_bytes(bytes(range(256)) * 1000)
    text = EVERY_ROLE.replace("SAMPLE", str(sample))
    before = {u["name"] for u in json.loads(admin.run("users", "ls", "--json").stdout)}
    res = admin.run(
        "loadtest", str(sheet(tmp_path, text)), "--duration", "8s", "--json",
        check=False, timeout=180,
    )  # fmt: skip
    report = json.loads(res.stdout)
    rows = report["rows"]
    for rid in ("echo", "pairs", "msgs", "reqs", "fwd", "senders", "inbox", "pullers", "pushers"):
        assert rows[rid]["operations"] > 0, (rid, rows[rid], res.stderr[-2000:])
    for rid in ("reqs", "senders", "inbox", "pullers", "pushers", "copies"):
        assert rows[rid]["verified"] > 0 and rows[rid]["mismatched"] == 0, (rid, rows[rid])
    # The three message clients are applications of one messaging host
    # (hosts=1): the two that did not start it went through its socket.
    assert rows["msgs"]["attached_peak"] == 3, rows["msgs"]
    made = {u["name"] for u in json.loads(admin.run("users", "ls", "--json").stdout)} - before
    accounts = [a for a in made if "-msgs-" in a or "-reqs-" in a]
    assert sorted(a.rsplit("-", 2)[1:] for a in accounts) == [
        ["msgs", "0"], ["reqs", "0"], ["reqs", "1"],
    ], accounts  # fmt: skip
    # Each message, request and exchange was answered by a listener.
    assert rows["echo"]["operations"] >= rows["msgs"]["operations"] + rows["reqs"]["operations"]
    assert rows["fwd"]["bytes"] > 0 and rows["echo"]["bytes"] > rows["fwd"]["bytes"]
    assert res.returncode == (0 if report["passed"] else 1)
    assert rows["copies"]["bytes"] == rows["copies"]["operations"] * 256_000
    assert [e["row"] for e in report["expect"]] == [
        "pairs", "msgs", "reqs", "fwd", "senders", "inbox", "pullers", "pushers", "copies",
    ]  # fmt: skip


def test_two_workers_merge_into_one_report(tmp_path: Path, shared_hub: Hub) -> None:
    """--workers 2: each process runs half the clients (odd and even
    numbers), connecting clients reach listeners of the other process by
    name, and the report counts every client once and merges latencies."""
    text = (
        "id,count,role,peer,app,size,rate,attach_at,ramp,expect\n"
        "idle,6,agent-idle,,,,,0s,1s,attached>=50%\n"
        "echo,3,listen,*,lt-two,,,0s,1s,\n"
        "talk,4,connect,echo,lt-two,200,20/s,1s,1s,p99<5s\n"
        "up,2,push,,,64KiB,concurrency:1,1s,0s,verified=100%\n"
    )
    tester = Client(tmp_path / "cfg", shared_hub)
    res = tester.run(
        "loadtest", str(sheet(tmp_path, text)), "--start-hub", "--workers", "2",
        "--duration", "6s", "--json", check=False, timeout=180,
    )  # fmt: skip
    report = json.loads(res.stdout)
    rows = report["rows"]
    assert {r: rows[r]["clients"] for r in rows} == {"idle": 6, "echo": 3, "talk": 4, "up": 2}
    assert rows["idle"]["attached_peak"] == 6
    assert (
        rows["talk"]["operations"] > 20 and rows["echo"]["operations"] >= rows["talk"]["operations"]
    )
    assert rows["up"]["verified"] > 0 and rows["up"]["mismatched"] == 0
    assert rows["talk"]["latency"]["max"] >= rows["talk"]["latency"]["p50"] > 0
    assert len(report["expect"]) == 3 and res.returncode == (0 if report["passed"] else 1)


def test_a_failed_expect_exits_1_and_says_which(
    tmp_path: Path, shared_hub: Hub, admin: Client
) -> None:
    text = (
        "id,count,role,peer,app,size,rate,end,expect\n"
        "echo,2,listen,*,lt-echo,,,,\n"
        "talk,2,connect,echo,lt-echo,100,10/s,,p99<0.001ms;errors=0\n"
        "early,2,agent-idle,,,,,2s,attached=100%\n"
    )
    res = admin.run(
        "loadtest", str(sheet(tmp_path, text)), "--duration", "4s", check=False, timeout=120
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL  talk: p99<0.001ms  (measured" in res.stdout
    assert "pass  talk: errors=0  (measured 0)" in res.stdout
    assert "pass  early: attached=100%  (measured 100%)" in res.stdout  # counted at its end
    assert "1 of 3 expect clauses failed" in res.stdout
    # The accounts the run made are disabled once it ended.
    users = json.loads(admin.run("users", "ls", "--json").stdout)
    made = [u for u in users if u["name"].startswith("lt") and "-talk-" in u["name"]]
    assert len(made) == 2 and all(u["disabled"] for u in made)


def test_a_wrong_sheet_names_its_line_row_and_column(tmp_path: Path, admin: Client) -> None:
    text = "id,count,role,peer,app,size,rate\nup,2,push,,,1KiB,50/min\n"
    res = admin.run("loadtest", str(sheet(tmp_path, text)), check=False)
    assert res.returncode == 2
    assert "line 2 (row 'up'), column rate: '50/min' is not a rate" in res.stderr
    missing = "id,count,role,size\nup,1,push,file:/nonexistent/sample.bin\n"
    res = admin.run("loadtest", str(sheet(tmp_path, missing)), check=False)
    assert res.returncode == 2
    assert "row 'up', column size: cannot read /nonexistent/sample.bin" in res.stderr
    kill = "id,count,role,size,faults\nup,1,push,1KiB,hub_kill@5s\n"
    res = admin.run("loadtest", str(sheet(tmp_path, kill)), check=False)
    assert res.returncode == 2
    assert "row 'up': hub_kill needs a hub of the tester's own (--start-hub)" in res.stderr


def test_ctrl_c_ends_the_run_early_with_its_figures(tmp_path: Path, admin: Client) -> None:
    text = "id,count,role,size,rate\nup,2,push,64KiB,5/s\n"
    seconds = tmp_path / "seconds.csv"
    proc = admin.popen(
        "loadtest", str(sheet(tmp_path, text)), "--duration", "10m", "--json",
        "--csv-interval", str(seconds),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(seconds.read_text().splitlines()) < 3 if seconds.exists() else True:
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] and report["seconds"] < 60
    assert report["rows"]["up"]["operations"] > 0
    assert "interrupted after" in err and "the figures cover that much" in err
