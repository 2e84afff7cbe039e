"""UDP tunnels end to end (docs/protocol.md §19): ``freight forward --udp`` to
an agent's ``udp/`` targets and to a name exposed with ``--udp``, refusals
(a TCP entry does not allow UDP), garbage datagrams, a hostile peer sending
garbage records on the stream in either direction, and a flood of source
addresses. A real hub process, a real ``freight agent run``, real CLI
processes and UDP sockets on loopback; the echo servers run in this process."""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import freight
from freight.client.tunnels import ANSWER_TIMEOUT
from freight.errors import ConnectionEnded
from freight.protocol.datagrams import encode
from freight.protocol.tunnel import (
    OpenAnswer,
    OpenRequest,
    TunnelApp,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from tests.relaysupport import sdk
from tests.support import Client, Hub, wait_until
from tests.tunnelsupport import DEADLINE, Tunnel, TunnelAgent
from tests.udpsupport import udp_ask, udp_echo_thread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[int, list[int]]]:
    with udp_echo_thread() as served:
        yield served


@pytest.fixture(scope="module")
def udplab(
    tmp_path_factory: pytest.TempPathFactory,
    shared_hub: Hub,
    admin: Client,
    echo: tuple[int, list[int]],
) -> Iterator[TunnelAgent]:
    """Agent ``udplab``: forwards UDP to the echo server, and TCP (only) to
    the same port number."""
    port = echo[0]
    agent = TunnelAgent(
        admin,
        shared_hub,
        "udplab",
        tmp_path_factory.mktemp("udplab"),
        f"udp/127.0.0.1:{port}",
        f"127.0.0.1:{port + 1}",
    )
    agent.start()
    yield agent
    agent.kill()


def security_events(admin: Client) -> list[dict[str, Any]]:
    res = admin.run("admin", "events", "--kind", "security", "--limit", "200", "--json")
    return list(json.loads(res.stdout))


def client_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)  # a burst's answers
    s.bind(("127.0.0.1", 0))
    s.settimeout(DEADLINE)
    return s


