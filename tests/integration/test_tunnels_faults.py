"""Tunnels under faults and hostile peers: a hub restart in the middle of a
tunnelled connection (it goes on; exposed names come back), a flood of
connections through one forward (bounded, refused clearly), a reader that
stops reading (the hub's memory stays bounded), and a client that dials a
tunnel with garbage instead of an open request. Each test has its own hub."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from freight.client.config import ClientConfig
from freight.client.relay import RelayClient
from freight.client.session import HubSession
from freight.errors import UsageError
from freight.protocol.tunnel import decode_answer, new_tunnel_app, parse_destination
from tests.authsupport import rest, token_of
from tests.relaysupport import BOB_PASSWORD, fast
from tests.support import Client, Hub, wait_until
from tests.tunnelsupport import (
    DEADLINE,
    Tunnel,
    TunnelAgent,
    closed_within,
    connect,
    echo_server,
    recv_exactly,
)

MiB = 1024 * 1024


def _hub_rss(hub: Hub) -> int:
    assert hub.proc is not None
    for line in Path(f"/proc/{hub.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def admin(client: Client) -> Client:
    return fast(client)


def test_hub_restart_keeps_tunnelled_connections(tmp_path: Path, hub: Hub, admin: Client) -> None:
    with echo_server() as echo:
        lab = TunnelAgent(admin, hub, "lab", tmp_path / "lab", f"127.0.0.1:{echo}")
        admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
        bob = fast(Client(tmp_path / "bob", hub))
        bob.login(user="bob", password=BOB_PASSWORD)
        lab.start()
        try:
            with (
                Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}") as t,
                Tunnel(bob, "expose", "echo", str(echo), "--allow", "admin"),
                connect(t.port) as s,
            ):
                s.sendall(b"before")
                assert recv_exactly(s, 6) == b"before"
                hub.kill()
                hub.start()  # same data folder, same port
                # The same TCP connection goes on once both ends are back.
                s.sendall(b"after the restart")
                assert recv_exactly(s, 17) == b"after the restart"
                with connect(t.port) as s2:
                    s2.sendall(b"new")
                    assert recv_exactly(s2, 3) == b"new"

                # bob's exposed name is registered again once his end has
                # re-attached (which may come after the forward's).
                def bob_exposes_echo() -> bool:
                    status, rows = rest(hub, "GET", "/v1/tunnels/exposed?all=1", token=token)
                    assert status == 200, rows
                    return any(r["owner"] == "bob" and r["name"] == "echo" for r in rows)

                token = token_of(admin)
                wait_until(bob_exposes_echo, DEADLINE, "bob's exposed name to come back")
                with (
                    Tunnel(admin, "forward", "0", "bob:echo") as via_bob,
                    connect(via_bob.port) as s3,
                ):
                    s3.sendall(b"via bob")
                    assert recv_exactly(s3, 7) == b"via bob"
        finally:
            lab.kill()


def test_flood_of_connections_is_bounded(tmp_path: Path, hub: Hub, admin: Client) -> None:
    """More connections than --max-conns: the extra ones are reset at once
    and reported; those within the bound all work."""
    with echo_server() as echo:
        lab = TunnelAgent(admin, hub, "lab", tmp_path / "lab", f"127.0.0.1:{echo}")
        lab.start()
        try:
            with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}", "--max-conns", "8") as t:
                held = [connect(t.port) for _ in range(8)]
                for i, s in enumerate(held):
                    s.sendall(b"%d" % i)
                for i, s in enumerate(held):
                    assert recv_exactly(s, 1) == b"%d" % i
                extra = [connect(t.port) for _ in range(20)]
                for s in extra:
                    assert closed_within(s, DEADLINE)
                refused = t.wait_event("refused")
                assert refused == {"event": "refused", "reason": "max_conns", "limit": 8}
                for s in held + extra:
                    s.close()

                # Room again once they closed.
                def works() -> bool:
                    with connect(t.port) as s:
                        s.sendall(b"z")
                        try:
                            return recv_exactly(s, 1) == b"z"
                        except OSError:
                            return False

                wait_until(works, DEADLINE, "a connection after the flood")
        finally:
            lab.kill()


def test_reader_that_stops_reading_bounds_hub_memory(
    tmp_path: Path, hub: Hub, admin: Client
) -> None:
    """The local end of a forward never reads while the far end sends 200
    MiB: the sender is held back end to end, the hub's memory stays flat."""

    with echo_server() as echo:
        lab = TunnelAgent(admin, hub, "lab", tmp_path / "lab", f"127.0.0.1:{echo}")
        lab.start()
        try:
            with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}") as t:
                before = _hub_rss(hub)
                with connect(t.port) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                    s.setblocking(False)
                    block = b"q" * MiB
                    sent = 0
                    peak = before
                    deadline = time.monotonic() + 20
                    # Push as much as the path takes (echoed back towards
                    # us, who never read) until it stops taking more.
                    stalled_since = time.monotonic()
                    while time.monotonic() < deadline and sent < 200 * MiB:
                        try:
                            sent += s.send(block)
                            stalled_since = time.monotonic()
                        except BlockingIOError:
                            if time.monotonic() - stalled_since > 2:
                                break
                            time.sleep(0.05)
                        peak = max(peak, _hub_rss(hub))
                    assert sent < 200 * MiB, "nothing held the sender back"
                    # Both directions' windows (16 MiB each, held by the ends)
                    # plus the sockets' buffers on the way: well short of 200 MiB.
                    assert sent < 128 * MiB, sent / MiB
                    assert peak - before < 48 * MiB, (peak - before) / MiB
        finally:
            lab.kill()


