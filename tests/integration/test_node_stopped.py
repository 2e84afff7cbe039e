"""A node that has stopped (SIGSTOP, a hung process) while its kernel still
takes connections: an attach sent over a connection kept alive from an
earlier request gets no answer and no TCP or TLS step to time out. The
client must leave it for the next node in the time a connection would
have had, not wait the two minutes a REST answer may take."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from pathlib import Path

import pytest
from yarl import URL

from freight.client import session as session_module
from freight.client.session import HubSession, open_channel_at
from tests.authsupport import token_of
from tests.support import Client, Hub


async def _attach(
    stopped: Hub, live: Hub, token: str, transport: str = "auto"
) -> tuple[URL, float, str]:
    session = HubSession(
        stopped.url,
        nodes=[stopped.url, live.url],
        fingerprint=live.fingerprint,
        token=token,
        transport=transport,
    )
    session._ranked = math.inf  # keep the stopped node first (no measuring)
    async with session:
        # An answer from the node leaves its connection in the pool.
        async with session.http.get(URL(stopped.url).with_path("/v1/health")) as resp:
            assert resp.status == 200
            await resp.read()
        assert stopped.proc is not None
        stopped.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            chan, used, node = await asyncio.wait_for(open_channel_at(session), 60)
            took = time.monotonic() - started
            await chan.aclose()
        finally:
            stopped.proc.send_signal(signal.SIGCONT)
    return node, took, used


def _second_node(tmp_path: Path, hub: Hub) -> Hub:
    """Another hub serving ``hub``'s certificate, as a cluster's nodes do."""
    tls = hub.data / "tls"
    node = Hub(
        tmp_path / "stopped",
        extra=["--cert", str(tls / "cert.pem"), "--key", str(tls / "key.pem")],
    ).start()
    assert node.fingerprint == hub.fingerprint
    return node


def test_an_attach_left_unanswered_on_a_kept_alive_connection_moves_to_the_next_node(
    tmp_path: Path, hub: Hub, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped = _second_node(tmp_path, hub)
    try:
        monkeypatch.setattr(session_module, "CLUSTER_CONNECT_TIMEOUT", 2.0)
        node, took, used = asyncio.run(_attach(stopped, hub, token_of(client)))
    finally:
        stopped.stop()
    assert node == URL(hub.url + "/")
    assert used == "ws"
    assert took < 2.0 + 5.0, f"the attach took {took:.1f} s to leave the stopped node"


def test_the_http_attachment_leaves_a_stopped_node_the_same_way(
    tmp_path: Path, hub: Hub, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--transport http`` (a proxy that passes no WebSockets): the
    attachment's POST over the kept-alive connection gets the same time."""
    stopped = _second_node(tmp_path, hub)
    try:
        monkeypatch.setattr(session_module, "CLUSTER_CONNECT_TIMEOUT", 2.0)
        node, took, used = asyncio.run(_attach(stopped, hub, token_of(client), "http"))
    finally:
        stopped.stop()
    assert node == URL(hub.url + "/")
    assert used == "http"
    assert took < 2.0 + 5.0, f"the attach took {took:.1f} s to leave the stopped node"
