"""Messaging for applications: the local socket of a host (``msg.sock``), the
SDK (``freight.messaging``) and the CLI (``freight msg``, ``freight
daemon``).

The socket tests run a real MessageHost and MessageSocket in this process
and speak the local protocol with raw frames; the rest run a real hub, a
``freight daemon`` process and CLI processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from freight import messaging
from freight.client.config import ClientConfig
from freight.client.msghost import MessageHost
from freight.client.msglocal import MessageSocket, socket_path
from freight.client.relay import RelayClient
from freight.client.session import HubSession
from freight.errors import NoRecipient, UsageError
from freight.protocol import msglocal as p
from tests.agentsupport import Agent
from tests.relaysupport import BOB_PASSWORD, Proc, fast
from tests.support import Client, Hub, wait_until

DEADLINE = 10.0


# --- raw application connections -------------------------------------------------


class RawApp:
    """An application speaking the local protocol frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = p.LocalDecoder()

    @classmethod
    async def open(cls, path: Path, *, hello: bool = True) -> RawApp:
        reader, writer = await asyncio.open_unix_connection(str(path))
        app = cls(reader, writer)
        if hello:
            await app.send(p.LHello(version=p.LOCAL_VERSION, client="test"))
            welcome, _ = await app.recv()
            assert isinstance(welcome, p.LWelcome), welcome
        return app

    async def send(self, msg: p.LocalMessage, body: bytes = b"") -> None:
        self.writer.write(p.encode_local(msg, body))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> tuple[p.AnyLocal, bytes]:
        """The next frame; fails the test at EOF or after DEADLINE."""
        async with asyncio.timeout(DEADLINE):
            while (frame := self.decoder.next_frame()) is None:
                data = await self.reader.read(65536)
                assert data, "the host closed the connection"
                self.decoder.feed(data)
        return frame

    async def closed(self) -> bool:
        """True once the host has closed the connection (within DEADLINE)."""
        async with asyncio.timeout(DEADLINE):
            while data := await self.reader.read(65536):
                self.decoder.feed(data)
        return True

    async def call(self, msg: p.LocalMessage) -> p.AnyLocal:
        await self.send(msg)
        answer, _ = await self.recv()
        return answer

    def close(self) -> None:
        self.writer.close()


def raw_frame(header: bytes) -> bytes:
    return struct.pack(">I", len(header)) + header


@contextlib.asynccontextmanager
async def local_host(root: Path, **kw: int) -> AsyncIterator[tuple[MessageHost, MessageSocket]]:
    """A real MessageHost (never attached: registrations are local until it
    starts) served on ``root``/msg.sock."""
    config = ClientConfig(root)
    session = HubSession("https://127.0.0.1:9", fingerprint="SHA256:" + "0" * 64)
    relay = RelayClient(session, config, data_path="tls")
    host = MessageHost(relay, config)
    try:
        async with MessageSocket(host, root, **kw) as server:
            yield host, server
    finally:
        await host.aclose()
        await relay.aclose()


@pytest.fixture
def root() -> Iterator[Path]:
    # Short (a Unix socket's path has at most 107 bytes) and reachable by
    # another uid for the refusal test (the folder itself is 0711).
    with tempfile.TemporaryDirectory(prefix="fm-", dir="/tmp") as d:
        os.chmod(d, 0o711)
        yield Path(d)


# --- the socket ------------------------------------------------------------------


async def test_socket_is_private_and_named_in_one_step(root: Path) -> None:
    async with local_host(root) as (_, server):
        st = os.stat(server.path)
        assert server.path == root / "msg.sock"
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        # The private folder it was bound in is gone.
        assert sorted(x.name for x in root.iterdir() if x.name.startswith(".msg-")) == []
    assert not server.path.exists()


async def test_second_host_on_the_same_folder_is_refused_and_a_stale_socket_replaced(
    root: Path,
) -> None:
    async with local_host(root):
        with pytest.raises(UsageError, match="another host already serves"):
            async with local_host(root):
                pass
    # A socket left behind by a host that died answers nobody: replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(root)))
    stale.close()
    async with local_host(root) as (_, server):
        app = await RawApp.open(server.path)
        assert isinstance(await app.call(p.LApps(rid="a")), p.LAppsList)
        app.close()


