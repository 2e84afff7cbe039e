"""The hub's relay switch (freight.protocol.switch), fed events alone."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol.e2e import ACCEPT, DIAL
from freight.protocol.errors import LocalProtocolError, ProtocolError
from freight.protocol.switch import (
    CUT,
    DROP,
    FORWARD,
    FRAME_COST,
    PAUSE,
    TOO_SLOW,
    Link,
    LinkState,
    Port,
    Switch,
)

KiB = 1024


def linked(sw: Switch) -> tuple[Link[Port], Port, Port]:
    link: Link[Port] = Link("c1")
    a, b = Port(), Port()
    sw.bind(link, DIAL, a)
    sw.bind(link, ACCEPT, b)
    assert sw.link(link) is False
    return link, a, b


def send(sw: Switch, link: Link[Port], role: str, size: int) -> object:
    verdict = sw.relay(link, role, size)
    if verdict is not DROP:
        target = link.ends[ACCEPT if role == DIAL else DIAL]
        assert target is not None
        sw.queue(target, size)
    return verdict


def test_lifecycle_follows_the_table() -> None:
    sw = Switch(64 * KiB)
    link: Link[Port] = Link("c1")
    a, b, c = Port(), Port(), Port()
    assert link.state is LinkState.WAITING
    assert sw.bind(link, DIAL, a) is None
    assert sw.bind(link, ACCEPT, b) is None
    assert sw.link(link) is False
    assert link.state is LinkState.LINKED
    assert sw.detach(link, ACCEPT, 10.0) is False  # linked once: kept for a rejoin
    assert link.state is LinkState.HALF
    assert not sw.expired(link, 10.0 + sw.grace)
    assert sw.expired(link, 10.0 + sw.grace + 1)
    assert sw.bind(link, ACCEPT, c) is None
    assert sw.link(link) is True  # a relink says rejoined
    assert link.detached_since == 0.0
    assert sw.bind(link, ACCEPT, b) is c  # the end moved: the old port is returned
    sw.end(link)
    sw.end(link)  # ending twice is harmless
    assert link.state is LinkState.ENDED
    with pytest.raises(LocalProtocolError):
        sw.relay(link, DIAL, 1)
    assert link.state is LinkState.ERROR
    with pytest.raises(LocalProtocolError):
        sw.end(link)  # ERROR is sticky
    assert link.state is LinkState.ERROR


def test_a_dial_never_linked_is_forgotten_when_its_end_leaves() -> None:
    sw = Switch(64 * KiB)
    link: Link[Port] = Link("c1")
    sw.bind(link, DIAL, Port())
    assert sw.detach(link, DIAL, 1.0) is True
    rejoin: Link[Port] = Link("c2", linked_once=True)
    sw.bind(rejoin, DIAL, Port())
    assert sw.detach(rejoin, DIAL, 1.0) is False


def test_link_with_an_end_missing_is_an_error() -> None:
    sw = Switch(64 * KiB)
    link: Link[Port] = Link("c1")
    sw.bind(link, DIAL, Port())
    with pytest.raises(LocalProtocolError):
        sw.link(link)
    assert link.state is LinkState.ERROR


def test_records_to_an_absent_or_closed_end_are_dropped() -> None:
    sw = Switch(64 * KiB)
    link: Link[Port] = Link("c1")
    sw.bind(link, DIAL, Port())
    assert sw.relay(link, DIAL, 100) is DROP
    link, _a, b = linked(sw)
    b.closed = True
    assert sw.relay(link, DIAL, 100) is DROP
    assert link.relayed[DIAL] == 100  # counted for the books all the same
    assert link.queued[ACCEPT] == 0


def test_pause_beyond_the_window_and_resume_below_half() -> None:
    window = 64 * KiB
    sw = Switch(window, queue_limit=1 << 30)
    link, _a, b = linked(sw)
    verdicts = [send(sw, link, DIAL, 16 * KiB) for _ in range(5)]
    assert verdicts == [FORWARD] * 4 + [PAUSE]
    assert link.paused[DIAL] and b.paused_senders == {"c1": (link, DIAL)}
    assert send(sw, link, DIAL, 16 * KiB) is FORWARD  # paused: no second Pause
    assert link.overshoot[DIAL] == 16 * KiB
    # Drain to half the window: the sender is resumed, exactly once.
    resumed = []
    for _ in range(6):
        resumed += sw.drained(b, link, ACCEPT, 16 * KiB)
    assert resumed == [(link, DIAL)]
    assert not link.paused[DIAL] and link.overshoot[DIAL] == 0
    assert b.queued == 0 and link.queued[ACCEPT] == 0


def test_a_sender_ignoring_pause_is_cut() -> None:
    window = 64 * KiB
    sw = Switch(window, queue_limit=1 << 30, overshoot=2)
    link, _a, _b = linked(sw)
    verdicts = [send(sw, link, DIAL, 16 * KiB) for _ in range(9)]
    assert verdicts[-1] is CUT
    assert PAUSE in verdicts


def test_an_attachment_piling_up_too_much_is_too_slow() -> None:
    sw = Switch(1 << 30, queue_limit=64 * KiB, in_flight=64 * KiB)
    link, _a, _b = linked(sw)
    verdicts = [send(sw, link, DIAL, 16 * KiB) for _ in range(9)]
    assert verdicts[3] is PAUSE  # the port's bound, not the window
    assert verdicts[-1] is TOO_SLOW


def test_frames_cost_something_even_when_empty() -> None:
    sw = Switch(64 * KiB)
    port = Port()
    assert sw.queue(port, 0) == FRAME_COST
    assert sw.drained(port, None, "", 0) == ()
    assert port.queued == 0


def test_resume_skips_links_that_ended_or_moved() -> None:
    sw = Switch(16 * KiB, queue_limit=1 << 30)
    link, _a, b = linked(sw)
    send(sw, link, DIAL, 20 * KiB)
    assert link.paused[DIAL]
    sw.end(link)
    assert list(sw.drained(b, link, ACCEPT, 20 * KiB)) == []
    assert b.paused_senders == {}


def test_limits_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        Switch(0)


# --- random event sequences ----------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["bind", "link", "detach", "relay", "drain", "end", "sweep"]),
        st.sampled_from([DIAL, ACCEPT]),
        st.integers(0, 3),  # which port
        st.integers(0, 40 * KiB),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_events_keep_the_books_and_raise_only_protocol_errors(
    ops: list[tuple[str, str, int, int]],
) -> None:
    window = 32 * KiB
    sw = Switch(window, queue_limit=64 * KiB, in_flight=32 * KiB, overshoot=2)
    link: Link[Port] = Link("c1")
    ports = [Port() for _ in range(4)]
    queued: dict[int, list[tuple[str, int]]] = {i: [] for i in range(4)}  # port -> frames
    now = 0.0
    for op, role, which, size in ops:
        now += 1.0
        port = ports[which]
        before = link.state
        try:
            if op == "bind":
                sw.bind(link, role, port)
            elif op == "link":
                sw.link(link)
            elif op == "detach":
                sw.detach(link, role, now)
            elif op == "end":
                sw.end(link)
            elif op == "sweep":
                sw.expired(link, now)
            elif op == "relay":
                verdict = sw.relay(link, role, size)
                to = ACCEPT if role == DIAL else DIAL
                target = link.ends[to]
                if verdict is DROP:
                    assert target is None or target.closed
                else:
                    assert target is not None
                    sw.queue(target, size)
                    queued[ports.index(target)].append((to, size))
                if verdict is PAUSE:
                    assert link.paused[role]
            elif op == "drain" and queued[which]:
                to, size = queued[which].pop(0)
                for paused, sender in sw.drained(port, link, to, size):
                    assert paused is link and not link.paused[sender]
        except ProtocolError:
            assert link.state is LinkState.ERROR
            return
        if before is LinkState.ENDED:
            assert link.state is LinkState.ENDED  # an ended link stays ended
        # The books: each port counts exactly the frames still queued to it,
        # and a direction never counts less than nothing.
        for i, p in enumerate(ports):
            assert p.queued == sum(s + FRAME_COST for _, s in queued[i])
        assert link.queued[DIAL] >= 0 and link.queued[ACCEPT] >= 0
        if link.state is LinkState.LINKED:
            assert link.complete()
