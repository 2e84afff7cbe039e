"""Disk quotas: an admin sets one per account, `users ls` shows it; an
upload that would go over it is refused when it starts, and nothing the hub
already acknowledged is lost."""

from __future__ import annotations

import json
from pathlib import Path

from tests.agentsupport import api
from tests.authsupport import rest, token_of
from tests.integration.test_users import add_user, events, listed, user_client, users
from tests.support import Client, Hub, random_file, same_bytes, wait_until


def test_an_upload_over_the_quota_is_refused_at_its_start(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    add_user(client, "alice", "alice-secret-1")
    res = client.run("users", "quota", "alice", "1M")
    assert "alice may hold 1.0 MiB on the hub" in res.stderr
    table = users(client)
    assert table["alice"]["quota"] == 1024 * 1024 and table["alice"]["used"] == 0
    assert table["admin"]["quota"] == 0
    row = next(line for line in client.run("users", "ls").stdout.splitlines() if "alice" in line)
    assert "1.0 MiB" in row

    alice = user_client(tmp_path, hub, "alice", "alice-secret-1")
    first = random_file(tmp_path / "a.bin", 600_000, seed=1)
    alice.run("push", str(first), "--quiet")
    assert users(client)["alice"]["used"] == 600_000

    second = random_file(tmp_path / "b.bin", 600_000, seed=2)
    refused = alice.run("push", str(second), check=False, timeout=60)
    assert refused.returncode == 7, refused.stderr
    assert "alice's quota on the hub is 1.0 MiB" in refused.stderr
    assert "raise the quota" in refused.stderr  # the hint
    assert listed(alice) == ["a.bin"]
    alice.run("pull", "a.bin", str(tmp_path / "a.back"))
    assert same_bytes(first, tmp_path / "a.back")
    assert events(client, "quota_exceeded")[0]["detail"]["name"] == "b.bin"

    # A new version of a file replaces it, so only the difference counts.
    bigger = random_file(tmp_path / "a.bin", 900_000, seed=3)
    alice.run("push", str(bigger), "--quiet")
    assert users(client)["alice"]["used"] == 900_000

    client.run("users", "quota", "alice", "none")
    alice.run("push", str(second), "--quiet")
    assert sorted(listed(alice)) == ["a.bin", "b.bin"]
    assert users(client)["alice"]["quota"] == 0


def test_an_upload_the_hub_accepted_resumes_after_the_quota_was_lowered(
    tmp_path: Path,
) -> None:
    hub = Hub(tmp_path / "hub", extra=["--checkpoint-interval", "256K"]).start()
    try:
        admin = Client(tmp_path / "admin", hub)
        admin.login()
        admin.run("users", "quota", "admin", "10M")
        src = random_file(tmp_path / "big.bin", 4 * 1024 * 1024, seed=4)
        proc = admin.popen("push", str(src), "--limit", "1M")
        wait_until(
            lambda: any(s["checkpoint"] > 0 for s in api(admin, "GET", "/v1/admin/streams")),
            60,
            "an acknowledged checkpoint",
        )
        proc.kill()
        proc.wait(10)
        admin.run("users", "quota", "admin", "1M")  # below what the push needs
        row = json.loads(admin.run("push", str(src), "--json").stdout)["pushed"][0]
        assert row["resumed_from"] > 0
        admin.run("pull", "big.bin", str(tmp_path / "back.bin"))
        assert same_bytes(src, tmp_path / "back.bin")
        # ...and the next one is refused.
        more = random_file(tmp_path / "more.bin", 10_000)
        assert admin.run("push", str(more), check=False, timeout=60).returncode == 7
    finally:
        hub.stop()


def test_only_admins_set_quotas(tmp_path: Path, hub: Hub, client: Client) -> None:
    add_user(client, "bob", "bob-secret-12")
    bob = user_client(tmp_path, hub, "bob", "bob-secret-12")
    res = bob.run("users", "quota", "bob", "1G", check=False)
    assert res.returncode == 3 and "admin" in res.stderr
    res = client.run("users", "quota", "nobody", "1G", check=False)
    assert res.returncode == 7 and "nobody" in res.stderr
    res = client.run("users", "quota", "bob", "lots", check=False)
    assert res.returncode == 2 and "not a size" in res.stderr


def test_a_quota_beyond_the_database_integers_is_refused(hub: Hub, client: Client) -> None:
    """2**63 bytes once failed the request (500) on its way to the database."""
    token = token_of(client)
    for value in (1 << 63, (1 << 62) + 1, -1, 1.5, "10", None):
        status, body = rest(hub, "PUT", "/v1/users/admin/quota", {"quota": value}, token=token)
        assert status == 400, (value, body)
        assert "'quota': bytes up to 4611686018427387904" in body["error"]["message"]
    status, body = rest(hub, "PUT", "/v1/users/admin/quota", {"quota": 1 << 62}, token=token)
    assert status == 200 and body["quota"] == 1 << 62
