"""The hub's composition root and its control-channel dispatcher, without
starting a hub: the registry routes each message type to the service that
registered it (on the channels it serves), anything else is a typed
protocol error answered with a stable code; build_hub builds every service
once from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from freight.hub.collect import Collector
from freight.hub.commands import CommandQueue
from freight.hub.compose import HubConfig, build_app, build_hub, close_hub
from freight.hub.dispatch import Dispatcher, Link, Scope, error_answer
from freight.hub.requests import LOGINS
from freight.hub.services import COLLECTOR, COMMANDS, DB, RELAY, SESSIONS, STATE, Hub
from freight.hub.streams import User
from freight.protocol import messages as m
from freight.protocol.errors import ProtocolError

ALICE = User(1, "alice", "user", "t" * 64)


def link(scope: Scope) -> Link:
    return Link(ALICE, chan=None, att=object(), scope=scope)


async def test_an_unknown_message_is_a_typed_error_with_a_stable_code() -> None:
    dispatcher = Dispatcher()
    with pytest.raises(ProtocolError) as caught:
        await dispatcher.dispatch(link(Scope.AGENT), m.Ping(), b"")
    answer = error_answer(caught.value)
    assert isinstance(answer, m.Error)
    assert answer.code == "protocol_error"
    assert "unexpected Ping on a control channel" in answer.message


async def test_the_registry_routes_by_type_within_the_scope_registered() -> None:
    dispatcher = Dispatcher()
    seen: list[tuple[Scope, Any, bytes]] = []

    async def on_ack(ln: Link, msg: Any, payload: bytes) -> None:
        seen.append((ln.scope, msg, payload))

    dispatcher.register(m.CommandAck, on_ack, Scope.AGENT)
    assert dispatcher.registered() == {m.CommandAck: Scope.AGENT}
    await dispatcher.dispatch(link(Scope.AGENT), m.CommandAck(id=7), b"x")
    assert seen == [(Scope.AGENT, m.CommandAck(id=7), b"x")]
    # An agent's command messages are not taken on a person's control channel
    # nor on a data connection.
    for scope, where in ((Scope.CONTROL, "control channel"), (Scope.DATA, "data connection")):
        with pytest.raises(ProtocolError, match=f"unexpected CommandAck on a {where}"):
            await dispatcher.dispatch(link(scope), m.CommandAck(id=8), b"")
    assert len(seen) == 1
    with pytest.raises(ValueError):  # one service per message type
        dispatcher.register(m.CommandAck, on_ack, Scope.CONTROL)


async def test_agent_attached_hooks_run_in_the_order_registered() -> None:
    dispatcher = Dispatcher()
    order: list[str] = []

    async def first(ln: Link, version: str) -> None:
        order.append("presence " + version)

    async def second(ln: Link, version: str) -> None:
        order.append("commands " + version)

    dispatcher.on_agent_attached(first)
    dispatcher.on_agent_attached(second)
    await dispatcher.agent_attached(link(Scope.AGENT), "freight-agent/1")
    assert order == ["presence freight-agent/1", "commands freight-agent/1"]


async def test_build_hub_from_config_without_starting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FREIGHT_ADMIN_PASSWORD", "a-long-enough-password")
    hub = await build_hub(HubConfig(data=tmp_path / "hub", port=0))
    try:
        assert isinstance(hub, Hub)
        assert isinstance(hub.commands, CommandQueue) and isinstance(hub.collector, Collector)
        assert hub.identity.fingerprint.startswith("SHA256:")
        assert hub.relay.fingerprint == hub.identity.fingerprint
        assert len(hub.tasks) == 0  # nothing runs until the server starts it
        assert await hub.db.user_count() == 1  # the admin
        # Every control message has the service that registered it.
        registered = hub.dispatcher.registered()
        assert registered[m.Relay] is Scope.CONTROL
        assert registered[m.Dial] is Scope.CONTROL
        assert registered[m.TicketRequest] is Scope.CONTROL
        assert registered[m.CommandAck] is Scope.AGENT
        assert registered[m.CommandResult] is Scope.AGENT
        assert registered[m.Ping] is Scope.DATA
        # The web application finds each service under its typed key.
        app = build_app(hub)
        assert app[STATE] is hub
        assert app[LOGINS] is hub.db and app[DB] is hub.db
        assert app[COMMANDS] is hub.commands and app[COLLECTOR] is hub.collector
        assert app[RELAY] is hub.relay and app[SESSIONS] is hub.sessions
        paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
        assert {"/v1/control", "/v1/login", "/v1/agents/{name}/commands"} <= paths
    finally:
        await close_hub(hub)
