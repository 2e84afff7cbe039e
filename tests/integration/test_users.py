"""Accounts: admins add, list, disable and enable users; users change their
own password. Real hub, real CLI processes, each with its own config."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.authsupport import rest, token_of
from tests.support import ADMIN_PASSWORD, Client, Hub, random_file


def add_user(admin: Client, name: str, password: str, *extra: str) -> None:
    res = admin.run("users", "add", name, "--password-stdin", *extra, input=password + "\n")
    assert f"Added user {name}" in res.stderr


def user_client(tmp_path: Path, hub: Hub, name: str, password: str) -> Client:
    c = Client(tmp_path / f"client-{name}", hub)
    res = c.login(user=name, password=password)
    assert f"as {name} (user)" in res.stderr
    return c


def try_login(c: Client, name: str, password: str) -> subprocess.CompletedProcess[str]:
    return c.run(
        "login", c.hub.url, "--user", name, "--password-stdin",
        "--fingerprint", c.hub.fingerprint, input=password + "\n", check=False,
    )  # fmt: skip


def listed(c: Client) -> list[str]:
    return [f["name"] for f in json.loads(c.run("ls", "--json").stdout)]


def users(admin: Client) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in json.loads(admin.run("users", "ls", "--json").stdout)}


def events(admin: Client, kind: str) -> list[dict[str, Any]]:
    return list(json.loads(admin.run("admin", "events", "--kind", kind, "--json").stdout))


def test_admin_adds_a_user_who_sees_only_their_own_files(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    client.run("push", str(random_file(tmp_path / "admin.bin", 10_000, seed=1)), "--quiet")
    add_user(client, "alice", "alice-secret-1")
    table = users(client)
    assert table["alice"]["role"] == "user" and table["alice"]["disabled"] is False
    assert table["admin"]["role"] == "admin"
    assert isinstance(table["alice"]["created"], float)
    human = client.run("users", "ls").stdout
    assert "alice" in human and "active" in human

    alice = user_client(tmp_path, hub, "alice", "alice-secret-1")
    alice.run("push", str(random_file(tmp_path / "alice.bin", 20_000, seed=2)), "--quiet")
    assert listed(alice) == ["alice.bin"]
    assert listed(client) == ["admin.bin"]
    other = alice.run("pull", "admin.bin", str(tmp_path / "stolen.bin"), check=False)
    assert other.returncode == 7 and not (tmp_path / "stolen.bin").exists()

    (added,) = events(client, "user_added")
    assert added["actor"] == "admin" and added["detail"] == {"name": "alice", "role": "user"}

    add_user(client, "root2", "root2-secret", "--admin")
    assert users(client)["root2"]["role"] == "admin"


def test_only_admins_manage_users(tmp_path: Path, hub: Hub, client: Client) -> None:
    add_user(client, "bob", "bob-secret-1")
    bob = user_client(tmp_path, hub, "bob", "bob-secret-1")
    for args in (["users", "add", "eve", "--password-stdin"], ["users", "ls"]):
        res = bob.run(*args, input="eve-secret-1\n", check=False)
        assert res.returncode == 3, res
        assert "this needs an admin account" in res.stderr
    for args in (["users", "disable", "admin"], ["users", "enable", "bob"]):
        assert bob.run(*args, check=False).returncode == 3
    assert "eve" not in users(client)
    assert users(client)["admin"]["disabled"] is False


def test_names_passwords_and_duplicates_are_checked(hub: Hub, client: Client) -> None:
    add_user(client, "carol.d-1_x", "carol-secret")
    dup = client.run("users", "add", "carol.d-1_x", "--password-stdin", input="x" * 12 + "\n",
                     check=False)  # fmt: skip
    assert dup.returncode == 7 and "user 'carol.d-1_x' already exists" in dup.stderr
    dup_admin = client.run("users", "add", "admin", "--password-stdin", input="y" * 12 + "\n",
                           check=False)  # fmt: skip
    assert dup_admin.returncode == 7 and "already exists" in dup_admin.stderr
    for bad in ("has space", "x" * 65, "slash/no", "..", "naïve"):
        res = client.run("users", "add", bad, "--password-stdin", input="z" * 12 + "\n",
                         check=False)  # fmt: skip
        assert res.returncode == 2 and "invalid user name" in res.stderr, (bad, res.stderr)
    client.run("users", "add", "y" * 64, "--password-stdin", input="z" * 12 + "\n")
    short = client.run("users", "add", "dan", "--password-stdin", input="short\n", check=False)
    assert short.returncode == 2 and "8 to 1024 characters" in short.stderr
    empty = client.run("users", "add", "dan", "--password-stdin", input="", check=False)
    assert empty.returncode == 2 and "--password-stdin needs the password" in empty.stderr
    assert "dan" not in users(client) and "has space" not in users(client)

    # The hub checks too, whatever the client does.
    token = json.loads((client.config / "config.json").read_text())["hubs"][hub.url + "/"]
    status, body = post(hub, "/v1/users", token["token"], {"name": "a b", "password": "p" * 10})
    assert status == 400 and body["error"]["code"] == "usage"
    status, body = post(hub, "/v1/users", token["token"], {"name": "ok", "password": "p"})
    assert status == 400 and "characters" in body["error"]["message"]
    status, body = post(hub, "/v1/users", token["token"], {"name": "admin", "password": "p" * 9})
    assert status == 409 and body["error"]["code"] == "conflict"


def post(hub: Hub, path: str, token: str, body: Any) -> tuple[int, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(
        hub.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_disable_stops_a_user_at_once_and_enable_lets_them_back(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    add_user(client, "dora", "dora-secret-1")
    dora = user_client(tmp_path, hub, "dora", "dora-secret-1")
    assert listed(dora) == []

    assert "Disabled user dora" in client.run("users", "disable", "dora").stderr
    assert users(client)["dora"]["disabled"] is True
    res = dora.run("ls", check=False)
    assert res.returncode == 3
    assert "disabled" in res.stderr and "log in" in res.stderr
    res = dora.run("push", str(random_file(tmp_path / "d.bin", 1000)), "--quiet", check=False)
    assert res.returncode == 3
    assert try_login(dora, "dora", "dora-secret-1").returncode == 3

    self_disable = client.run("users", "disable", "admin", check=False)
    assert self_disable.returncode == 7 and "cannot disable your own account" in self_disable.stderr
    missing = client.run("users", "disable", "nobody", check=False)
    assert missing.returncode == 7 and "no user named 'nobody'" in missing.stderr

    assert "Enabled user dora" in client.run("users", "enable", "dora").stderr
    assert users(client)["dora"]["disabled"] is False
    # Disabling revoked the old login; a fresh one works.
    assert dora.run("ls", check=False).returncode == 3
    dora.login(user="dora", password="dora-secret-1")
    assert listed(dora) == []

    assert [e["detail"]["name"] for e in events(client, "user_disabled")] == ["dora"]
    assert [e["detail"]["name"] for e in events(client, "user_enabled")] == ["dora"]


def test_passwd_changes_the_password_and_signs_out_other_logins(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    add_user(client, "erin", "erin-old-pass")
    here = user_client(tmp_path, hub, "erin", "erin-old-pass")
    elsewhere = Client(tmp_path / "erin-elsewhere", hub)
    elsewhere.login(user="erin", password="erin-old-pass")

    wrong = here.run("passwd", "--password-stdin", input="not-it\nerin-new-pass\n", check=False)
    assert wrong.returncode == 3 and "the current password is wrong" in wrong.stderr
    assert listed(elsewhere) == []  # a failed attempt revokes nothing

    ok = here.run("passwd", "--password-stdin", "--json", input="erin-old-pass\nerin-new-pass\n")
    assert json.loads(ok.stdout) == {"user": "erin", "revoked_tokens": 1}
    assert listed(here) == []  # the login that changed it stays valid
    gone = elsewhere.run("ls", check=False)
    assert gone.returncode == 3 and "log in" in gone.stderr

    old = try_login(Client(tmp_path / "erin-old", hub), "erin", "erin-old-pass")
    assert old.returncode == 3 and "wrong user name or password" in old.stderr
    user_client(tmp_path, hub, "erin", "erin-new-pass")

    (changed,) = events(client, "password_changed")
    assert changed["actor"] == "erin" and changed["detail"]["revoked_tokens"] == 1
    assert [e["actor"] for e in events(client, "password_change_failure")] == ["erin"]

    # The admin's own password can change the same way; the other user's is untouched.
    client.run("passwd", "--password-stdin", input=f"{ADMIN_PASSWORD}\nnew-admin-pw\n")
    assert try_login(Client(tmp_path / "a2", hub), "admin", "new-admin-pw").returncode == 0
    assert listed(here) == []


def test_passwd_failures_count_against_the_login_limiter(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    add_user(client, "fay", "fay-secret-1")
    fay = user_client(tmp_path, hub, "fay", "fay-secret-1")
    for _ in range(5):  # the limiter's threshold
        res = fay.run("passwd", "--password-stdin", input="guess\nfay-new-pass\n", check=False)
        assert res.returncode == 3 and "current password is wrong" in res.stderr
    res = fay.run("passwd", "--password-stdin", input="fay-secret-1\nfay-new-pass\n", check=False)
    assert res.returncode == 3 and "too many failed logins" in res.stderr
    locked = try_login(Client(tmp_path / "fay2", hub), "fay", "fay-secret-1")
    assert locked.returncode == 3 and "too many failed logins" in locked.stderr
    bad_input = fay.run("passwd", "--password-stdin", input="only-one-line\n", check=False)
    assert bad_input.returncode == 2 and "two lines" in bad_input.stderr


def test_half_a_surrogate_pair_is_a_usage_error(hub: Hub, client: Client) -> None:
    """JSON can escape a lone surrogate ("\\ud800"), which no password,
    name or database column holds: it once failed the request (500)."""
    token = token_of(client)
    lone = "\ud800"
    for path, body in (
        ("/v1/login", {"user": "admin", "password": lone * 9}),
        ("/v1/users", {"name": "surrogate", "password": lone * 9}),
        ("/v1/passwd", {"current": lone, "new": "a new password"}),
        ("/v1/agents/enroll", {"token": lone, "key": "ab" * 32}),
    ):
        status, answer = rest(hub, "POST", path, body, token=token)
        assert status == 400, (path, answer)
        assert answer["error"] == {
            "code": "usage",
            "message": "the request holds text that is not Unicode (half of a surrogate pair)",
        }
    status, answer = rest(
        hub, "PUT", "/v1/admin/compression", {"level": "fast", "user": lone}, token=token
    )
    assert status == 400, answer
    status, _ = rest(hub, "GET", "/v1/users", token=token)  # the login still works
    assert status == 200