async def test_register_list_and_unregister(root: Path) -> None:
    async with local_host(root) as (host, server):
        app = await RawApp.open(server.path)
        got = await app.call(p.LRegister(rid="r1", app="sensors", interest=0xFFFF0000, peer="bob"))
        assert isinstance(got, p.LRegistered)
        assert got.rid == "r1"
        assert got.ticket.startswith(host.hid + ".")
        listed = await app.call(p.LApps(rid="a1"))
        assert isinstance(listed, p.LAppsList)
        assert [(a.ticket, a.app, a.interest, a.peer) for a in listed.apps] == [
            (got.ticket, "sensors", 0xFFFF0000, "bob")
        ]
        assert listed.apps[0].stats["queued"] == 0
        done = await app.call(p.LUnregister(rid="u1", ticket=got.ticket))
        assert done == p.LDone(rid="u1")
        assert host.apps() == []
        # Someone else's (or an unknown) ticket is refused, the connection stays.
        refused = await app.call(p.LUnregister(rid="u2", ticket=got.ticket))
        assert isinstance(refused, p.LError)
        assert refused.rid == "u2"
        assert refused.code == "usage"
        assert isinstance(await app.call(p.LApps(rid="a2")), p.LAppsList)
        app.close()


async def test_closing_the_connection_drops_its_registrations(root: Path) -> None:
    async with local_host(root) as (host, server):
        app = await RawApp.open(server.path)
        await app.call(p.LRegister(rid="r1", app="sensors", interest=1))
        assert [a["app"] for a in host.apps()] == ["sensors"]
        app.close()
        async with asyncio.timeout(DEADLINE):
            while host.apps():
                await asyncio.sleep(0.01)
        assert server.connections == set()


async def test_a_malformed_frame_ends_only_that_connection(root: Path) -> None:
    async with local_host(root) as (host, server):
        good = await RawApp.open(server.path)
        bad = await RawApp.open(server.path)
        kept = await good.call(p.LRegister(rid="r1", app="keep", interest=1))
        await bad.call(p.LRegister(rid="r1", app="lose", interest=1))
        await bad.send_raw(raw_frame(b'{"t":"register","rid":"r2","app":"x y","interest":1}'))
        err, _ = await bad.recv()
        assert isinstance(err, p.LError)
        assert err.code == "remote_protocol_error"
        assert await bad.closed()
        assert isinstance(kept, p.LRegistered)
        assert [a["ticket"] for a in host.apps()] == [kept.ticket]
        listed = await good.call(p.LApps(rid="a"))
        assert isinstance(listed, p.LAppsList)
        assert [a.app for a in listed.apps] == ["keep"]
        good.close()


async def test_an_oversized_frame_ends_the_connection_before_its_body(root: Path) -> None:
    async with local_host(root) as (_, server):
        app = await RawApp.open(server.path)
        # Announces a body of 1 MiB + 1 and sends none of it: refused at once.
        header = b'{"t":"send","rid":"s","dest":"bob","app":"a","type":1,"len":%d}' % (
            p.MAX_MESSAGE_BODY + 1
        )
        await app.send_raw(raw_frame(header))
        err, _ = await app.recv()
        assert isinstance(err, p.LError)
        assert err.code == "frame_too_large"
        assert await app.closed()
        # A header longer than 64 KiB likewise, from its length alone.
        app2 = await RawApp.open(server.path)
        await app2.send_raw(struct.pack(">I", p.MAX_LOCAL_HEADER + 1))
        err2, _ = await app2.recv()
        assert isinstance(err2, p.LError)
        assert err2.code == "frame_too_large"
        assert await app2.closed()


async def test_hello_first_and_in_the_same_version(root: Path) -> None:
    async with local_host(root) as (_, server):
        early = await RawApp.open(server.path, hello=False)
        await early.send(p.LApps(rid="a"))
        err, _ = await early.recv()
        assert isinstance(err, p.LError)
        assert err.code == "remote_protocol_error"
        assert await early.closed()
        newer = await RawApp.open(server.path, hello=False)
        await newer.send(p.LHello(version=p.LOCAL_VERSION + 1))
        err, _ = await newer.recv()
        assert isinstance(err, p.LError)
        assert err.code == "version_mismatch"
        assert await newer.closed()


