"""TCP tunnels end to end (docs/protocol.md §18): ``freight forward`` to an
agent's allowed targets and to names users expose, ``freight expose`` with
its ``--allow`` accounts, refusals (the agent's allow list, the exposed
name's accounts), half-closes, and the admin's list and kill. A real hub
process, a real ``freight agent run``, real CLI processes, real sockets on
loopback; the echo and HTTP servers run in this test process."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import freight
from tests.agentsupport import api
from tests.authsupport import rest, token_of
from tests.relaysupport import BOB_PASSWORD, fast
from tests.support import Client, Hub, free_port, wait_until
from tests.tunnelsupport import (
    DEADLINE,
    ECHO_CLOSES,
    Tunnel,
    TunnelAgent,
    closed_within,
    connect,
    echo_server,
    http_server,
    recv_all,
    recv_exactly,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    with echo_server() as port:
        yield port


@pytest.fixture(scope="module")
def web_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("web")
    (root / "index.html").write_text("<h1>behind the agent</h1>\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * (4 * 4096))  # 4 MiB
    return root


@pytest.fixture(scope="module")
def web(web_root: Path) -> Iterator[int]:
    with http_server(web_root) as port:
        yield port


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client, echo: int, web: int
) -> Iterator[TunnelAgent]:
    """Agent ``lab``: forwards to the echo and HTTP servers, nothing else."""
    agent = TunnelAgent(
        admin,
        shared_hub,
        "lab",
        tmp_path_factory.mktemp("lab"),
        f"127.0.0.1:{echo}",
        f"127.0.0.1:{web}",
    )
    agent.start()
    yield agent
    agent.kill()


@pytest.fixture(scope="module")
def carol(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    admin.run("users", "add", "carol", "--password-stdin", input=BOB_PASSWORD + "\n")
    c = Client(tmp_path_factory.mktemp("client-carol"), shared_hub)
    c.login(user="carol", password=BOB_PASSWORD)
    return fast(c)


def security_events(admin: Client) -> list[dict[str, Any]]:
    res = admin.run("admin", "events", "--kind", "security", "--limit", "200", "--json")
    return list(json.loads(res.stdout))


def echo_round(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read everything back until EOF."""
    with connect(port) as s:
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(recv_all(s)), daemon=True)
        reader.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reader.join(DEADLINE * 3)
        assert not reader.is_alive(), "the echo did not end"
        return received[0]


# --- forward to an agent ---------------------------------------------------------


def test_forward_to_agent_carries_bytes_and_half_close(
    admin: Client, lab: TunnelAgent, echo: int
) -> None:
    with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}") as t:
        payload = bytes(range(256)) * 4096 * 3 + b"tail"  # 3 MiB and a bit
        assert echo_round(t.port, payload) == payload
        # Several at once, each its own stream.
        results: dict[int, bytes] = {}

        def one(i: int) -> None:
            results[i] = echo_round(t.port, f"stream {i} ".encode() * 1000)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(DEADLINE * 3)
        assert results == {i: f"stream {i} ".encode() * 1000 for i in range(8)}
        # Interactive: a byte comes back before we close anything.
        with connect(t.port) as s:
            s.sendall(b"ping")
            assert recv_exactly(s, 4) == b"ping"
        assert t.stop() == 0
        assert "Stopped" not in t.proc.stdout.decode()  # --json: events only
    closed = [e for e in t.events() if e.get("event") == "closed"]
    assert len(closed) >= 9  # the echoes; the last one may end with the process


def test_http_behind_agent(admin: Client, lab: TunnelAgent, web: int, web_root: Path) -> None:
    with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{web}") as t:
        base = f"http://127.0.0.1:{t.port}"
        with urllib.request.urlopen(f"{base}/index.html", timeout=DEADLINE) as r:
            assert r.read() == b"<h1>behind the agent</h1>\n"
        with urllib.request.urlopen(f"{base}/big.bin", timeout=DEADLINE * 3) as r:
            assert r.read() == (web_root / "big.bin").read_bytes()


def test_agent_refuses_target_not_allowed(admin: Client, lab: TunnelAgent) -> None:
    """A target the agent does not allow: the connection is closed, the
    forward says why, and the agent records a security event."""
    other = free_port()
    with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{other}") as t:
        with connect(t.port) as s:
            assert closed_within(s, DEADLINE)
        failed = t.wait_event("failed")
        assert f"this agent does not forward to 127.0.0.1:{other}" in failed["error"]

    def recorded() -> bool:
        return any(
            e["detail"].get("op") == "forward"
            and f"127.0.0.1:{other}" in e["detail"].get("path", "")
            for e in security_events(admin)
        )

    wait_until(recorded, DEADLINE, "the agent's security event")


