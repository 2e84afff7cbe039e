"""End-to-end encrypted relay: ``send`` / ``receive`` with one-time codes,
``connect`` / ``listen`` byte pipes, the hub's answers, the admin view and
the Python SDK. Real hub process, real TLS, real CLI processes on loopback;
two accounts (admin and bob), each with its own config folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest

from freight.client.relay import Connection, RelayClient
from freight.errors import Conflict, ConnectionEnded, Forbidden
from freight.protocol import messages as m
from freight.protocol.e2e import DIAL, SPAKE2_BYTES, X25519_BYTES, CodeHandshake
from tests.relaysupport import FAST_RELAY, Proc, fast, sdk
from tests.support import (
    Client,
    Hub,
    assert_same_tree,
    make_tree,
    random_file,
    same_bytes,
    wait_until,
)

MiB = 1024 * 1024
CODE_RE = r"\d+(?:-[a-z]+){3}"
PART_SUFFIX = ".freight-part"


# --- accounts ------------------------------------------------------------------


# --- trees -----------------------------------------------------------------------


def tree_counts(root: Path) -> tuple[int, int, int]:
    """(files, folders including ``root``, bytes) as send/receive count them."""
    everything = list(root.rglob("*"))
    files = [p for p in everything if p.is_file()]
    dirs = [p for p in everything if p.is_dir()]
    return len(files), len(dirs) + 1, sum(p.stat().st_size for p in files)


# --- send / receive ----------------------------------------------------------


def done_event(text: str) -> dict[str, Any]:
    """The receiver's (only) JSON line: its summary."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [e["event"] for e in lines] == ["done"], text
    return lines[0]


def summary(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ("files", "dirs", "bytes", "sent", "resumed")}


def sender_result(sender: Proc, timeout: float = 10) -> dict[str, Any]:
    """Wait for a ``send --json`` to finish; its events must be code, done."""
    assert sender.wait(timeout) == 0, sender.stderr
    events = sender.json_events()
    assert [e["event"] for e in events] == ["code", "done"], events
    return events[1]


def start_send(client: Client, *args: str) -> tuple[Proc, str]:
    """A running ``send --json`` and the code it printed first."""
    sender = Proc(client, "send", *args, "--json")
    try:
        first = sender.first_event()
        assert first["event"] == "code", first
        assert re.fullmatch(CODE_RE, first["code"]), first
        assert 0 < first["expires_in"] <= 3600
    except BaseException:
        sender.kill()
        raise
    return sender, str(first["code"])


def receive(client: Client, code: str, dest: Path, *extra: str) -> dict[str, Any]:
    res = client.run("receive", code, "-o", str(dest), "--json", *extra, timeout=30)
    return done_event(res.stdout)


