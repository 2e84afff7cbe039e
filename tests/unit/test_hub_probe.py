"""The hub's probe service against a recording channel: answers, trains,
and the bound on trains sent at once."""

from __future__ import annotations

import asyncio

import pytest

from freight.hub.dispatch import Dispatcher, Link, Scope
from freight.hub.probe import ProbeService
from freight.hub.streams import User
from freight.protocol import messages as m
from freight.protocol.probe import MalformedProbe


class Recorder:
    """A channel that keeps what is sent; ``gate`` holds every send."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.sent: list[tuple[m.Message, int]] = []
        self.gate = gate

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append((msg, len(payload)))


def link(name: str = "alice", gate: asyncio.Event | None = None) -> Link:
    return Link(User(1, name, "user"), Recorder(gate))


async def test_ping_up_and_down() -> None:
    service, one = ProbeService(), link()
    await service.request(one, m.Probe(pid="a", op="ping"), b"")
    await service.request(one, m.Probe(pid="u", op="up", size=1024), b"")
    for seq in range(3):
        await service.data(one, m.ProbeData(pid="u", seq=seq, len=1024), b"x" * 1024)
    await service.request(one, m.Probe(pid="u", op="end"), b"")
    await service.request(one, m.Probe(pid="d", op="down", seconds=0.05, size=2048), b"")
    sent = one.chan.sent
    assert sent[0] == (m.ProbeReport(pid="a", op="ping"), 0)
    end = sent[2][0]
    assert isinstance(end, m.ProbeReport) and end.records == 3 and end.samples[-1][1] == 3072
    train = [msg for msg, n in sent[3:] if isinstance(msg, m.ProbeData)]
    assert train and all(msg.len == 2048 for msg in train)
    assert [msg.seq for msg in train] == list(range(len(train)))
    assert sent[-1][0] == m.ProbeReport(pid="d", op="down", records=len(train))


async def test_trains_at_once_are_bounded_per_account() -> None:
    service = ProbeService(per_account=1, per_hub=8)
    gate = asyncio.Event()
    first, second, other = link(gate=gate), link(), link("bob")
    held = asyncio.ensure_future(
        service.request(first, m.Probe(pid="d1", op="down", seconds=0.05), b"")
    )
    await asyncio.sleep(0)  # the first train is under way (held at its first send)
    await asyncio.wait_for(
        service.request(second, m.Probe(pid="d2", op="down", seconds=0.05), b""), 5
    )
    ((refused, _),) = second.chan.sent
    assert isinstance(refused, m.Error) and refused.code == "busy" and refused.rid == "d2"
    await asyncio.wait_for(
        service.request(other, m.Probe(pid="d3", op="down", seconds=0.02), b""), 5
    )
    assert isinstance(other.chan.sent[-1][0], m.ProbeReport)  # another account is served
    gate.set()
    await asyncio.wait_for(held, 5)
    await asyncio.wait_for(
        service.request(second, m.Probe(pid="d4", op="down", seconds=0.02), b""), 5
    )
    assert isinstance(second.chan.sent[-1][0], m.ProbeReport)  # and the slot came back


async def test_hostile_frames_raise_and_register_at_data_scope() -> None:
    service, one = ProbeService(), link()
    with pytest.raises(MalformedProbe):
        await service.data(one, m.ProbeData(pid="x", seq=0, len=1), b"x")
    dispatcher = Dispatcher()
    service.register(dispatcher)
    assert dispatcher.registered()[m.Probe] is Scope.DATA
    assert dispatcher.registered()[m.ProbeData] is Scope.DATA
