"""Identity keys: capped per account, listed and removed (`freight keys`),
an admin acting for an account; a peer is sent only the key of the device
at the other end, so even an account flooded with keys still connects; an
agent cannot add keys, an admin can revoke or replace its one login key,
which ends its logins at once. Real hub, real CLI processes, loopback."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.agentsupport import Agent, wait_online
from tests.authsupport import rest, token_of
from tests.integration.test_logins import agent_login, enrol
from tests.relaysupport import Proc, fast
from tests.support import Client, Hub

MAX_KEYS = 16


def new_key() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()


def user(tmp_path: Path, admin: Client, name: str) -> Client:
    password = f"{name}-password"
    admin.run("users", "add", name, "--password-stdin", input=password + "\n")
    c = fast(Client(tmp_path / name, admin.hub))
    c.login(user=name, password=password)
    return c


def device_login(hub: Hub, name: str) -> str:
    """A login of ``name`` from another device (its token)."""
    status, body = rest(hub, "POST", "/v1/login", {"user": name, "password": f"{name}-password"})
    assert status == 200, body
    return str(body["token"])


def keys_of(c: Client, *extra: str) -> dict[str, Any]:
    return dict(json.loads(c.run("keys", "ls", "--json", *extra).stdout))


def test_keys_are_capped_listed_and_removed(tmp_path: Path, client: Client) -> None:
    hub = client.hub
    alice = user(tmp_path, client, "alice")
    (own,) = [k["key"] for k in keys_of(alice)["keys"]]  # registered at login
    # Fifteen more devices log in and register theirs; the seventeenth has no room.
    devices = {new_key(): device_login(hub, "alice") for _ in range(MAX_KEYS - 1)}
    for key, token in devices.items():
        assert rest(hub, "PUT", "/v1/keys", {"key": key}, token=token)[0] == 200
    late = device_login(hub, "alice")
    status, body = rest(hub, "PUT", "/v1/keys", {"key": new_key()}, token=late)
    assert status == 409 and "already has 16 identity keys" in body["error"]["message"], body
    listed = keys_of(alice)
    assert listed["max"] == MAX_KEYS and {k["key"] for k in listed["keys"]} == {own, *devices}
    assert f"* {own}" in alice.run("keys", "ls").stdout  # this device's key is marked

    # Removing a key (by a prefix) ends its device's login and makes room.
    first = next(iter(devices))
    res = alice.run("keys", "rm", first[:12])
    assert "Removed key" in res.stderr and "ended 1 login(s)" in res.stderr, res.stderr
    assert rest(hub, "GET", "/v1/files", token=devices[first])[0] == 401
    assert rest(hub, "PUT", "/v1/keys", {"key": new_key()}, token=late)[0] == 200
    missing = alice.run("keys", "rm", first, check=False)
    assert missing.returncode == 7 and "no identity key" in missing.stderr

    # Only an admin looks at or removes another account's keys.
    assert keys_of(client, "--user", "alice")["keys"] == keys_of(alice)["keys"]
    denied = alice.run("keys", "ls", "--user", "admin", check=False)
    assert denied.returncode == 3 and "only an admin" in denied.stderr
    # Removing this device's key ends the login that registered it.
    client.run("keys", "rm", own, "--user", "alice")
    gone = alice.run("ls", check=False)
    assert gone.returncode == 3 and "log in again" in gone.stderr


def test_a_peer_is_sent_only_the_key_of_the_device_it_meets(tmp_path: Path, client: Client) -> None:
    hub = client.hub
    bob = user(tmp_path, client, "bob")
    # An account that registered 2,000 keys before there was a cap: every
    # Linked frame that listed them all would overflow its 64 KiB header.
    con = sqlite3.connect(hub.data / "freight.db", timeout=30)
    with con:
        (bob_id,) = con.execute("SELECT id FROM users WHERE name = 'bob'").fetchone()
        con.executemany(
            "INSERT INTO identity_keys (user_id, key, created) VALUES (?, ?, ?)",
            [(bob_id, os.urandom(32).hex(), time.time() - 1000) for _ in range(2000)],
        )
    con.close()
    with Proc(bob, "listen", "chat") as listener:
        listener.wait_stderr("Listening for 'chat'")
        with Proc(client, "connect", "bob", "chat") as dialer:
            listener.wait_stderr("Connected: admin", timeout=20)
            dialer.write(b"hello bob\n")
            assert listener.wait_stdout(10) == b"hello bob\n"
            dialer.close_stdin()
            listener.close_stdin()
            assert dialer.wait() == 0, dialer.stderr
    status, body = rest(hub, "GET", "/v1/keys/bob", token=token_of(client))
    assert status == 200 and len(body["keys"]) == MAX_KEYS, len(body["keys"])


def test_an_agent_has_one_login_key_that_an_admin_controls(tmp_path: Path, hub: Hub) -> None:
    admin = fast(Client(tmp_path / "admin", hub))
    admin.login()
    key = enrol(hub, token_of(admin), "lab")
    status, body = agent_login(hub, "lab", key)
    assert status == 200, body
    # A stolen agent login cannot add a key of its own.
    status, body = rest(hub, "PUT", "/v1/keys", {"key": new_key()}, token=body["token"])
    assert status == 403 and "cannot add identity keys" in body["error"]["message"], body

    # An admin replaces the login key: the old one no longer logs in.
    other = Ed25519PrivateKey.generate()
    other_hex = other.public_key().public_bytes_raw().hex()
    res = admin.run("agents", "key", "lab", other_hex)
    assert "new login key" in res.stdout
    assert agent_login(hub, "lab", key)[0] == 401
    assert agent_login(hub, "lab", other)[0] == 200
    assert [k["key"] for k in keys_of(admin, "--user", "lab")["keys"]] == [other_hex]


def test_revoking_an_agents_key_cuts_the_running_agent_off(tmp_path: Path, hub: Hub) -> None:
    admin = fast(Client(tmp_path / "admin", hub))
    admin.login()
    root = tmp_path / "root"
    root.mkdir()
    agent = Agent(admin, hub, "pc", tmp_path / "pc", root)
    proc = agent.start()
    try:
        (key,) = [k["key"] for k in keys_of(admin, "--user", "pc")["keys"]]
        res = admin.run("keys", "rm", key, "--user", "pc")
        assert "ended 1 login(s)" in res.stderr, res.stderr
        assert proc.wait(15) == 3, proc.log()[-2000:]
        assert "agent 'pc' not recognised" in proc.log()
        wait_online(admin, "pc", online=False)
    finally:
        agent.kill()
