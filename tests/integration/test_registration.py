"""Self-registration and approvals: ``freight hub --registration
off|open|approval``, an account that waits until an admin approves or
refuses it, the limits on registering, admins resetting passwords and
setting roles (the last enabled admin keeps its role), and ordinary users
refused every admin call. Real hub processes over TLS, the real CLI, raw
REST calls from chosen loopback addresses (the hub counts registrations
per client address)."""

from __future__ import annotations

import json
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.authsupport import events, rest, token_of
from tests.support import ADMIN_PASSWORD, Client, Hub

PASSWORD = "a registered password"


@pytest.fixture(scope="module")
def approving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub where registrations wait for an admin (at most 3 at once)."""
    h = Hub(
        tmp_path_factory.mktemp("approving") / "hub",
        extra=["--registration", "approval", "--max-pending", "3"],
    ).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def admin_of(tmp_path_factory: pytest.TempPathFactory, approving: Hub) -> Client:
    c = Client(tmp_path_factory.mktemp("approving-admin"), approving)
    c.login()
    return c


def register(c: Client, name: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return c.run(
        "register", c.hub.url, "--user", name, "--password-stdin",
        "--fingerprint", c.hub.fingerprint, input=password + "\n", check=False,
    )  # fmt: skip


def try_login(c: Client, name: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return c.run(
        "login", c.hub.url, "--user", name, "--password-stdin",
        "--fingerprint", c.hub.fingerprint, input=password + "\n", check=False,
    )  # fmt: skip


def approve_all(admin: Client) -> None:
    """Leave room under the bound on pending accounts for the next test."""
    for u in json.loads(admin.run("users", "pending", "--json").stdout):
        admin.run("users", "refuse", u["name"])


def test_registration_is_off_by_default(tmp_path: Path, hub: Hub) -> None:
    status, body = rest(hub, "POST", "/v1/register", {"user": "eve", "password": PASSWORD})
    assert status == 403
    assert body["error"]["message"] == (
        "self-registration is off on this hub; ask an admin for an account"
    )
    res = register(Client(tmp_path / "eve", hub), "eve")
    assert res.returncode == 3 and "self-registration is off" in res.stderr
    assert try_login(Client(tmp_path / "eve2", hub), "eve").returncode == 3


def test_open_registration_makes_an_active_account_that_logs_in(tmp_path: Path, hubs: Any) -> None:
    h = hubs("--registration", "open")
    c = Client(tmp_path / "olga", h)
    res = register(c, "olga")
    assert res.returncode == 0, res.stderr
    assert "the account is active" in res.stderr
    assert "as olga (user)" in try_login(c, "olga").stderr
    assert c.run("ls", "--json").stdout.strip() == "[]"
    dup = register(Client(tmp_path / "olga2", h), "olga")
    assert dup.returncode == 7 and "the name 'olga' is taken; choose another" in dup.stderr


def test_a_registration_waits_is_approved_and_logs_in(
    tmp_path: Path, approving: Hub, admin_of: Client
) -> None:
    c = Client(tmp_path / "paula", approving)
    res = register(c, "paula")
    assert res.returncode == 0, res.stderr
    assert "waits for an administrator's approval" in res.stderr
    # The right password: told it waits; a wrong one: the ordinary error.
    waiting = try_login(c, "paula")
    assert waiting.returncode == 3
    assert "your account waits for an administrator's approval" in waiting.stderr
    wrong = try_login(c, "paula", "not the password at all")
    assert wrong.returncode == 3 and "wrong user name or password" in wrong.stderr
    assert "waits" not in wrong.stderr
    pending = json.loads(admin_of.run("users", "pending", "--json").stdout)
    assert [u["name"] for u in pending] == ["paula"] and pending[0]["state"] == "pending"
    assert "paula" in admin_of.run("users", "pending").stdout
    assert "Approved user paula (user)" in admin_of.run("users", "approve", "paula").stderr
    assert "as paula (user)" in try_login(c, "paula").stderr
    assert json.loads(admin_of.run("users", "pending", "--json").stdout) == []
    again = admin_of.run("users", "approve", "paula", check=False)
    assert again.returncode == 7 and "paula does not wait for approval" in again.stderr
    admin_token = token_of(admin_of)
    registered = [e for e in events(approving, admin_token, "register") if e["actor"] == "paula"]
    assert registered and registered[0]["detail"]["address"] == "127.0.0.1"
    approved = events(approving, admin_token, "user_approved")
    assert any(e["actor"] == "admin" and e["detail"]["name"] == "paula" for e in approved)
    status, page = rest(approving, "GET", "/v1/admin/events?limit=1000", token=admin_token)
    assert status == 200 and PASSWORD not in json.dumps(page)  # never the password


def test_a_refused_registration_never_logs_in(
    tmp_path: Path, approving: Hub, admin_of: Client
) -> None:
    c = Client(tmp_path / "rolf", approving)
    assert register(c, "rolf").returncode == 0
    assert "Refused user rolf" in admin_of.run("users", "refuse", "rolf").stderr
    res = try_login(c, "rolf")
    assert res.returncode == 3 and "your registration was refused" in res.stderr
    assert try_login(c, "rolf", "a wrong password!").stderr.count("wrong user name") == 1
    late = admin_of.run("users", "approve", "rolf", check=False)
    assert late.returncode == 7 and "its account is refused" in late.stderr
    taken = register(Client(tmp_path / "rolf2", approving), "rolf")
    assert taken.returncode == 7 and "taken" in taken.stderr
    refused = rest(approving, "GET", "/v1/users?state=refused", token=token_of(admin_of))[1]
    assert "rolf" in [u["name"] for u in refused]


def test_pending_accounts_are_bounded(approving: Hub, admin_of: Client) -> None:
    approve_all(admin_of)
    names = ["wait1", "wait2", "wait3"]
    for i, name in enumerate(names):
        body = {"user": name, "password": PASSWORD}
        status, answer = rest(approving, "POST", "/v1/register", body, source=f"127.0.1.{i + 1}")
        assert status == 201 and answer == {"user": name, "role": "user", "state": "pending"}
    body = {"user": "wait4", "password": PASSWORD}
    status, answer = rest(approving, "POST", "/v1/register", body, source="127.0.1.9")
    assert status == 429 and answer["error"]["code"] == "limit_reached"
    assert answer["error"]["message"] == (
        "3 registrations already wait for approval; try again later"
    )
    admin_of.run("users", "refuse", "wait1")
    status, _ = rest(approving, "POST", "/v1/register", body, source="127.0.1.9")
    assert status == 201
    approve_all(admin_of)


def test_a_flood_of_registrations_from_one_address_is_limited(
    approving: Hub, admin_of: Client
) -> None:
    approve_all(admin_of)
    statuses = []
    for i in range(12):  # hostile names: nothing is created, each attempt counts
        body = {"user": f"../flood{i}", "password": PASSWORD}
        status, answer = rest(approving, "POST", "/v1/register", body, source="127.0.2.1")
        statuses.append(status)
    assert statuses[:10] == [400] * 10 and statuses[10:] == [429, 429]
    status, answer = rest(
        approving, "POST", "/v1/register", {"user": "flood", "password": PASSWORD},
        source="127.0.2.1",
    )  # fmt: skip
    assert status == 429
    assert "too many registrations from this address; try again in" in answer["error"]["message"]
    # Another address is not held back.
    status, _ = rest(
        approving, "POST", "/v1/register", {"user": "flood", "password": PASSWORD},
        source="127.0.2.2",
    )  # fmt: skip
    assert status == 201
    approve_all(admin_of)


@pytest.mark.parametrize(
    ("user", "password", "says"),
    [
        ("..", PASSWORD, "user name"),
        ("a" * 65, PASSWORD, "user name"),
        ("ädmin", PASSWORD, "user name"),
        ("with space", PASSWORD, "user name"),
        ("", PASSWORD, "user name"),
        ("shorty", "short", "8 to 1024 characters"),
        ("longy", "x" * 1025, "8 to 1024 characters"),
        ("admin", PASSWORD, "taken"),
    ],
)
def test_hostile_registrations_are_refused_and_create_nothing(
    approving: Hub, admin_of: Client, user: str, password: str, says: str
) -> None:
    source = f"127.0.3.{zlib.crc32(user.encode()) % 200 + 1}"  # its own address
    status, answer = rest(
        approving, "POST", "/v1/register", {"user": user, "password": password}, source=source
    )
    assert status in (400, 409), answer
    assert says in answer["error"]["message"]
    names = [u["name"] for u in rest(approving, "GET", "/v1/users", token=token_of(admin_of))[1]]
    assert user not in names or user == "admin"


def test_roles_the_last_admin_and_password_resets(
    tmp_path: Path, approving: Hub, admin_of: Client
) -> None:
    admin_of.run("users", "add", "tina", "--password-stdin", input=PASSWORD + "\n")
    tina = Client(tmp_path / "tina", approving)
    tina.login(user="tina", password=PASSWORD)
    # The last enabled admin keeps its role.
    last = admin_of.run("users", "role", "admin", "user", check=False)
    assert last.returncode == 7
    assert "admin is the last enabled admin: make another account admin first" in last.stderr
    # tina becomes an admin (at once, same login), then an ordinary user again.
    assert "tina is now an admin" in admin_of.run("users", "role", "tina", "admin").stderr
    assert "tina" in tina.run("users", "ls").stdout
    assert "tina is now an ordinary user" in admin_of.run("users", "role", "tina", "user").stderr
    denied = tina.run("users", "ls", check=False)
    assert denied.returncode == 3 and "this needs an admin account" in denied.stderr
    roles = events(approving, token_of(admin_of), "role_set")  # newest first
    assert [e["detail"]["role"] for e in roles if e["detail"]["name"] == "tina"] == [
        "user",
        "admin",
    ]
    assert all(e["actor"] == "admin" for e in roles)
    # A reset password ends tina's logins; the new one works, the old not.
    new = "tina's new password"
    res = admin_of.run("users", "passwd", "tina", "--password-stdin", input=new + "\n")
    assert "Password set for tina; ended 1 login(s)" in res.stderr
    ended = tina.run("ls", check=False)
    assert ended.returncode == 3 and "log in again" in ended.stderr
    assert try_login(tina, "tina").returncode == 3
    assert "as tina (user)" in try_login(tina, "tina", new).stderr
    own = admin_of.run(
        "users", "passwd", "admin", "--password-stdin", input=new + "\n", check=False
    )
    assert own.returncode == 2 and "freight passwd" in own.stderr
    resets = events(approving, token_of(admin_of), "password_reset")
    assert [(e["actor"], e["detail"]["name"]) for e in resets] == [("admin", "tina")]


def test_the_last_admin_cannot_be_disabled_by_another_admin(tmp_path: Path, hubs: Any) -> None:
    h = hubs()
    admin = Client(tmp_path / "admin", h)
    admin.login()
    admin.run("users", "add", "vera", "--admin", "--password-stdin", input=PASSWORD + "\n")
    vera = Client(tmp_path / "vera", h)
    vera.login(user="vera", password=PASSWORD)
    vera.run("users", "role", "admin", "user")  # admin is no admin now; vera is the last
    last = vera.run("users", "role", "vera", "user", check=False)
    assert last.returncode == 7 and "vera is the last enabled admin" in last.stderr
    own = vera.run("users", "disable", "vera", check=False)
    assert own.returncode == 7 and "you cannot disable your own account" in own.stderr
    admin_token, vera_token = token_of(admin), token_of(vera)
    status, _ = rest(h, "POST", "/v1/users/vera/disable", token=admin_token)
    assert status == 403  # admin is an ordinary user now
    assert rest(h, "GET", "/v1/users", token=vera_token)[0] == 200


def test_ordinary_users_are_refused_every_admin_call(
    tmp_path: Path, approving: Hub, admin_of: Client
) -> None:
    admin_of.run("users", "add", "uma", "--password-stdin", input=PASSWORD + "\n")
    uma = Client(tmp_path / "uma", approving)
    uma.login(user="uma", password=PASSWORD)
    token = token_of(uma)
    calls = [
        ("GET", "/v1/users?state=pending", None),
        ("POST", "/v1/users/uma/approve", None),
        ("POST", "/v1/users/uma/refuse", None),
        ("POST", "/v1/users/admin/password", {"password": "a new admin password"}),
        ("POST", "/v1/users/uma/role", {"role": "admin"}),
        ("POST", "/v1/users/admin/role", {"role": "user"}),
    ]
    for method, path, body in calls:
        status, answer = rest(approving, method, path, body, token=token)
        assert status == 403, (path, answer)
        assert answer["error"]["message"] == "this needs an admin account"
    for args in (("pending",), ("approve", "uma"), ("role", "uma", "admin")):
        res = uma.run("users", *args, check=False)
        assert res.returncode == 3 and "this needs an admin account" in res.stderr, args
    # Without a login at all: 401.
    assert rest(approving, "POST", "/v1/users/uma/approve")[0] == 401
    assert (
        "as admin (admin)"
        in try_login(Client(tmp_path / "a", approving), "admin", ADMIN_PASSWORD).stderr
    )