def answers_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of ``socks`` receive a datagram within ``seconds``."""
    waiting = list(socks)
    answered = 0
    end = time.monotonic() + seconds
    while waiting and (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select(waiting, [], [], left)
        for s in ready:
            s.recv(65536)
            waiting.remove(s)
            answered += 1
    return answered


# --- forward to an agent -----------------------------------------------------------


def test_datagrams_through_an_agent_come_back_identical(
    admin: Client, udplab: TunnelAgent, echo: tuple[int, list[int]]
) -> None:
    port = echo[0]
    with Tunnel(admin, "forward", "--udp", "0", f"udplab:127.0.0.1:{port}") as t:
        assert t.first["udp"] is True and t.first["to"] == f"udplab:udp/127.0.0.1:{port}"
        with client_socket() as s:
            for size in (0, 1, 1400, 8192, 65507):
                payload = os.urandom(size)
                assert udp_ask(t.port, payload, sock=s) == payload
            burst = [os.urandom(1200) for _ in range(100)]
            for payload in burst:
                s.sendto(payload, ("127.0.0.1", t.port))
            assert [s.recv(65536) for _ in burst] == burst
        # Two more sources: each gets only its own answers.
        with client_socket() as a, client_socket() as b:
            assert udp_ask(t.port, b"from a", sock=a) == b"from a"
            assert udp_ask(t.port, b"from b", sock=b) == b"from b"
        # The admin sees each flow as a udp tunnel connection.
        rows = json.loads(admin.run("admin", "tunnels", "--json").stdout)
        flows = [r for r in rows if r["proto"] == "udp" and r["target"] == f"127.0.0.1:{port}"]
        assert len(flows) >= 3 and all(r["to"] == "udplab" for r in flows)
        assert t.stop() == 0
    stopped = [e for e in t.events() if e.get("event") == "stopped"]
    assert stopped and stopped[0]["flows_opened"] == 3
    assert stopped[0]["datagrams_out"] == stopped[0]["datagrams_in"] == 5 + 100 + 2


def test_a_udp_prefix_on_the_target_implies_udp(
    admin: Client, udplab: TunnelAgent, echo: tuple[int, list[int]]
) -> None:
    with Tunnel(admin, "forward", "0", f"udplab:udp/127.0.0.1:{echo[0]}") as t:
        assert udp_ask(t.port, b"implied") == b"implied"


def test_the_agent_refuses_udp_where_it_allows_only_tcp(
    admin: Client, udplab: TunnelAgent, echo: tuple[int, list[int]]
) -> None:
    """``127.0.0.1:P`` in the allow list is TCP only: ``--udp`` to it is
    refused before anything listens, and recorded as a security event."""
    other = echo[0] + 1
    res = admin.run("forward", "--udp", "0", f"udplab:127.0.0.1:{other}", check=False, timeout=60)
    assert res.returncode == 7, res.stderr
    assert f"this agent does not forward to udp/127.0.0.1:{other}" in res.stderr

    def recorded() -> bool:
        return any(
            e["detail"].get("op") == "forward"
            and f"udp:127.0.0.1:{other}" in e["detail"].get("path", "")
            for e in security_events(admin)
        )

    wait_until(recorded, DEADLINE, "the agent's security event")


def test_garbage_datagrams_are_just_datagrams(
    admin: Client, udplab: TunnelAgent, echo: tuple[int, list[int]]
) -> None:
    """Datagrams that look like records, or like nothing, travel as they are."""
    hostile = [
        b"\xff\xff\xff",
        encode(b"nested"),
        b"\x00\xff\xf0",
        b"\x00\x00\x05ab",
        os.urandom(4000),
    ]
    with (
        Tunnel(admin, "forward", "--udp", "0", f"udplab:127.0.0.1:{echo[0]}") as t,
        client_socket() as s,
    ):
        for payload in hostile:
            assert udp_ask(t.port, payload, sock=s) == payload


def test_a_flood_of_sources_is_bounded(
    admin: Client, udplab: TunnelAgent, echo: tuple[int, list[int]]
) -> None:
    args = ["forward", "--udp", "0", f"udplab:127.0.0.1:{echo[0]}", "--max-flows", "8"]
    with Tunnel(admin, *args) as t:
        steady = client_socket()
        assert udp_ask(t.port, b"steady", sock=steady) == b"steady"
        flood = [client_socket() for _ in range(200)]
        try:
            for s in flood:
                s.sendto(b"flood", ("127.0.0.1", t.port))
            answered = answers_within(flood, 2.0)
            assert answered <= 7  # the steady flow holds one of the 8
            assert udp_ask(t.port, b"still here", sock=steady) == b"still here"
        finally:
            for s in [steady, *flood]:
                s.close()
        assert t.stop() == 0
    stopped = next(e for e in t.events() if e.get("event") == "stopped")
    assert stopped["flows_refused"] >= 200 - 7
    assert stopped["flows_opened"] <= 8


# --- expose between users -----------------------------------------------------------


def test_expose_udp_to_named_accounts(
    admin: Client, bob: Client, echo: tuple[int, list[int]]
) -> None:
    port = echo[0]
    with Tunnel(bob, "expose", "dns", f"127.0.0.1:{port}", "--udp", "--allow", "admin") as exp:
        assert exp.first["target"] == f"udp/127.0.0.1:{port}"
        with Tunnel(admin, "forward", "--udp", "0", "bob:dns") as t:
            assert udp_ask(t.port, b"through bob") == b"through bob"
        # A TCP forward to a UDP name is refused by the exposing end.
        with Tunnel(admin, "forward", "0", "bob:dns") as tcp:
            with socket.create_connection(("127.0.0.1", tcp.port), timeout=DEADLINE) as c:
                c.settimeout(DEADLINE)
                assert c.recv(10) == b""
            failed = tcp.wait_event("failed")
            assert "'dns' is not a tcp tunnel" in failed["error"]
        assert exp.stop() == 0


# --- hostile peers ---------------------------------------------------------------------


async def test_an_agent_closes_a_stream_of_garbage_records(
    admin: Client, udplab: TunnelAgent, echo: tuple[int, list[int]]
) -> None:
    """A client that opens a UDP stream to the agent and sends garbage: the
    agent closes that stream; the next flow works."""
    port = echo[0]
    service = f"127.0.0.1:{port}"
    async with sdk(admin) as rc:
        conn = await rc.connect("udplab", TunnelApp("0badf00d", True, service).app, timeout=20)
        await conn.send(encode_request(OpenRequest(service=service, udp=True)))
        answer = decode_answer(await asyncio.wait_for(conn.recv(), ANSWER_TIMEOUT))
        assert answer.ok
        await conn.send(encode(b"fine"))
        assert await asyncio.wait_for(conn.recv(), DEADLINE) == encode(b"fine")
        await conn.send(b"GARBAGE")
        try:
            rest = await asyncio.wait_for(conn.recv(), DEADLINE)
        except ConnectionEnded:
            rest = b""
        assert rest == b""  # the agent ended the stream

    def recorded() -> bool:
        return any(
            e["detail"].get("op") == "forward"
            and "0badf00d" in e["detail"].get("path", "")
            and "unknown datagram record kind 71" in e["detail"].get("reason", "")
            for e in security_events(admin)
        )

    wait_until(recorded, DEADLINE, "the agent's security event")
    assert udp_ask_forward(admin, port, b"next flow") == b"next flow"


def udp_ask_forward(admin: Client, port: int, payload: bytes) -> bytes:
    with Tunnel(admin, "forward", "--udp", "0", f"udplab:127.0.0.1:{port}") as t:
        return udp_ask(t.port, payload)


async def test_a_forward_survives_an_exposed_name_that_sends_garbage(
    admin: Client, bob: Client
) -> None:
    """bob exposes a name whose far end answers the open request and then
    sends garbage records: each flow fails; the forward goes on."""
    async with sdk(bob) as rc:
        await rc.session.request(
            "PUT", "/v1/tunnels/exposed/evil", {"allow": ["admin"], "takeover": True}
        )
        listener = await rc.listen("tunnel:evil")
        served = 0

        async def evil_stream(conn: Any) -> None:
            nonlocal served
            await conn.wait_established(DEADLINE)
            req = decode_request(await conn.recv())
            assert req.udp and req.service == "evil"
            await conn.send(encode_answer(OpenAnswer(ok=True)))
            await conn.send(b"\x07 not a record")
            served += 1

        async def evil() -> None:
            async with asyncio.TaskGroup() as tg:
                while True:
                    tg.create_task(evil_stream(await listener.accept()))

        task = asyncio.create_task(evil())
        try:
            t = await asyncio.to_thread(Tunnel, admin, "forward", "--udp", "0", "bob:evil")
            try:
                s = client_socket()
                s.sendto(b"hello", ("127.0.0.1", t.port))
                s.settimeout(1.0)
                with pytest.raises(TimeoutError):
                    await asyncio.to_thread(s.recv, 100)
                s.close()
                assert t.proc.running
                assert await asyncio.to_thread(t.stop) == 0
            finally:
                t.proc.kill()
        finally:
            task.cancel()
    stopped = next(e for e in t.events() if e.get("event") == "stopped")
    assert stopped["garbage"] >= 1 and stopped["flows_failed"] >= 1, (t.events(), t.proc.stderr)


async def test_the_sdk_forwards_and_exposes_udp(
    admin: Client, bob: Client, echo: tuple[int, list[int]]
) -> None:
    async with (
        freight.expose(
            name="sdkudp",
            target=f"127.0.0.1:{echo[0]}",
            allow=["admin"],
            udp=True,
            config_dir=bob.config,
        ),  # fmt: skip
        freight.forward_udp(to="bob:sdkudp", idle=5, config_dir=admin.config) as fwd,
    ):
        assert fwd.address[0] == "127.0.0.1"
        assert await asyncio.to_thread(udp_ask, fwd.address[1], b"via the sdk") == b"via the sdk"
        assert fwd.stats()["flows_opened"] == 1
