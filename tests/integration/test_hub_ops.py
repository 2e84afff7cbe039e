"""Operating a hub: bandwidth budget, events, metrics, purge, Ctrl-C."""

from __future__ import annotations

import json
import signal
import ssl
import urllib.request
from pathlib import Path

from tests.support import Client, Hub, random_file, same_bytes, wait_until


def test_events_and_metrics_record_what_happened(tmp_path: Path, hub: Hub, client: Client) -> None:
    src = random_file(tmp_path / "e.bin", 200_000)
    client.run("push", str(src), "--quiet")
    bad = Client(tmp_path / "bad", hub)
    bad.run(
        "login", hub.url, "--user", "admin", "--password-stdin",
        "--fingerprint", hub.fingerprint, input="wrong\n", check=False,
    )  # fmt: skip
    events = json.loads(client.run("admin", "events", "--json").stdout)
    kinds = [e["kind"] for e in events]
    for kind in ("login", "login_failure", "stream_start", "stream_end"):
        assert kind in kinds
    end = next(e for e in events if e["kind"] == "stream_end")
    assert end["detail"]["name"] == "e.bin" and end["detail"]["size"] == 200_000
    only = json.loads(client.run("admin", "events", "--kind", "login_failure", "--json").stdout)
    assert {e["kind"] for e in only} == {"login_failure"}

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"{hub.url}/metrics", context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    assert 'freight_streams_total{event="end"} 1.0' in text
    assert 'freight_logins_total{result="failure"} 1.0' in text
    assert "freight_bytes_received_total 200000.0" in text
    # The structured log carries the same events as JSON lines.
    logged = [json.loads(line) for line in hub.log().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "stream_end" and e.get("name") == "e.bin" for e in logged)


def test_admin_changes_the_bandwidth_budget_at_run_time(client: Client) -> None:
    shown = json.loads(client.run("admin", "bandwidth", "--json").stdout)
    assert shown["budget"] == "off" and shown["now"] == 0
    changed = json.loads(client.run("admin", "bandwidth", "5M", "--json").stdout)
    assert changed["now"] == 5 * 1024 * 1024
    table = json.loads(client.run("admin", "bandwidth", "00:00,1M 12:00,2M", "--json").stdout)
    assert table["now"] in (1024 * 1024, 2 * 1024 * 1024)
    bad = client.run("admin", "bandwidth", "25:00,1M", check=False)
    assert bad.returncode == 2 and "bad time" in bad.stderr


def test_hub_budget_limits_a_push(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", extra=["--bandwidth", "4M", "--checkpoint-interval", "1M"]).start()
    try:
        client = Client(tmp_path / "c", hub)
        client.login()
        src = random_file(tmp_path / "s.bin", 12 * 1024 * 1024)
        row = json.loads(client.run("push", str(src), "--json").stdout)["pushed"][0]
        # 12 MiB at 4 MiB/s: about 3 s (the first checkpoint's burst aside).
        assert 2.4 <= row["seconds"] <= 8.0, row
    finally:
        hub.stop()


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    # 80 MiB at 8 MiB/s: about 10 s, so a loaded machine still interrupts
    # it well before it ends.
    src = random_file(tmp_path / "big.bin", 80 * 1024 * 1024, seed=3)
    proc = client.popen("push", str(src), "--limit", "8M")
    wait_until(lambda: hub.partial_size() >= 17 * 1024 * 1024, 60, "two checkpoints")
    assert proc.poll() is None, f"the push ended before it could be interrupted: {proc.returncode}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    row = json.loads(client.run("push", str(src), "--json").stdout)["pushed"][0]
    assert row["resumed_from"] >= 16 * 1024 * 1024
    client.run("pull", "big.bin", str(tmp_path / "back.bin"))
    assert same_bytes(src, tmp_path / "back.bin")


def test_abandoned_partials_are_purged(tmp_path: Path) -> None:
    # 0.0005 h = 1.8 s: the purge runs that often and drops older partials.
    hub = Hub(tmp_path / "hub", extra=["--purge-after", "0.0005"]).start()
    try:
        client = Client(tmp_path / "c", hub)
        client.login()
        src = random_file(tmp_path / "p.bin", 20 * 1024 * 1024)
        proc = client.popen("push", str(src), "--limit", "4M")
        wait_until(lambda: hub.partial_size() > 0, 30, "a partial upload")
        proc.kill()
        proc.wait()
        wait_until(lambda: not hub.partials(), 30, "the purge")
        events = json.loads(
            client.run("admin", "events", "--kind", "stream_purged", "--json").stdout
        )
        assert events and events[0]["detail"]["name"] == "p.bin"
    finally:
        hub.stop()


def test_lost_final_ack_does_not_resend_the_file(tmp_path: Path, hub: Hub, client: Client) -> None:
    """If the hub published the file but its EndStreamAck never arrived, the
    retry is told "already complete" instead of sending everything again."""
    src = random_file(tmp_path / "done.bin", 6 * 1024 * 1024, seed=9)
    proc = client.popen("push", str(src), "--limit", "2M")
    transfers = client.config / "transfers"
    wait_until(lambda: any(transfers.glob("push-*.json")), 30, "the transfer state")
    (state,) = transfers.glob("push-*.json")
    saved = state.read_bytes()
    assert proc.wait(60) == 0
    assert not state.exists()
    state.write_bytes(saved)  # as if the client had died before the final ack
    row = json.loads(client.run("push", str(src), "--json").stdout)["pushed"][0]
    assert row["resumed_from"] == row["size"] == 6 * 1024 * 1024
    assert row["wire_bytes"] == 0
    client.run("pull", "done.bin", str(tmp_path / "back.bin"))
    assert same_bytes(src, tmp_path / "back.bin")


def test_a_checkpoint_interval_smaller_than_a_frame_still_flows(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", extra=["--checkpoint-interval", "256K"]).start()
    try:
        client = Client(tmp_path / "c", hub)
        client.login()
        client.env["FREIGHT_STALL_TIMEOUT"] = "5"
        src = random_file(tmp_path / "small-steps.bin", 5 * 1024 * 1024 + 1)
        row = json.loads(client.run("push", str(src), "--json").stdout)["pushed"][0]
        assert row["attempts"] == 1
        client.run("pull", "small-steps.bin", str(tmp_path / "back.bin"))
        assert same_bytes(src, tmp_path / "back.bin")
    finally:
        hub.stop()
