"""The relay's small hub services alone: the in-process bus and presence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freight.hub.bus import Bus, InProcessBus
from freight.hub.presence import Presence
from freight.protocol import messages as m


def test_the_bus_delivers_by_subject_and_forgets_on_unsubscribe() -> None:
    bus: Bus = InProcessBus()
    got: list[tuple[m.Message, bytes, Any]] = []

    def take(msg: m.Message, payload: bytes, conn: Any) -> None:
        got.append((msg, payload, conn))

    assert bus.publish("a1", m.Pause(cid="c")) is False  # nobody there: dropped
    bus.subscribe("a1", take)
    assert bus.publish("a1", m.Resume(cid="c"), b"x", "conn") is True
    assert got == [(m.Resume(cid="c"), b"x", "conn")]
    other: list[m.Message] = []
    bus.subscribe("a1", lambda msg, payload, conn: other.append(msg))  # replaces
    bus.unsubscribe("a1", take)  # the replaced handler cannot remove its successor
    assert bus.publish("a1", m.Pause(cid="c"))
    assert other == [m.Pause(cid="c")] and len(got) == 1


@dataclass
class _User:
    id: int


@dataclass
class _Att:
    user: _User
    commands: bool = False
    closed: bool = False
    extra: list[int] = field(default_factory=list)


def test_presence_finds_an_agents_command_channel_and_keeps_caps() -> None:
    live: list[_Att] = [_Att(_User(1)), _Att(_User(2), commands=True, closed=True)]
    now = [100.0]
    presence: Presence[_Att] = Presence(live, clock=lambda: now[0])
    assert presence.attachment_of(1) is None  # not a command channel
    assert presence.attachment_of(2) is None  # closed
    live.append(agent := _Att(_User(2), commands=True))
    assert presence.attachment_of(2) is agent
    assert presence.cap_between(1, 2) is None
    presence.set_cap(2, 1000)
    bucket = presence.cap_between(1, 2)
    assert bucket is not None and bucket.rate == 1000
    presence.set_cap(2, 2000)
    assert presence.cap_between(2, 9) is bucket and bucket.rate == 2000
    presence.set_cap(2, 0)
    assert presence.cap_between(1, 2) is None


async def test_presence_wakes_whoever_waits_for_a_command() -> None:
    presence: Presence[_Att] = Presence([])
    event = presence.command_event(7)
    assert presence.command_event(7) is event
    presence.command_finished(8)  # nobody waits: nothing happens
    presence.command_finished(7)
    assert event.is_set()
    presence.forget_command_event(7)
    assert presence.command_event(7) is not event