def test_send_a_tree_and_receive_it_as_another_account(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = make_tree(tmp_path / "photos", seed=11, big=5 * MiB)
    files, dirs, size = tree_counts(src)
    sender, code = start_send(admin, str(src))
    with sender:
        got = receive(bob, code, tmp_path / "inbox")
        sent = sender_result(sender)
    assert summary(got) == summary(sent)
    assert summary(got) == {"files": files, "dirs": dirs, "bytes": size, "sent": size, "resumed": 0}
    assert_same_tree(src, tmp_path / "inbox" / "photos")
    assert not list((tmp_path / "inbox").rglob("*" + PART_SUFFIX))


def test_send_a_single_file(tmp_path: Path, admin: Client, bob: Client) -> None:
    src = random_file(tmp_path / "report 2024 (final).pdf", 300_000, seed=3)
    os.chmod(src, 0o604)
    os.utime(src, (1_500_000_000.5, 1_500_000_000.5))
    sender, code = start_send(admin, str(src))
    with sender:
        # Human output on the receiving side this time.
        res = bob.run("receive", code, "-o", str(tmp_path / "in"), timeout=30)
        assert "Received 1 file(s)" in res.stderr, res.stderr
        sent = sender_result(sender)
    assert summary(sent) == {"files": 1, "dirs": 0, "bytes": 300_000, "sent": 300_000, "resumed": 0}
    assert [p.name for p in (tmp_path / "in").iterdir()] == [src.name]
    dst = tmp_path / "in" / src.name
    assert same_bytes(src, dst)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o604
    assert abs(dst.stat().st_mtime - 1_500_000_000.5) < 1e-3


def test_receiving_again_after_completion_sends_nothing(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = make_tree(tmp_path / "album", seed=11, big=5 * MiB)
    files, dirs, size = tree_counts(src)
    sender, code = start_send(admin, str(src))
    with sender:
        receive(bob, code, tmp_path / "in")
        sender_result(sender)

    # The sender runs again under the same code (still valid); the
    # receiver runs again into the same folder: nothing crosses the wire.
    again, same = start_send(admin, str(src), "--code", code)
    assert same == code
    with again:
        got = receive(bob, code, tmp_path / "in")
        sent = sender_result(again)
    expected = {"files": files, "dirs": dirs, "bytes": size, "sent": 0, "resumed": size}
    assert summary(got) == expected
    assert summary(sent) == expected
    assert_same_tree(src, tmp_path / "in" / "album")


def test_a_partial_file_resumes_and_a_foreign_one_starts_over(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "movie.bin", 4 * MiB, seed=21)
    dest = tmp_path / "in"
    dest.mkdir()
    part = dest / ("movie.bin" + PART_SUFFIX)
    with open(src, "rb") as f:
        part.write_bytes(f.read(1_500_000))  # what an interrupted run leaves behind
    sender, code = start_send(admin, str(src))
    with sender:
        got = receive(bob, code, dest)
        sender_result(sender)
    assert (got["sent"], got["resumed"]) == (4 * MiB - 1_500_000, 1_500_000)
    assert same_bytes(src, dest / "movie.bin") and not part.exists()

    # A partial file with other bytes is not trusted: everything is sent.
    (dest / "movie.bin").unlink()
    random_file(part, 1_000_000, seed=99)
    again, _ = start_send(admin, str(src), "--code", code)
    with again:
        got = receive(bob, code, dest)
        sender_result(again)
    assert (got["sent"], got["resumed"]) == (4 * MiB, 0)
    assert same_bytes(src, dest / "movie.bin") and not part.exists()


def test_codes_can_be_reused_only_by_their_owner_while_valid(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "a.bin", 1000)
    sender, code = start_send(admin, str(src))
    with sender:
        theirs = bob.run("send", str(src), "--code", code, "--json", check=False, timeout=20)
        assert theirs.returncode == 3, theirs
        assert "belongs to someone else" in theirs.stderr
        assert sender.running
    unknown = admin.run("send", str(src), "--code", "987-no-such", check=False, timeout=20)
    assert unknown.returncode == 7, unknown
    assert "expired or is unknown" in unknown.stderr
    bad = admin.run("send", str(src), "--code", "crossbow", check=False, timeout=20)
    assert bad.returncode == 2 and "is not a code like" in bad.stderr


def test_a_code_works_only_while_it_is_valid(tmp_path: Path, admin: Client, bob: Client) -> None:
    src = random_file(tmp_path / "short-lived.bin", 1000)
    sender, code = start_send(admin, str(src), "--ttl", "1s")
    with sender:
        assert sender.json_events()[0]["expires_in"] <= 1
        # Nobody came: the sender says so and stops rather than waiting forever.
        assert sender.wait(10) == 7, sender.stderr
        assert "expired before the transfer finished" in error_line(sender.stderr)
    late = bob.run("receive", code, "-o", str(tmp_path / "in"), check=False, timeout=20)
    assert late.returncode == 7 and "expired or is unknown" in one_line_error(late)
    again = admin.run("send", str(src), "--code", code, check=False, timeout=20)
    assert again.returncode == 7 and "expired or is unknown" in one_line_error(again)
    assert not (tmp_path / "in").exists()


def one_line_error(res: Any) -> str:
    """The single ``freight: error: ...`` line a failed command prints."""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("freight: error: "), res.stderr
    return str(lines[0])


def error_line(stderr: str) -> str:
    """The one error line among a command's other messages."""
    errors = [line for line in stderr.splitlines() if line.startswith("freight: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_wrong_code_is_refused_and_the_sender_keeps_waiting(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "secret.bin", 200_000, seed=5)
    with Proc(admin, "send", str(src)) as sender:  # human output: it reports the attempt
        code = sender.wait_stderr(rf"Code: ({CODE_RE})").group(1)
        nameplate = code.split("-")[0]
        wrong = bob.run("receive", f"{nameplate}-wrong-guess", "-o", str(tmp_path / "x"),
                        check=False, timeout=20)  # fmt: skip
        assert wrong.returncode == 3, wrong
        assert "wrong code" in one_line_error(wrong)
        assert not (tmp_path / "x" / "secret.bin").exists()
        sender.wait_stderr(
            r"someone tried a wrong code \(1 of 3 failed claims allowed\); still waiting"
        )
        assert sender.running

        ok = bob.run("receive", code, "-o", str(tmp_path / "in"), check=False, timeout=30)
        assert ok.returncode == 0, ok
        assert sender.wait(10) == 0, sender.stderr
        assert "Sent 1 file(s)" in sender.stderr
    assert same_bytes(src, tmp_path / "in" / "secret.bin")


def test_three_wrong_codes_burn_the_code(tmp_path: Path, admin: Client, bob: Client) -> None:
    src = random_file(tmp_path / "secret.bin", 1000, seed=6)
    sender, code = start_send(admin, str(src))
    nameplate = code.split("-")[0]
    with sender:
        for attempt in range(3):
            wrong = bob.run("receive", f"{nameplate}-bad-guess{'x' * attempt}", "-o",
                            str(tmp_path / "x"), check=False, timeout=20)  # fmt: skip
            assert wrong.returncode == 3, (attempt, wrong)
            assert "wrong code" in one_line_error(wrong)
        # The sender stops with a clear message instead of waiting forever.
        assert sender.wait(10) == 3, sender.stderr
        assert "code burned" in error_line(sender.stderr)
        assert "new code" in error_line(sender.stderr)
    right = bob.run("receive", code, "-o", str(tmp_path / "in"), check=False, timeout=20)
    assert right.returncode == 7, right
    message = one_line_error(right)
    assert "expired or is unknown" in message and "ask the sender for a new code" in message
    assert not (tmp_path / "in" / "secret.bin").exists()
    # The code cannot be taken up again by its owner either.
    again = admin.run("send", str(src), "--code", code, check=False, timeout=20)
    assert again.returncode == 7 and "expired or is unknown" in again.stderr


async def claim_and_hang_up(
    rc: RelayClient, code: str, guess: str, how: str = "hangup"
) -> list[bytes]:
    """What a guesser does with a code's nameplate: claim it, send the
    SPAKE2 message of its guess, take whatever handshake records the sender
    sends back, and hang up without ever confirming (``how``: ``hangup``, or
    ``drop`` its link to the hub, which it then opens again). Returns those
    records."""
    nameplate = code.split("-")[0]
    cid = secrets.token_hex(12)
    linked = asyncio.Event()
    records: list[bytes] = []
    arrived = asyncio.Event()
    dispatch = rc._dispatch

    async def intercept(msg: m.AnyMessage, payload: bytes) -> None:
        if getattr(msg, "cid", None) != cid:
            await dispatch(msg, payload)
        elif isinstance(msg, m.Linked):
            linked.set()
        elif isinstance(msg, m.Relay) and msg.kind == "h":
            records.append(payload)
            arrived.set()

    async def records_seen(n: int) -> None:
        while len(records) < n:
            arrived.clear()
            await arrived.wait()

    rc._dispatch = intercept  # type: ignore[method-assign]
    try:
        guesser = CodeHandshake(f"{nameplate}-{guess}", DIAL, f"code:{nameplate}".encode())
        await rc.send_frame(m.Claim(rid=secrets.token_hex(4), cid=cid, nameplate=nameplate))
        await asyncio.wait_for(linked.wait(), 20)
        for out in guesser.take():
            await rc.send_frame(m.Relay(cid=cid, kind="h", len=len(out)), out)
        await asyncio.wait_for(records_seen(1), 20)
        # A sender that confirms first sends its proof right after its first
        # message: wait for it long enough to see it if it comes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(records_seen(2), 3)
        if how == "hangup":
            await rc.send_frame(m.Hangup(cid=cid, code="closed", message="guessed"))
        else:
            attached = rc.reconnects
            assert rc.chan is not None
            await rc.chan.aclose()

            async def back() -> None:
                while rc.reconnects == attached or not rc.attached.is_set():
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(back(), 20)
    finally:
        rc._dispatch = dispatch  # type: ignore[method-assign]
    return records


def code_failures(admin: Client, nameplate: str, after: int = 0) -> list[dict[str, Any]]:
    """The code_failure events of ``nameplate`` (numbers are reused once a
    code is gone: only those with an id above ``after``)."""
    events = json.loads(
        admin.run("admin", "events", "--kind", "code_failure", "--limit", "1000", "--json").stdout
    )
    return [e for e in events if e["detail"].get("nameplate") == nameplate and e["id"] > after]


def last_event_id(admin: Client) -> int:
    events = json.loads(admin.run("admin", "events", "--limit", "1", "--json").stdout)
    return max((int(e["id"]) for e in events), default=0)


@pytest.mark.usefixtures("fast_env")
@pytest.mark.parametrize(("how", "reason"), [("hangup", "closed"), ("drop", "detached")])
async def test_claims_that_hang_up_mid_handshake_burn_the_code(
    tmp_path: Path, admin: Client, bob: Client, how: str, reason: str
) -> None:
    """A guesser who hangs up (or drops its link) before confirming learns
    nothing it could test a guess against, and each such claim still counts:
    after three the sender stops and the code is gone."""
    src = random_file(tmp_path / "wanted.bin", 1000, seed=8)
    before = last_event_id(admin)
    sender, code = start_send(admin, str(src))
    nameplate = code.split("-")[0]
    with sender:
        async with sdk(bob) as guesser:
            for attempt in range(3):
                got = await claim_and_hang_up(guesser, code, f"guess-number-{attempt}", how)
                # Only the sender's SPAKE2 message: nothing to check a guess with.
                assert [len(r) for r in got] == [SPAKE2_BYTES + X25519_BYTES], attempt
        assert await asyncio.to_thread(sender.wait, 20) == 3, sender.stderr
        assert "code burned" in error_line(sender.stderr)
    late = await asyncio.to_thread(
        bob.run, "receive", code, "-o", str(tmp_path / "in"), check=False, timeout=20
    )
    assert late.returncode == 7, late
    assert "expired or is unknown" in one_line_error(late)
    failures = await asyncio.to_thread(code_failures, admin, nameplate, before)
    assert sorted(e["detail"]["failures"] for e in failures) == [1, 2, 3], failures
    assert {e["actor"] for e in failures} == {"bob"}
    assert {e["detail"]["reason"] for e in failures} == {reason}


@pytest.fixture(scope="module")
def eve(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    """A third account, up to no good."""
    admin.run("users", "add", "eve", "--password-stdin", input="eve-relay-secret\n")
    c = Client(tmp_path_factory.mktemp("client-eve"), shared_hub)
    c.login(user="eve", password="eve-relay-secret")
    return fast(c)


@pytest.mark.usefixtures("fast_env")
async def test_only_the_parties_of_a_code_may_rejoin_its_connection(
    tmp_path: Path, admin: Client, bob: Client, eve: Client
) -> None:
    """Eve knows the nameplate (it is no secret) and dials it as a rejoin,
    from either side; the hub refuses, and bob's real receive works."""
    src = random_file(tmp_path / "mine.bin", 50_000, seed=9)
    sender, code = start_send(admin, str(src))
    app = "code:" + code.split("-")[0]
    with sender:
        async with sdk(eve) as squatter:
            for role, peer in (("dial", "admin"), ("accept", "bob")):
                cid = secrets.token_hex(12)
                dial = m.Dial(
                    rid=(rid := secrets.token_hex(4)),
                    cid=cid,
                    peer=peer,
                    app=app,
                    role=role,
                    rejoin=True,
                )
                with pytest.raises(Forbidden, match="only the sender and the receiver"):
                    await asyncio.wait_for(squatter.request(dial, rid), 10)
            assert live_connections(admin, app) == []
            got = await asyncio.to_thread(receive, bob, code, tmp_path / "in")
        assert got["bytes"] == 50_000
        assert await asyncio.to_thread(sender.wait, 10) == 0, sender.stderr
    assert same_bytes(src, tmp_path / "in" / "mine.bin")


@pytest.mark.usefixtures("fast_env")
async def test_nobody_else_can_claim_a_code_while_its_receiver_is_away(
    admin: Client, bob: Client, eve: Client
) -> None:
    """Bob proved the code and is receiving; his link drops. Eve's claim of
    the nameplate in that moment is refused (it used to replace bob's
    connection); bob comes back to the same connection."""
    async with sdk(admin) as ca, sdk(bob) as cb, sdk(eve) as ce:
        offer = await ca.offer("tulip-walrus-zebra")
        claim = asyncio.create_task(cb.claim(offer.code, timeout=20))
        out = await asyncio.wait_for(offer.accept(), 20)
        await out.wait_established(20)
        inc = await claim
        gate = asyncio.Event()
        attach = cb._attach

        async def attach_when_allowed(transport: str) -> None:
            await gate.wait()
            await attach(transport)

        cb._attach = attach_when_allowed  # type: ignore[method-assign]
        assert cb.chan is not None
        await cb.chan.aclose()
        await asyncio.to_thread(
            wait_until,
            lambda: [r["state"] for r in live_connections(admin, out.app)] == ["waiting"],
            20,
            "bob's link to drop",
        )
        rid = secrets.token_hex(4)
        with pytest.raises(Conflict, match="someone else is receiving"):
            await ce.request(
                m.Claim(rid=rid, cid=secrets.token_hex(12), nameplate=offer.nameplate), rid
            )
        gate.set()
        await out.send(b"still yours")
        assert await asyncio.wait_for(inc.recv(), 20) == b"still yours"
        await inc.send(b"thanks")
        assert await asyncio.wait_for(out.recv(), 20) == b"thanks"


def test_unknown_or_malformed_codes_are_refused(tmp_path: Path, bob: Client) -> None:
    res = bob.run("receive", "999-no-such", "-o", str(tmp_path / "in"), check=False, timeout=20)
    assert res.returncode == 7, res
    message = one_line_error(res)
    assert "expired or is unknown" in message and "new code" in message
    assert not (tmp_path / "in").exists()
    bad = bob.run("receive", "no-number-here", check=False, timeout=20)
    assert bad.returncode == 2 and "is not a code like" in bad.stderr


def test_an_overlong_code_number_is_refused_at_once(tmp_path: Path, bob: Client) -> None:
    with Proc(bob, "receive", "1234567890123456789-crossbow-gazelle", "-o", str(tmp_path)) as r:
        assert r.wait(5) == 2, r.stderr
        assert "is not a code like" in one_line_error(r)


# --- connect / listen -------------------------------------------------------


def test_pipes_carry_bytes_both_ways(admin: Client, bob: Client) -> None:
    blob = os.urandom(MiB)
    with Proc(bob, "listen", "chat", "--verify") as listener:
        listener.wait_stderr("Listening for 'chat' from anyone")
        with Proc(admin, "connect", "bob", "chat", "--verify") as dialer:
            mine = dialer.wait_stderr(r"Verification code: ([0-9 ]+\d)").group(1)
            theirs = listener.wait_stderr(r"Verification code: ([0-9 ]+\d)").group(1)
            assert mine == theirs and len(mine.replace(" ", "")) >= 10
            listener.wait_stderr("Connected: admin")

            dialer.write(b"hello bob\n")
            assert listener.wait_stdout(10) == b"hello bob\n"
            listener.write(b"hi admin\n")
            assert dialer.wait_stdout(9) == b"hi admin\n"
            dialer.write(blob)
            listener.write(b"bye\n")
            assert listener.wait_stdout(10 + MiB) == b"hello bob\n" + blob
            assert dialer.wait_stdout(13) == b"hi admin\nbye\n"

            dialer.close_stdin()
            listener.close_stdin()
            assert dialer.wait() == 0, dialer.stderr
            assert listener.wait() == 0, listener.stderr
            assert listener.stdout == b"hello bob\n" + blob
            assert dialer.stdout == b"hi admin\nbye\n"
            assert "error" not in dialer.stderr + listener.stderr


def test_a_pipe_answers_after_the_other_end_closed_its_input(admin: Client, bob: Client) -> None:
    """Request / response, as with `echo question | freight connect bob ask`:
    closing one's input is a half close; the answer must still come back."""
    with Proc(bob, "listen", "ask") as listener:
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "bob", "ask") as dialer:
            dialer.write(b"question\n")
            dialer.close_stdin()
            assert listener.wait_stdout(9) == b"question\n"
            try:
                listener.write(b"answer\n")
                listener.close_stdin()
            except BrokenPipeError:
                raise AssertionError("the listener exited before it could answer") from None
            assert dialer.wait() == 0 and listener.wait() == 0
            assert dialer.stdout == b"answer\n"


def test_the_hub_refuses_impossible_connections(admin: Client, bob: Client) -> None:
    with (
        Proc(admin, "connect", "admin", "chat") as me,
        Proc(admin, "connect", "nobody", "chat") as nobody,
    ):
        assert me.wait() == 2 and "yourself" in one_line_error(me)
        assert nobody.wait() == 7 and "no user 'nobody'" in one_line_error(nobody)

    with Proc(bob, "listen", "dup") as listener:
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "bob", "dup") as first:
            listener.wait_stderr("Connected: admin")
            second = admin.run("connect", "bob", "dup", "--wait", "5", check=False, timeout=20)
            assert second.returncode == 7, second
            assert "already exists" in one_line_error(second)
            # The first one is untouched.
            first.write(b"still here")
            assert listener.wait_stdout(10) == b"still here"
            first.close_stdin()
            listener.close_stdin()
            assert first.wait() == 0 and listener.wait() == 0


def live_connections(admin: Client, app: str) -> list[dict[str, Any]]:
    rows = json.loads(admin.run("admin", "connections", "--json").stdout)
    return [r for r in rows if r["app"] == app]


def test_connect_waits_for_the_listener(admin: Client, bob: Client) -> None:
    with Proc(admin, "connect", "bob", "later", "--wait", "30") as dialer:
        # The hub holds the dial until bob listens.
        wait_until(
            lambda: [r["state"] for r in live_connections(admin, "later")] == ["waiting"],
            10,
            "the dial to wait at the hub",
        )
        assert dialer.running
        with Proc(bob, "listen", "later") as listener:
            listener.wait_stderr("Connected: admin")
            dialer.write(b"ping")
            dialer.close_stdin()
            assert listener.wait_stdout(4) == b"ping"
            listener.close_stdin()
            assert dialer.wait() == 0 and listener.wait() == 0, dialer.stderr + listener.stderr


def test_connect_wait_gives_up_with_a_clear_message(admin: Client, bob: Client) -> None:
    res = admin.run("connect", "bob", "nobody-listens", "--wait", "1", check=False, timeout=20)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode not in (0, 1), res
    message = one_line_error(res)
    assert "bob" in message or "listen" in message


def test_a_connect_that_gives_up_leaves_nothing_at_the_hub(admin: Client, bob: Client) -> None:
    res = admin.run("connect", "bob", "gave-up", "--wait", "1", check=False, timeout=20)
    assert res.returncode != 0
    assert live_connections(admin, "gave-up") == []


# --- admin ---------------------------------------------------------------------


def test_admin_lists_and_kills_a_live_connection(admin: Client, bob: Client) -> None:
    with Proc(bob, "listen", "watched") as listener:
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "bob", "watched") as dialer:
            listener.wait_stderr("Connected: admin")
            dialer.write(b"x" * 5000)
            listener.wait_stdout(5000)
            listener.write(b"y" * 3000)
            dialer.wait_stdout(3000)

            (row,) = live_connections(admin, "watched")
            assert (row["from"], row["to"], row["app"], row["state"]) == (
                "admin",
                "bob",
                "watched",
                "connected",
            )
            assert row["bytes_from"] >= 5000 and row["bytes_to"] >= 3000, row
            # The human table, and ordinary accounts refused (all at once).
            with (
                Proc(admin, "admin", "connections") as human,
                Proc(bob, "admin", "connections", "--json") as peek,
                Proc(bob, "admin", "kill", row["id"]) as meddle,
            ):
                assert human.wait() == 0
                table = human.stdout.decode()
                assert row["id"] in table and "watched" in table and "connected" in table
                for res in (peek, meddle):
                    assert res.wait() == 3, res.stderr
                    assert res.stdout == b""
                    assert "needs an admin account" in one_line_error(res)

            # (bob's kill did nothing: this one finds the connection.)
            killed = admin.run("admin", "kill", row["id"])
            assert row["id"] in killed.stdout
            for end in (dialer, listener):
                assert end.wait() == 7, end.stderr
                assert "an admin ended the connection" in error_line(end.stderr)
    with Proc(admin, "admin", "kill", row["id"]) as again:
        assert live_connections(admin, "watched") == []
        assert again.wait() == 7 and "no live connection" in again.stderr


# --- the SDK ---------------------------------------------------------------------


async def pair(dialer: RelayClient, acceptor: RelayClient, app: str) -> tuple[Connection, Any]:
    listener = await acceptor.listen(app)
    a, b = await asyncio.wait_for(
        asyncio.gather(dialer.connect("bob", app, timeout=10), listener.accept()), 10
    )
    await b.wait_established(10)
    return a, b


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)


@pytest.mark.usefixtures("fast_env")
async def test_sdk_messages_arrive_in_order_and_eof_after_close(admin: Client, bob: Client) -> None:
    async with sdk(admin) as ca, sdk(bob) as cb:
        a, b = await pair(ca, cb, "sdk-chat")
        assert a.fingerprint and a.fingerprint == b.fingerprint
        assert (a.peer, b.peer, b.app) == ("bob", "admin", "sdk-chat")

        messages = [b"m%d" % i + os.urandom(i * 97) for i in range(200)]
        for msg in messages:
            await a.send(msg)
        await a.send(b"\x00" * (2 * MiB))  # one big message, not split
        assert [await b.recv() for _ in messages] == messages
        assert await b.recv() == b"\x00" * (2 * MiB)

        await b.send(b"reply")
        assert await a.recv() == b"reply"
        await asyncio.wait_for(b.close(), 10)
        assert await asyncio.wait_for(a.recv(), 10) == b""
        assert await a.recv() == b""  # and stays so
        await asyncio.wait_for(a.close(), 5)  # the peer already left: no long wait
        assert a.closed and b.closed

        # The same two clients carry another connection afterwards.
        a2, b2 = await pair(ca, cb, "sdk-chat-2")

        async def send_and_close() -> None:
            async with a2:  # close() waits until b2 has taken everything
                await a2.send(b"again")

        async def read_all() -> list[bytes]:
            return [m async for m in b2]

        _, got = await asyncio.wait_for(asyncio.gather(send_and_close(), read_all()), 10)
        assert got == [b"again"] and a2.closed


@pytest.mark.usefixtures("fast_env")
async def test_small_messages_share_their_acks_and_everything_is_still_acknowledged(
    admin: Client, bob: Client
) -> None:
    """A chatty stream: 300 small messages answered one by one. The reader's
    acks are delayed and shared (not one record back per message), yet the
    sender learns that all of it arrived within a fraction of a second."""
    async with sdk(admin) as ca, sdk(bob) as cb:
        a, b = await pair(ca, cb, "sdk-acks")
        acks = 0
        send_frame = cb.send_frame

        async def counting(msg: m.Message, payload: bytes = b"") -> None:
            nonlocal acks
            if isinstance(msg, m.Relay) and msg.cid == b.cid and msg.kind == "a":
                acks += 1
            await send_frame(msg, payload)

        cb.send_frame = counting  # type: ignore[method-assign]
        for i in range(300):
            await a.send(b"ping %d" % i)
            assert await asyncio.wait_for(b.recv(), 10) == b"ping %d" % i
            await b.send(b"pong %d" % i)
            assert await asyncio.wait_for(a.recv(), 10) == b"pong %d" % i
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(a.flush(), 10)
        assert a.end.unacked == 0
        assert loop.time() - started < 1.0
        assert 1 <= acks < 100, acks  # one per message before


@pytest.mark.usefixtures("fast_env")
async def test_an_end_away_when_its_peer_hung_up_learns_it_on_return(
    admin: Client, bob: Client
) -> None:
    """The hub cannot tell an absent end that its peer hung up; when that
    end comes back it must hear why, not wait for a peer that is gone."""
    async with sdk(admin) as ca, sdk(bob) as cb:
        a, b = await pair(ca, cb, "sdk-away")
        # Hold admin's client away from the hub until bob has hung up.
        gate = asyncio.Event()
        attach = ca._attach

        async def attach_when_allowed(transport: str) -> None:
            await gate.wait()
            await attach(transport)

        ca._attach = attach_when_allowed  # type: ignore[method-assign]
        assert ca.chan is not None
        await ca.chan.aclose()
        await b.abort("closed", "bob is done")

        async def hub_forgot_it() -> None:
            while any(
                row["cid"] == a.cid
                for row in await ca.session.request("GET", "/v1/admin/connections")
            ):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(hub_forgot_it(), 10)
        gate.set()
        await asyncio.wait_for(a.wait_closed(), 10)
        with pytest.raises(
            ConnectionEnded, match="the other end ended the connection: bob is done"
        ):
            await a.recv()


@pytest.mark.usefixtures("fast_env")
async def test_sdk_over_the_http_fallback_alone(admin: Client, bob: Client) -> None:
    """Plain HTTP attachment and no separate data connection: every record
    rides the HTTP long-poll channel."""
    async with (
        sdk(admin, transport="http", data_path="tls") as ca,
        sdk(bob, transport="http", data_path="tls") as cb,
    ):
        assert (ca.used_transport, cb.used_transport) == ("http", "http")
        a, b = await pair(ca, cb, "sdk-http")
        blob = os.urandom(3 * MiB + 17)

        async def upload() -> None:
            for i in range(0, len(blob), MiB // 2):
                await a.send(blob[i : i + MiB // 2])
            await a.close()

        async def download() -> bytes:
            return b"".join([m async for m in b])

        _, got = await asyncio.wait_for(asyncio.gather(upload(), download()), 20)
        assert got == blob
        assert ca.lane is None and cb.lane is None


# --- the HTTP fallback from the CLI ---------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--data-path", "tls"]], ids=["http", "http-no-lane"])
def test_send_and_receive_over_forced_http(
    tmp_path: Path, admin: Client, bob: Client, extra: list[str]
) -> None:
    src = random_file(tmp_path / "over-http.bin", 3 * MiB, seed=31)
    sender, code = start_send(admin, str(src), "--transport", "http", *extra)
    with sender:
        got = receive(bob, code, tmp_path / "in", "--transport", "http", *extra)
        sent = sender_result(sender)
    assert summary(got) == summary(sent)
    assert (got["bytes"], got["sent"]) == (3 * MiB, 3 * MiB)
    assert same_bytes(src, tmp_path / "in" / "over-http.bin")