async def test_a_flood_of_registrations_is_refused_clearly(root: Path) -> None:
    async with local_host(root) as (host, server):
        app = await RawApp.open(server.path)
        answers = []
        for i in range(300):
            await app.send(p.LRegister(rid=f"r{i}", app=f"app{i % 7}", interest=1 + i))
        for _ in range(300):
            answers.append((await app.recv())[0])
        took = [a for a in answers if isinstance(a, p.LRegistered)]
        refused = [a for a in answers if isinstance(a, p.LError)]
        assert len(took) == 256
        assert len(refused) == 44
        assert {e.code for e in refused} == {"registration_refused"}
        assert "at most 256 registrations per connection" in refused[0].message
        assert refused[0].rid == "r256"
        # The connection is still served, and another connection has room.
        assert isinstance(await app.call(p.LApps(rid="a")), p.LAppsList)
        other = await RawApp.open(server.path)
        assert isinstance(
            await other.call(p.LRegister(rid="x", app="other", interest=1)), p.LRegistered
        )
        assert len(host.apps()) == 257
        app.close()
        other.close()


async def test_taken_for_unknown_messages_is_harmless(root: Path) -> None:
    async with local_host(root) as (_, server):
        app = await RawApp.open(server.path)
        reg = await app.call(p.LRegister(rid="r", app="a", interest=1))
        assert isinstance(reg, p.LRegistered)
        await app.send(p.LTaken(ticket=reg.ticket, ids=["0" * 32]))
        assert isinstance(await app.call(p.LApps(rid="a")), p.LAppsList)
        app.close()


def _connect_as(uid: int, path: Path) -> tuple[str, bytes]:
    """Connect to ``path`` from a forked child running as ``uid``: what
    happened ("refused" with errno name, or "connected") and what it read."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(DEADLINE)
            try:
                s.connect(str(path))
            except OSError as exc:
                os.write(w, b"refused " + errno.errorcode.get(exc.errno or 0, "?").encode())
            else:
                # The host speaks first to a uid it refuses: no hello needed.
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                os.write(w, b"connected\n" + data)
        except BaseException as exc:
            os.write(w, f"failed {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    what, _, data = out.partition(b"\n")
    return what.decode(), data


@pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to run a client under another uid (os.setuid)"
)
async def test_another_uid_is_refused(root: Path) -> None:
    nobody = 65534
    async with local_host(root) as (host, server):
        # As made, the socket (0600) does not even let the other uid connect.
        what, _ = await asyncio.to_thread(_connect_as, nobody, server.path)
        assert what == "refused EACCES"
        # Were its mode opened up by mistake, the host still refuses that uid.
        os.chmod(server.path, 0o666)
        what, data = await asyncio.to_thread(_connect_as, nobody, server.path)
        assert what == "connected"
        dec = p.LocalDecoder()
        dec.feed(data)
        frames = list(dec)
        assert len(frames) == 1
        err = frames[0][0]
        assert isinstance(err, p.LError)
        assert err.code == "forbidden"
        assert f"uid {nobody}" in err.message
        assert host.apps() == []


# --- a real hub, a freight daemon, the CLI and the SDK -------------------------------


@pytest.fixture(scope="module")
def msg_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    # No warm-up: a route to nobody says why at once instead of "retry".
    h = Hub(tmp_path_factory.mktemp("msg") / "hub", extra=["--msg-warmup", "0"]).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def pair(msg_hub: Hub) -> Iterator[tuple[Client, Client]]:
    """``admin`` (sends, its commands are their own hosts) and ``bob`` (runs
    a daemon), each with a short config folder of its own."""
    base = Path(tempfile.mkdtemp(prefix="fmsg-", dir="/tmp"))
    admin = fast(Client(base / "a", msg_hub))
    admin.login()
    admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
    bob = fast(Client(base / "b", msg_hub))
    bob.login(user="bob", password=BOB_PASSWORD)
    yield admin, bob
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(pair: tuple[Client, Client]) -> Iterator[Proc]:
    """bob's ``freight daemon``, serving msg.sock in his config folder."""
    _, bob = pair
    with Proc(bob, "daemon") as proc:
        proc.wait_stderr(r"Messaging host [0-9a-f]{32} serving", timeout=30)
        yield proc


def listening(client: Client, *args: str) -> tuple[Proc, str]:
    """A running ``freight msg listen`` and the ticket it printed first."""
    proc = Proc(client, "msg", "listen", *args)
    wait_until(lambda: b"\n" in proc.stdout or not proc.running, DEADLINE, "the listener's ticket")
    first = proc.stdout_lines()[0] if proc.stdout else ""
    assert first.startswith("ticket "), f"{first!r}\n{proc.stderr}"
    return proc, first.split()[1]


