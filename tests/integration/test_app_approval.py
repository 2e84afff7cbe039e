"""Application approval (``freight hub --app-approval``): the first
registration of an unknown application name is held until an admin
approves it; a held application receives nothing, then, once approved,
receives without registering again; a refused one stays refused. Real hub,
a real ``freight daemon`` and CLI processes (``freight msg listen|send``,
``freight apps``), as the messaging tests run them."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.authsupport import events, token_of
from tests.integration.test_msg_cli import DEADLINE, listening
from tests.relaysupport import BOB_PASSWORD, Proc, fast
from tests.support import Client, Hub, wait_until


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(
        tmp_path_factory.mktemp("gated") / "hub",
        extra=["--msg-warmup", "0", "--app-approval", "--max-pending", "4"],
    ).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def pair(gated: Hub) -> Iterator[tuple[Client, Client]]:
    base = Path(tempfile.mkdtemp(prefix="fapp-", dir="/tmp"))
    admin = fast(Client(base / "a", gated))
    admin.login()
    admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
    bob = fast(Client(base / "b", gated))
    bob.login(user="bob", password=BOB_PASSWORD)
    yield admin, bob
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(pair: tuple[Client, Client]) -> Iterator[Proc]:
    _, bob = pair
    with Proc(bob, "daemon") as proc:
        proc.wait_stderr(r"Messaging host [0-9a-f]{32} serving", timeout=30)
        yield proc


def apps(admin: Client, *args: str) -> dict[str, dict[str, object]]:
    return {a["name"]: a for a in json.loads(admin.run("apps", "ls", "--json", *args).stdout)}


def test_a_held_application_receives_nothing_until_approved_then_receives(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    listener, ticket = listening(bob, "weather", "--interest", "0xFF")
    with listener:
        listener.wait_stderr("Application weather waits for an administrator's approval")
        held = apps(admin, "--state", "pending")
        assert held["weather"]["requested_by"] == "bob"
        assert held["weather"]["decided_by"] is None
        assert "weather" in admin.run("apps", "ls", "--state", "pending").stdout
        # Held: the hub knows no host for it, the message is not delivered.
        refused = admin.run("msg", "send", "bob", "weather", "--type", "1", "rain", check=False)
        assert refused.returncode == 9, refused.stderr
        assert "no_app" in refused.stderr
        assert listener.stdout_lines() == [f"ticket {ticket}"]
        status = json.loads(bob.run("msg", "apps", "--json").stdout)
        assert [r["held"] for r in status["apps"] if r["app"] == "weather"] == ["pending"]
        # Approved: the same registration takes messages, no new listen.
        res = admin.run("apps", "approve", "weather")
        assert "Approved application weather" in res.stderr
        sent = admin.run("msg", "send", "bob", "weather", "--type", "1", "sun")
        assert sent.stdout == "delivered to 1 recipient(s)\n"
        wait_until(lambda: len(listener.stdout_lines()) == 2, DEADLINE, "the message")
        assert listener.stdout_lines()[1] == "admin 0x00000001 sun"
        wait_until(
            lambda: (
                not any(
                    r["held"] for r in json.loads(bob.run("msg", "apps", "--json").stdout)["apps"]
                )
            ),
            DEADLINE,
            "the host told nothing is held",
        )
    decided = apps(admin)["weather"]
    assert decided["state"] == "approved" and decided["decided_by"] == "admin"
    token = token_of(admin)
    assert [e["detail"]["app"] for e in events(pair[0].hub, token, "app_requested")] == ["weather"]
    approved = events(pair[0].hub, token, "app_approved")
    assert [(e["actor"], e["detail"]["app"]) for e in approved] == [("admin", "weather")]
    # A later listen on the approved name is not held.
    again, _ = listening(bob, "weather", "--interest", "0xFF", "--count", "1")
    with again:
        admin.run("msg", "send", "bob", "weather", "--type", "1", "fog")
        assert again.wait(DEADLINE) == 0, again.stderr
        assert "waits for an administrator" not in again.stderr


def test_a_refused_application_stays_refused(pair: tuple[Client, Client], daemon: Proc) -> None:
    admin, bob = pair
    listener, _ = listening(bob, "spam", "--interest", "0xFF")
    with listener:
        listener.wait_stderr("Application spam waits for an administrator's approval")
        assert "Refused application spam" in admin.run("apps", "refuse", "spam").stderr
        sent = admin.run("msg", "send", "bob", "spam", "--type", "1", "buy", check=False)
        assert sent.returncode == 9 and "no_app" in sent.stderr
    # Listening again: told at once, and nothing is registered.
    proc = Proc(bob, "msg", "listen", "spam")
    with proc:
        assert proc.wait(DEADLINE) == 3, proc.stderr
        assert "application spam was refused by the hub's administrator" in proc.stderr
    assert apps(admin)["spam"]["state"] == "refused"
    refused = events(admin.hub, token_of(admin), "app_refused")
    assert [(e["actor"], e["detail"]["app"]) for e in refused] == [("admin", "spam")]


def test_an_admin_may_decide_ahead_and_ordinary_users_may_not(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    admin.run("apps", "approve", "decided-ahead")
    listener, _ = listening(bob, "decided-ahead", "--interest", "0xFF", "--count", "1")
    with listener:
        admin.run("msg", "send", "bob", "decided-ahead", "--type", "1", "hi")
        assert listener.wait(DEADLINE) == 0, listener.stderr
        assert "waits for an administrator" not in listener.stderr
    for args in (("ls",), ("approve", "x"), ("refuse", "x")):
        res = bob.run("apps", *args, check=False)
        assert res.returncode == 3 and "this needs an admin account" in res.stderr, args
    bad = admin.run("apps", "approve", "no/slashes", check=False)
    assert bad.returncode == 2 and "an application name is 1-64 of" in bad.stderr


def test_pending_application_names_are_bounded(pair: tuple[Client, Client], daemon: Proc) -> None:
    admin, bob = pair
    waiting = len(apps(admin, "--state", "pending"))
    names = [f"flood{i}" for i in range(6)]
    procs = [listening(bob, n, "--interest", "0x1")[0] for n in names]
    try:
        for proc in procs:  # all held, recorded or not
            proc.wait_stderr("waits for an administrator's approval")
        pending = apps(admin, "--state", "pending")
        assert len(pending) == 4  # the bound (--max-pending 4)
        assert waiting + len([n for n in names if n in pending]) == 4
        # One not recorded can still be approved ahead, and then receives.
        unrecorded = next(n for n in names if n not in pending)
        admin.run("apps", "approve", unrecorded)
        sent = admin.run("msg", "send", "bob", unrecorded, "--type", "1", "late")
        assert sent.stdout == "delivered to 1 recipient(s)\n"
    finally:
        for proc in procs:
            proc.__exit__(None, None, None)
