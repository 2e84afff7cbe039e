"""Logins under attack: agent logins with hostile names, racing password
guesses, lockouts aimed at someone else, challenge floods, an agent that
meets a lockout; names before tokens; ids never reused; a private data
folder. Real hub process; requests from 127.0.0.1 and 127.0.0.2 (another
machine as far as the hub can tell). Tests that lock anyone out start a hub
of their own; the others share the module's hub."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from freight.hub.agents import login_message
from tests.agentsupport import AgentProc, wait_online
from tests.authsupport import OTHER_ADDRESS, Rest, burst, db_rows, events, rest, token_of
from tests.faultproxy import FaultProxy
from tests.relaysupport import fast
from tests.support import ADMIN_PASSWORD, Client, Hub, random_file, wait_until

WRONG = {"user": "admin", "password": "not the password"}


def enrol(hub: Hub, admin_token: str, name: str) -> Ed25519PrivateKey:
    """A new agent account ``name``; its login key."""
    status, body = rest(hub, "POST", "/v1/agents/tokens", {"name": name}, token=admin_token)
    assert status == 200, body
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw().hex()
    status, body = rest(hub, "POST", "/v1/agents/enroll", {"token": body["token"], "key": public})
    assert status == 200, body
    return key


def agent_login(
    hub: Hub, name: str, key: Ed25519PrivateKey, source: str = "127.0.0.1"
) -> tuple[int, Any]:
    """Challenge and signed answer, as ``freight agent run`` does them."""
    with Rest(hub, source) as r:
        status, body, _ = r.call("POST", "/v1/agents/challenge", {"name": name})
        if status != 200:
            return status, body
        nonce = body["challenge"]
        sig = key.sign(login_message(name, nonce, hub.fingerprint)).hex()
        status, body, _ = r.call(
            "POST", "/v1/agents/login", {"name": name, "challenge": nonce, "signature": sig}
        )
        return status, body


def bad_agent_login(r: Rest, name: str) -> int:
    status, body, _ = r.call("POST", "/v1/agents/challenge", {"name": name})
    if status != 200:
        return status
    body = {"name": name, "challenge": body["challenge"], "signature": "00" * 64}
    return r.call("POST", "/v1/agents/login", body)[0]


def test_agent_login_checks_names_first_and_limits_each_address(hub: Hub, client: Client) -> None:
    admin = token_of(client)
    hostile = "A" * 200_000 + "\x1b[2J"
    for path, body in (
        ("/v1/agents/challenge", {"name": hostile}),
        ("/v1/agents/login", {"name": hostile, "challenge": "00", "signature": "00"}),
        ("/v1/login", {"user": hostile, "password": "x"}),
    ):
        status, answer = rest(hub, "POST", path, body)
        assert status == 400 and answer["error"]["code"] == "usage", (path, status, answer)
        assert "invalid user name" in answer["error"]["message"]
        assert len(answer["error"]["message"]) < 200  # not echoed back whole
    # Nothing of the name was stored or logged.
    assert "AAAAAAAAAAAAAAAA" not in hub.log()
    for kind in ("agent_login_failure", "login_failure"):
        assert all("AAAAAAAA" not in json.dumps(e) for e in events(hub, admin, kind))

    # Fresh valid names are limited per address: one machine cannot try
    # name after name; another machine is not held back by it.
    with Rest(hub) as r:
        statuses = [bad_agent_login(r, f"ghost-{i}") for i in range(60)]
    assert 429 in statuses, statuses
    assert statuses.count(401) <= 50, statuses
    with Rest(hub, OTHER_ADDRESS) as r:
        assert bad_agent_login(r, "ghost-x") == 401


def test_concurrent_wrong_passwords_are_checked_at_most_the_allowance(
    hub: Hub, client: Client
) -> None:
    statuses = burst(hub, "/v1/login", [WRONG] * 50)
    checked = statuses.count(401)
    assert checked >= 1, statuses
    assert checked <= 5, statuses
    assert statuses.count(429) == 50 - checked, statuses
    assert len(events(hub, token_of(client), "login_failure")) == checked
    # Sequential guesses after the burst stop at the allowance as well.
    more = [rest(hub, "POST", "/v1/login", WRONG)[0] for _ in range(10)]
    assert more.count(401) <= 5 - checked, more
    # A lockout aimed at the account from one address leaves it usable
    # from another.
    status, body = rest(
        hub,
        "POST",
        "/v1/login",
        {"user": "admin", "password": ADMIN_PASSWORD},
        source=OTHER_ADDRESS,
    )
    assert status == 200, body


def test_lockouts_are_per_name_and_address_in_separate_key_spaces(hub: Hub, client: Client) -> None:
    admin = token_of(client)
    status, body = rest(
        hub, "POST", "/v1/users", {"name": "127.0.0.1", "password": "dotted-quad-pw"}, token=admin
    )
    assert status == 201, body
    lab = enrol(hub, admin, "lab")
    # An attacker on another machine fails for admin, for the user named
    # like our address, and for agent lab, until it is locked out itself.
    with Rest(hub, OTHER_ADDRESS) as r:
        for name in ("admin", "127.0.0.1"):
            codes = [r.call("POST", "/v1/login", {"user": name, "password": "guess-guess"})[0]
                     for _ in range(6)]  # fmt: skip
            assert codes[:5] == [401] * 5 and codes[5] == 429, (name, codes)
        codes = [bad_agent_login(r, "lab") for _ in range(6)]
        assert codes[:5] == [401] * 5 and codes[5] == 429, codes
    # None of it touches the real owners on this machine.
    status, body = rest(hub, "POST", "/v1/login", {"user": "admin", "password": ADMIN_PASSWORD})
    assert status == 200, body
    status, body = rest(
        hub, "POST", "/v1/login", {"user": "127.0.0.1", "password": "dotted-quad-pw"}
    )
    assert status == 200, body
    status, body = agent_login(hub, "lab", lab)
    assert status == 200, body


def test_outstanding_challenges_are_bounded_per_address(hub: Hub, client: Client) -> None:
    lab = enrol(hub, token_of(client), "lab")
    with Rest(hub, OTHER_ADDRESS) as r:
        statuses = [
            r.call("POST", "/v1/agents/challenge", {"name": f"n{i}"})[0] for i in range(1100)
        ]
    assert statuses[:1024] == [200] * 1024 and set(statuses[1024:]) == {429}, statuses[1020:1030]
    # The same name over and over only replaces its own challenges.
    with Rest(hub, "127.0.0.3") as r:
        assert {r.call("POST", "/v1/agents/challenge", {"name": "lab"})[0] for _ in range(50)} == {
            200
        }
    status, body = agent_login(hub, "lab", lab)
    assert status == 200, body


def test_an_agent_waits_out_a_lockout_instead_of_exiting(hubs: Any, tmp_path: Path) -> None:
    # The agent reaches the hub through a proxy that holds its first
    # connection until the lockout is in place: the lockout need only
    # outlast that one held request, not the agent's start-up.
    hub = hubs("--login-lockout", "3")
    admin = fast(Client(tmp_path / "admin", hub))
    admin.login()
    agent = fast(Client(tmp_path / "agent", hub))
    root = tmp_path / "root"
    root.mkdir()
    status, body = rest(hub, "POST", "/v1/agents/tokens", {"name": "pc"}, token=token_of(admin))
    assert status == 200, body
    with FaultProxy(hub.port) as proxy:
        agent.run(
            "agent", "enroll", proxy.url, "--token-stdin", "--root", str(root),
            "--fingerprint", hub.fingerprint, input=body["token"] + "\n",
        )  # fmt: skip
        proxy.hold()
        seen = proxy.connections
        with AgentProc(agent, tmp_path / "pc.log") as proc:
            wait_until(lambda: proxy.connections > seen or not proc.running, 40, "a login")
            with Rest(hub) as r:  # locks pc out from this machine, where it runs
                assert [bad_agent_login(r, "pc") for _ in range(6)][-1] == 429
            proxy.release()
            wait_until(lambda: "rate_limited" in proc.log() or not proc.running, 40, "a refusal")
            assert proc.running, proc.log()
            wait_online(admin, "pc", timeout=60, proc=proc)


def test_agent_routes_need_a_login_before_they_look_a_name_up(
    shared_hub: Hub, shared_client: Client
) -> None:
    hub, client = shared_hub, shared_client
    enrol(hub, token_of(client), "real")
    status, body = rest(
        hub,
        "POST",
        "/v1/users",
        {"name": "eve", "password": "eve-password"},
        token=token_of(client),
    )
    assert status == 201, body
    status, body = rest(hub, "POST", "/v1/login", {"user": "eve", "password": "eve-password"})
    eve = body["token"]
    for method, path in (
        ("POST", "/disable"),
        ("POST", "/enable"),
        ("DELETE", ""),
        ("PUT", "/cap"),
        ("POST", "/commands"),
        ("PUT", "/key"),
    ):
        seen = {
            name: (rest(hub, method, f"/v1/agents/{name}{path}", {})[0],
                   rest(hub, method, f"/v1/agents/{name}{path}", {}, token=eve)[0])
            for name in ("real", "missing")
        }  # fmt: skip
        assert seen == {"real": (401, 403), "missing": (401, 403)}, (method, path, seen)


def test_account_ids_are_never_reused(shared_hub: Hub, shared_client: Client) -> None:
    hub, client = shared_hub, shared_client
    admin = token_of(client)
    first = enrol(hub, admin, "first")
    (first_id,) = db_rows(hub, "SELECT id FROM users WHERE name = 'first'")[0]
    assert rest(hub, "GET", "/v1/keys/first", token=admin)[0] == 200  # cached by the hub
    assert rest(hub, "DELETE", "/v1/agents/first", token=admin)[0] == 200
    second = enrol(hub, admin, "second")
    (second_id,) = db_rows(hub, "SELECT id FROM users WHERE name = 'second'")[0]
    assert second_id > first_id
    status, body = rest(hub, "GET", "/v1/keys/second", token=admin)
    assert status == 200, body
    assert body["keys"] == [second.public_key().public_bytes_raw().hex()], body
    assert first.public_key().public_bytes_raw().hex() not in json.dumps(body)


def test_stored_names_refuse_control_characters(tmp_path: Path, shared_client: Client) -> None:
    client = shared_client
    src = random_file(tmp_path / "plain.bin", 100)
    for name in ("evil\x1b[2J.txt", "bell\x07", "line\nbreak", "c1\x9bx", "rtl\u202etxt.exe"):
        res = client.run("push", str(src), "--as", name, check=False)
        assert res.returncode == 2 and "control character" in res.stderr, (name, res.stderr)
    assert json.loads(client.run("ls", "--json").stdout) == []


def test_the_data_folder_database_and_key_are_private(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub")
    hub.preexec = lambda: os.umask(0o022)
    hub.start()
    try:
        c = Client(tmp_path / "c", hub)
        c.login()  # the database has been written to
        for path, mode in (
            (hub.data, 0o700),
            (hub.data / "freight.db", 0o600),
            (hub.data / "tls" / "key.pem", 0o600),
        ):
            assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
        for extra in ("freight.db-wal", "freight.db-shm"):
            if (hub.data / extra).exists():
                assert stat.S_IMODE((hub.data / extra).stat().st_mode) & 0o077 == 0, extra
    finally:
        hub.stop()
    # A data folder made by hand with looser modes is tightened at start.
    os.chmod(hub.data, 0o755)
    os.chmod(hub.data / "freight.db", 0o644)
    hub.start()
    try:
        assert stat.S_IMODE(hub.data.stat().st_mode) == 0o700
        assert stat.S_IMODE((hub.data / "freight.db").stat().st_mode) == 0o600
    finally:
        hub.stop()


def test_a_script_cannot_pin_an_unseen_certificate_by_accident(
    tmp_path: Path, shared_hub: Hub
) -> None:
    hub = shared_hub
    c = Client(tmp_path / "c", hub)
    args = ["login", hub.url, "--user", "admin", "--password-stdin"]
    res = c.run(*args, input=ADMIN_PASSWORD + "\n", check=False)
    assert res.returncode == 2, res.stderr
    assert "not pinned yet" in res.stderr and f"--fingerprint {hub.fingerprint}" in res.stderr
    assert not (c.config / "known_hubs.json").exists()
    assert not (c.config / "config.json").exists()
    res = c.run(*args, "--trust-on-first-use", input=ADMIN_PASSWORD + "\n")
    assert "Pinning it (trust on first use)" in res.stderr
    pinned = json.loads((c.config / "known_hubs.json").read_text())
    assert pinned == {f"127.0.0.1:{hub.port}": hub.fingerprint}
    # Pinned now: a later scripted login needs neither option.
    c.run(*args, input=ADMIN_PASSWORD + "\n")


def test_the_enrolment_token_need_not_be_on_the_command_line(
    tmp_path: Path, shared_hub: Hub, shared_client: Client
) -> None:
    hub, client = shared_hub, shared_client
    root = tmp_path / "root"
    root.mkdir()

    def token(name: str) -> str:
        status, body = rest(
            hub, "POST", "/v1/agents/tokens", {"name": name}, token=token_of(client)
        )
        assert status == 200, body
        return str(body["token"])

    def enroll(where: str, *args: str, input: str = "", env: str = "") -> Any:
        c = Client(tmp_path / where, hub)
        if env:
            c.env["FREIGHT_ENROL_TOKEN"] = env
        return c, c.run(
            "agent", "enroll", hub.url, *args, "--root", str(root),
            "--fingerprint", hub.fingerprint, input=input, check=False,
        )  # fmt: skip

    secret_file = tmp_path / "token.txt"
    secret_file.write_text(token("by-file") + "\n")
    for where, args, stdin, env in (
        ("by-stdin", ["--token-stdin"], token("by-stdin") + "\n", ""),
        ("by-file", ["--token-file", str(secret_file)], "", ""),
        ("by-env", [], "", token("by-env")),
    ):
        c, res = enroll(where, *args, input=stdin, env=env)
        assert res.returncode == 0, res.stderr
        assert json.loads((c.config / "agent.json").read_text())["name"] == where

    _, res = enroll("twice", "fe1_x", "--token-stdin", input="fe1_y\n")
    assert res.returncode == 2 and "give the token one way" in res.stderr, res.stderr
    _, res = enroll("none")
    assert res.returncode == 2 and "no enrolment token" in res.stderr, res.stderr
    # What `agents token` suggests keeps the token off the command line.
    res = client.run("agents", "token", "--name", "next")
    assert "--token-stdin" in res.stderr and res.stdout.strip() not in res.stderr