def test_forward_allow_by_admin(admin: Client, lab: TunnelAgent) -> None:
    """``agents forward-allow`` lets the agent forward to one more target,
    at once, and ``--remove`` takes it back."""
    with echo_server() as port:
        res = admin.run("agents", "forward-allow", "lab", f"127.0.0.1:{port}")
        assert f"lab forwards to 127.0.0.1:{port}" in res.stdout
        with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{port}") as t:
            assert echo_round(t.port, b"newly allowed") == b"newly allowed"
            admin.run("agents", "forward-allow", "lab", f"127.0.0.1:{port}", "--remove")
            with connect(t.port) as s:
                assert closed_within(s, DEADLINE)
    config = json.loads((lab.home / "config" / "agent.json").read_text())
    assert f"127.0.0.1:{port}" not in config["allow_forward"]


def test_forward_to_a_user_not_an_agent(admin: Client, bob: Client) -> None:
    res = admin.run("forward", "0", "bob:127.0.0.1:22", check=False, timeout=60)
    assert res.returncode == 2
    assert "bob is not an agent" in res.stderr


def test_bad_arguments(admin: Client) -> None:
    for args, text in (
        (("forward", "70000", "lab:127.0.0.1:1"), "not a port"),
        (("forward", "0", "lab"), "is not DEST:HOST:PORT or DEST:NAME"),
        (("forward", "0", "lab:127.0.0.1:0"), "not a port"),
        (("expose", "web", "3000"), "--allow USER"),
        (("expose", "bad/name", "3000", "--allow", "bob"), "not a tunnel name"),
    ):
        res = admin.run(*args, check=False, timeout=60)
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr, (args, res.stderr)


def test_forward_with_a_limit(admin: Client, lab: TunnelAgent, web: int, web_root: Path) -> None:
    """``--limit 1M``: 4 MiB from the far end take about 4 s (all the
    forward's connections together), and arrive whole."""
    with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{web}", "--limit", "1M") as t:
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{t.port}/big.bin", timeout=60) as r:
            body = r.read()
        took = time.monotonic() - started
    assert body == (web_root / "big.bin").read_bytes()
    assert 2.5 < took < 30, took  # 4 MiB at 1 MiB/s, less the bucket's first burst


# --- expose between users -----------------------------------------------------------


def test_expose_to_named_accounts(
    admin: Client, bob: Client, carol: Client, web: int, echo: int
) -> None:
    with Tunnel(bob, "expose", "web", f"127.0.0.1:{web}", "--allow", "admin") as exposed:
        assert exposed.first == {"event": "exposed", "name": "web", "target": f"127.0.0.1:{web}"}
        with (
            Tunnel(admin, "forward", "0", "bob:web") as t,
            urllib.request.urlopen(f"http://127.0.0.1:{t.port}/index.html", timeout=DEADLINE) as r,
        ):
            assert r.read() == b"<h1>behind the agent</h1>\n"
        # carol is not on the list: the hub refuses her before bob hears of it.
        res = carol.run("forward", "0", "bob:web", check=False, timeout=60)
        assert res.returncode == 3
        assert "bob does not allow you to use tunnel 'web'" in res.stderr
        assert any(
            e["actor"] == "carol" and e["detail"].get("op") == "tunnel"
            for e in security_events(admin)
        )
        # A name bob does not expose.
        res = admin.run("forward", "0", "bob:nothing", check=False, timeout=60)
        assert res.returncode == 3
        assert "bob exposes no tunnel named 'nothing'" in res.stderr
        assert exposed.stop() == 0
    # Gone with its process.
    res = admin.run("forward", "0", "bob:web", check=False, timeout=60)
    assert "bob exposes no tunnel named 'web'" in res.stderr


def test_expose_restarted_takes_its_name_back(admin: Client, bob: Client, echo: int) -> None:
    """``expose`` killed outright and started again at once: its own stale
    registration does not stand in the way."""
    first = Tunnel(bob, "expose", "again", str(echo), "--allow", "admin")
    first.proc.kill()
    with (
        Tunnel(bob, "expose", "again", str(echo), "--allow", "admin"),
        Tunnel(admin, "forward", "0", "bob:again") as t,
    ):
        assert echo_round(t.port, b"reclaimed") == b"reclaimed"