def test_garbage_instead_of_an_open_request(tmp_path: Path, hub: Hub, admin: Client) -> None:
    """A hostile client dials the agent's tunnel application itself and
    sends garbage, an oversized record, and a request for another target:
    each is refused ('malformed'), and the agent goes on serving."""

    with echo_server() as echo:
        lab = TunnelAgent(admin, hub, "lab", tmp_path / "lab", f"127.0.0.1:{echo}")
        lab.start()
        try:

            async def hostile() -> list[str]:
                config = ClientConfig(admin.config)
                codes = []
                async with RelayClient(HubSession.from_config(config), config) as relay:
                    await relay.start()
                    dest = parse_destination(f"lab:127.0.0.1:{echo}")
                    for first in (
                        b"\xff" * 100,
                        b"O" + b"{" * 5000,
                        b'O{"service": "127.0.0.1:1"}',
                    ):
                        conn = await relay.connect("lab", new_tunnel_app(dest), timeout=DEADLINE)
                        await conn.send(first)
                        answer = decode_answer(await asyncio.wait_for(conn.recv(), DEADLINE))
                        assert not answer.ok
                        codes.append(answer.code)
                        await conn.abort()
                    # The hub refuses malformed tunnel names and listening
                    # for one tunnel connection's own name.
                    for bad in ("tunnel.nothex00.tcp:web", "tunnel.0123abcd.tcp:127.0.0.1:0"):
                        with pytest.raises(UsageError, match="tunnel"):
                            await relay.connect("lab", bad, timeout=DEADLINE)
                    with pytest.raises(UsageError, match="listen for tunnel"):
                        await relay.listen("tunnel.0123abcd.tcp:web")
                return codes

            assert asyncio.run(hostile()) == ["malformed"] * 3
            with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}") as t, connect(t.port) as s:
                s.sendall(b"still serving")
                assert recv_exactly(s, 13) == b"still serving"
            assert lab.proc is not None and lab.proc.running
        finally:
            lab.kill()


def test_account_bound_at_the_hub(tmp_path: Path, hubs: Any) -> None:
    """The hub's per-account bound on relayed connections covers tunnels:
    beyond it a new tunnelled connection is refused with the reason."""
    hub = hubs("--max-relay-connections", "4")
    admin = fast(Client(tmp_path / "admin", hub))
    admin.login()
    with echo_server() as echo:
        lab = TunnelAgent(admin, hub, "lab", tmp_path / "lab", f"127.0.0.1:{echo}")
        lab.start()
        try:
            with Tunnel(admin, "forward", "0", f"lab:127.0.0.1:{echo}", "--no-spare") as t:
                held = []
                for i in range(4):
                    s = connect(t.port)
                    s.sendall(b"%d" % i)
                    assert recv_exactly(s, 1) == b"%d" % i
                    held.append(s)
                with connect(t.port) as extra:
                    assert closed_within(extra, DEADLINE)
                failed = t.wait_event("failed")
                assert "relayed connections open (the hub's limit)" in failed["error"]
                for s in held:
                    s.close()
        finally:
            lab.kill()