def test_cli_send_receive_and_reply_through_a_daemon(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    listener, ticket = listening(
        bob, "sensors", "--interest", "0xFFFF0000", "--reply", "ok", "--count", "2"
    )
    with listener:
        sent = admin.run("msg", "send", "bob", "sensors", "--type", "0x00120000", "21.5")
        assert sent.stdout == "delivered to 1 recipient(s)\n"
        answer = admin.run("msg", "request", "bob", "sensors", "--type", "0x00120000", "?")
        assert answer.stdout == "ok\n"
        assert listener.wait(DEADLINE) == 0, listener.stderr
    assert listener.stdout_lines() == [
        f"ticket {ticket}",
        "admin 0x00120000 21.5",
        "admin 0x00120000 ?",
    ]


def test_send_to_nobody_exits_9_with_the_reason(pair: tuple[Client, Client], daemon: Proc) -> None:
    admin, _ = pair
    listener, _ = listening(pair[1], "temps", "--interest", "0x0000FFFF")
    with listener:
        no_app = admin.run("msg", "send", "bob", "nothing-here", "--type", "1", "hi", check=False)
        assert no_app.returncode == 9, no_app.stderr
        assert "no_app" in no_app.stderr
        no_interest = admin.run(
            "msg", "send", "bob", "temps", "--type", "0xFFFF0000", "hi", check=False
        )
        assert no_interest.returncode == 9, no_interest.stderr
        assert "no_interest" in no_interest.stderr
        no_host = admin.run("msg", "send", "nobody", "temps", "--type", "1", "hi", check=False)
        assert no_host.returncode == 9, no_host.stderr
        assert "no_host" in no_host.stderr
        zero = admin.run("msg", "send", "bob", "temps", "--type", "0", "hi", check=False)
        assert zero.returncode == 2, zero.stderr
        # What the listener printed: its ticket alone, no message reached it.
        assert len(listener.stdout_lines()) == 1


def test_a_send_nobody_answers_says_what_to_check(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    listener, _ = listening(bob, "frozen", "--interest", "0xFFFFFFFF")
    with listener:
        # bob's host stops answering (but stays attached): the send is
        # retried, the sender is told it waits, then what to check.
        os.kill(daemon.p.pid, signal.SIGSTOP)
        try:
            sent = admin.run(
                "msg", "send", "bob", "frozen", "--type", "1", "hi", "--timeout", "2", check=False
            )
        finally:
            os.kill(daemon.p.pid, signal.SIGCONT)
    assert sent.returncode != 0, sent.stdout
    assert "waiting for bob frozen (up to 2 s)" in sent.stderr
    assert "bob frozen:" in sent.stderr
    assert "freight msg apps bob" in sent.stderr


def test_apps_lists_registrations_on_the_daemon_and_at_the_hub(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    listener, ticket = listening(bob, "listed", "--interest", "0x10", "--peer", "admin")
    with listener:
        sent = admin.run("msg", "send", "bob", "listed", "--type", "0x30", "x")
        assert sent.stdout == "delivered to 1 recipient(s)\n"
        res = bob.run("msg", "apps", "--json")
        info = json.loads(res.stdout)
        rows = {r["ticket"]: r for r in info["apps"]}
        assert rows[ticket]["app"] == "listed"
        assert rows[ticket]["interest"] == 0x10
        assert rows[ticket]["peer"] == "admin"
        assert rows[ticket]["delivered"] == 1
        assert info["hid"] == ticket.split(".")[0]
        # The hub lists bob's host and the announced registration.
        hub_view = json.loads(bob.run("msg", "apps", "bob", "--json").stdout)
        assert [h["hid"] for h in hub_view] == [info["hid"]]
        assert {"app": "listed", "interest": 0x10, "peer": "admin"} in hub_view[0]["regs"]


async def test_sdk_through_the_daemon_and_as_its_own_host(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    async with asyncio.timeout(60):
        async with messaging.connect(config_dir=bob.config) as bob_bus:
            assert isinstance(bob_bus, messaging.SocketBus)  # the daemon answered
            reg = await bob_bus.register("sdk", interest=0xFF)

            async def serve() -> None:
                async for msg in reg:
                    await msg.reply(b"re: " + msg.body)

            async with messaging.connect(config_dir=admin.config) as admin_bus:
                assert isinstance(admin_bus, messaging.HostBus)  # no daemon: its own host
                serving = asyncio.create_task(serve())
                try:
                    reply = await admin_bus.request("bob", "sdk", type=0x01, body=b"ping")
                    assert reply.body == b"re: ping"
                    assert reply.account == "bob"
                    assert reply.frm == bob_bus.hid
                    with pytest.raises(NoRecipient) as gone:
                        await admin_bus.send("bob", "sdk", type=0x100, body=b"x", timeout=5)
                    assert gone.value.reason == "no_interest"
                finally:
                    serving.cancel()
                # And back: bob asks through the daemon's socket, admin answers.
                back = await admin_bus.register("sdk-back", interest=0x2)

                async def answer() -> None:
                    async for msg in back:
                        await msg.reply(msg.body[::-1])

                answering = asyncio.create_task(answer())
                try:
                    reply = await bob_bus.request("admin", "sdk-back", type=0x2, body=b"abc")
                    assert reply.body == b"cba"
                    assert reply.account == "admin"
                finally:
                    answering.cancel()
                # Not waited for: 0 at once though nobody takes it yet, then it arrives.
                sent = await bob_bus.send("admin", "sdk-back", type=0x2, body=b"z", wait=False)
                assert sent == 0
                assert (await back.get()).body == b"z"
            await reg.close()
            assert (await bob_bus.apps())["apps"] == []


async def test_a_bad_application_does_not_disturb_the_others_on_the_daemon(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    path = socket_path(bob.config)
    async with asyncio.timeout(60):
        async with messaging.connect(config_dir=bob.config) as bus:
            reg = await bus.register("steady", interest=1)
            bad = await RawApp.open(path)
            await bad.send_raw(raw_frame(b"\xff\xfe not json"))
            err, _ = await bad.recv()
            assert isinstance(err, p.LError)
            assert err.code == "remote_protocol_error"
            assert await bad.closed()
            # The sender's answer waits until the application has taken it.
            taking = asyncio.create_task(reg.get())
            sent = await asyncio.to_thread(
                admin.run, "msg", "send", "bob", "steady", "--type", "1", "still here"
            )
            assert sent.stdout == "delivered to 1 recipient(s)\n"
            msg = await taking
            assert msg.body == b"still here"
            assert daemon.running


def test_daemon_prints_a_user_unit(pair: tuple[Client, Client]) -> None:
    _, bob = pair
    unit = bob.run("daemon", "--print-unit").stdout
    assert f"Environment=FREIGHT_CONFIG_DIR={bob.config}\n" in unit
    assert "ExecStart=freight daemon\n" in unit
    assert "WantedBy=default.target\n" in unit


async def test_an_agent_serves_the_socket_in_its_folder(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, _ = pair
    home = Path(tempfile.mkdtemp(prefix="fag-", dir="/tmp"))
    try:
        (home / "root").mkdir()
        agent = await asyncio.to_thread(Agent, admin, admin.hub, "lab1", home, home / "root")
        proc = await asyncio.to_thread(agent.start)
        try:
            path = socket_path(agent.client.config)
            await asyncio.to_thread(wait_until, path.exists, DEADLINE, "the agent's msg.sock")
            async with asyncio.timeout(60):
                async with messaging.connect(config_dir=agent.client.config) as bus:
                    assert isinstance(bus, messaging.SocketBus)
                    reg = await bus.register("lab-jobs", interest=0xF0)
                    taking = asyncio.create_task(reg.get())
                    sent = await asyncio.to_thread(
                        admin.run, "msg", "send", "lab1", "lab-jobs", "--type", "0x10", "run 42"
                    )
                    assert sent.stdout == "delivered to 1 recipient(s)\n"
                    msg = await taking
                    assert msg.body == b"run 42"
                    assert msg.account == "admin"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        finally:
            proc.kill()
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def test_deliveries_stop_at_the_credit_until_taken(
    pair: tuple[Client, Client], daemon: Proc, root: Path
) -> None:
    """An application that does not say ``taken`` gets at most ``credit``
    deliveries; the senders' answers wait for it."""
    admin, bob = pair
    config = ClientConfig(admin.config)
    async with asyncio.timeout(60):
        relay = RelayClient(HubSession.from_config(config), config, data_path="tls")
        async with relay:
            await relay.start()
            host = MessageHost(relay, config)
            await host.start()
            try:
                async with MessageSocket(host, root, credit=2) as server:
                    app = await RawApp.open(server.path)
                    reg = await app.call(p.LRegister(rid="r", app="credit", interest=1))
                    assert isinstance(reg, p.LRegistered)
                    async with messaging.connect(config_dir=bob.config) as bus:
                        sends = [
                            asyncio.create_task(
                                bus.send("admin", "credit", type=1, body=b"m%d" % i)
                            )
                            for i in range(3)
                        ]
                        first, body1 = await app.recv()
                        second, body2 = await app.recv()
                        assert isinstance(first, p.LDeliver)
                        assert isinstance(second, p.LDeliver)
                        with pytest.raises(TimeoutError):
                            await asyncio.wait_for(app.recv(), 0.5)
                        assert not any(t.done() for t in sends)
                        await app.send(p.LTaken(ticket=reg.ticket, ids=[first.id]))
                        third, body3 = await app.recv()
                        assert isinstance(third, p.LDeliver)
                        await app.send(p.LTaken(ticket=reg.ticket, ids=[second.id, third.id]))
                        assert await asyncio.gather(*sends) == [1, 1, 1]
                        for d in (first, second, third):
                            assert d.ticket == reg.ticket
                            assert d.account == "bob"
                        assert sorted([body1, body2, body3]) == [b"m0", b"m1", b"m2"]
                    app.close()
            finally:
                await host.aclose()


def test_listen_json_and_a_body_from_stdin(pair: tuple[Client, Client], daemon: Proc) -> None:
    admin, bob = pair
    proc = Proc(bob, "msg", "listen", "piped", "--interest", "0x4", "--json", "--count", "1")
    with proc:
        first = proc.first_event()
        assert first["app"] == "piped"
        assert first["interest"] == 4
        body = "line one\nline two\n"
        sent = admin.run("msg", "send", "bob", "piped", "--type", "0x4", "-", input=body)
        assert sent.stdout == "delivered to 1 recipient(s)\n"
        assert proc.wait(DEADLINE) == 0, proc.stderr
    events = proc.json_events()
    assert len(events) == 2
    got = events[1]
    assert got["body"] == body
    assert got["from"] == "admin"
    assert got["type"] == 4
    assert got["ticket"] == first["ticket"]


def test_one_daemon_per_folder_and_sigterm_cleans_up(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    admin, bob = pair
    second = bob.run("daemon", check=False, timeout=60)
    assert second.returncode == 2, second.stderr
    assert "another host already serves" in second.stderr
    assert daemon.running
    # It stopped before announcing itself: bob's daemon still takes messages.
    listener, _ = listening(bob, "still-bob", "--interest", "1", "--count", "1")
    with listener:
        sent = admin.run("msg", "send", "bob", "still-bob", "--type", "1", "yes")
        assert sent.stdout == "delivered to 1 recipient(s)\n"
        assert listener.wait(DEADLINE) == 0, listener.stderr
    with Proc(admin, "daemon") as own:
        own.wait_stderr(r"Messaging host [0-9a-f]{32} serving", timeout=30)
        path = socket_path(admin.config)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        own.p.terminate()
        assert own.wait(DEADLINE) == 0, own.stderr
        assert not path.exists()


def test_without_a_daemon_the_first_command_is_the_host_the_next_use_it(
    pair: tuple[Client, Client],
) -> None:
    """admin runs no daemon: a listener is its own host and serves the
    socket meanwhile, so a send from the same account goes through it
    instead of announcing the same host id again."""
    admin, bob = pair
    listener, ticket = listening(admin, "self", "--interest", "1", "--count", "2")
    with listener:
        assert stat.S_ISSOCK(os.stat(socket_path(admin.config)).st_mode)
        mine = admin.run("msg", "send", "admin", "self", "--type", "1", "from me")
        assert mine.stdout == "delivered to 1 recipient(s)\n"
        theirs = bob.run("msg", "send", "admin", "self", "--type", "1", "from bob")
        assert theirs.stdout == "delivered to 1 recipient(s)\n"
        assert listener.wait(DEADLINE) == 0, listener.stderr
    assert listener.stdout_lines() == [
        f"ticket {ticket}",
        "admin 0x00000001 from me",
        "bob 0x00000001 from bob",
    ]
    assert not socket_path(admin.config).exists()


async def test_a_flood_of_registrations_through_the_sdk_is_refused_clearly(
    pair: tuple[Client, Client], daemon: Proc
) -> None:
    _, bob = pair
    async with asyncio.timeout(60), messaging.connect(config_dir=bob.config) as bus:
        regs = [await bus.register(f"flood{i % 5}", interest=1 + i) for i in range(256)]
        assert len({r.ticket for r in regs}) == 256
        with pytest.raises(messaging.RegistrationRefused) as refused:
            await bus.register("flood0", interest=1)
        assert "at most 256 registrations per connection" in str(refused.value)
        assert refused.value.exit_code == 2
        listed = await bus.apps()
        assert len([a for a in listed["apps"] if a["app"].startswith("flood")]) == 256