def test_expose_killed_is_forgotten(admin: Client, bob: Client, echo: int) -> None:
    """An ``expose`` killed outright: once the hub sees its attachment go,
    the name is no longer offered (no dial waits for it in vain)."""
    gone = Tunnel(bob, "expose", "killed", str(echo), "--allow", "admin")
    gone.proc.kill()

    def forgotten() -> bool:
        res = admin.run("forward", "0", "bob:killed", check=False, timeout=60)
        return "bob exposes no tunnel named 'killed'" in res.stderr

    wait_until(forgotten, 30, "the killed expose's name forgotten")


# --- the admin's view ------------------------------------------------------------------


def test_admin_lists_and_kills_a_tunnel_connection(
    admin: Client, lab: TunnelAgent, echo: int
) -> None:
    with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}", "--no-spare") as t:
        with connect(t.port) as s:
            s.sendall(b"x" * 1000)
            assert recv_exactly(s, 1000) == b"x" * 1000
            opened = t.wait_event("open")
            rows = json.loads(admin.run("admin", "tunnels", "--json").stdout)
            row = next(r for r in rows if r["id"] == opened["cid"])
            assert row["from"] == "admin" and row["to"] == "lab"
            assert row["target"] == f"127.0.0.1:{echo}" and row["kind"] == "forward"
            assert row["bytes_from"] >= 1000 and row["bytes_to"] >= 1000
            table = admin.run("admin", "tunnels").stdout
            assert opened["cid"] in table and f"127.0.0.1:{echo}" in table
            ends_before = len(ECHO_CLOSES.get(echo, []))
            started = time.monotonic()
            admin.run("admin", "kill", opened["cid"])
            killed_at = time.monotonic()  # the command returned: the hub ended it
            assert closed_within(s, 5)
            near = time.monotonic() - killed_at
            # And the far end: the agent closed its socket to the target.
            wait_until(lambda: len(ECHO_CLOSES.get(echo, [])) > ends_before, 5, "the far end")
            far = ECHO_CLOSES[echo][-1] - killed_at
            assert near < 1.0 and far < 1.0, (near, far)
            assert killed_at - started < 10
        failed = t.wait_event("failed")
        assert "an admin ended" in failed["error"] or "admin" in failed["error"]
        # The forward goes on: the next connection works.
        assert echo_round(t.port, b"after the kill") == b"after the kill"
    killed = api(admin, "GET", "/v1/admin/events?kind=connection_killed&limit=10")
    assert any(e["detail"].get("cid") == opened["cid"] for e in killed["events"])


def test_metrics_count_tunnels(admin: Client, shared_hub: Hub, lab: TunnelAgent, echo: int) -> None:
    with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}") as t:
        assert echo_round(t.port, b"m" * 5000) == b"m" * 5000
        assert t.stop() == 0
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    label = f'tunnel="admin>lab:127.0.0.1:{echo}"'

    def counted() -> bool:
        with urllib.request.urlopen(
            f"{shared_hub.url}/metrics", context=ctx, timeout=DEADLINE
        ) as r:
            text = r.read().decode()
        lines = [ln for ln in text.splitlines() if label in ln]
        return any(ln.startswith("freight_tunnel_connections_total") for ln in lines) and any(
            ln.startswith("freight_tunnel_bytes_total") and float(ln.split()[-1]) >= 10000
            for ln in lines
        )

    wait_until(counted, DEADLINE, "tunnel metrics")


async def test_sdk_forward_and_expose(
    shared_hub: Hub, admin: Client, bob: Client, echo: int
) -> None:
    """freight.expose as bob and freight.forward as admin, in this process."""
    async with (
        freight.expose(
            shared_hub.url, name="sdk", target=str(echo), allow=["admin"], config_dir=bob.config
        ),
        freight.forward(shared_hub.url, to="bob:sdk", config_dir=admin.config) as fwd,
    ):
        host, port = fwd.address
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DEADLINE)
        writer.write(b"from the SDK")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b"from the SDK"
        writer.close()
        assert fwd.opened == 1


def test_an_allow_list_holds_names_not_other_json(admin: Client, shared_hub: Hub) -> None:
    """[null] was once read as the account 'None'."""
    token = token_of(admin)
    for allow in ([None], [7], [["bob"]], ["bob", {"x": 1}]):
        status, body = rest(
            shared_hub, "PUT", "/v1/tunnels/exposed/typed", {"allow": allow}, token=token
        )
        assert status == 400, (allow, body)
        assert body["error"]["message"].startswith("allow: a list of 1 to 64 account names")
    status, rows = rest(shared_hub, "GET", "/v1/tunnels/exposed", token=token)
    assert status == 200 and "typed" not in {r["name"] for r in rows}
