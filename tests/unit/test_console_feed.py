"""The console's live feed without a hub: which topics an event changes,
where a reconnecting stream resumes, and the bounds on streams."""

from __future__ import annotations

import pytest

from freight.errors import LimitReached
from freight.hub.console.stream import COALESCE, COUNTERS, KEEPALIVE, TOPICS, Feed, Pacer, topics_of


@pytest.mark.parametrize(
    ("kind", "topics"),
    [
        ("connection_open", {"connections", "dashboard", "events"}),
        ("connection_killed", {"connections", "dashboard", "events"}),
        ("user_added", {"users", "events"}),
        ("login", {"users", "events"}),
        ("login_failure", {"users", "dashboard", "events"}),
        ("agent_enrolled", {"agents", "dashboard", "events"}),
        ("agent_attached", {"agents", "dashboard", "events"}),
        ("agent_detached", {"agents", "dashboard", "events"}),
        ("command_queued", {"agents", "events"}),
        ("enrol_token_created", {"agents", "events"}),
        ("pull_start", {"transfers", "dashboard", "events"}),
        ("security", {"dashboard", "events"}),
        ("bandwidth_changed", {"dashboard", "events"}),
        ("policy_set", {"events"}),
    ],
)
def test_topics_of_an_event(kind: str, topics: set[str]) -> None:
    assert topics_of(kind) == topics


def test_since_and_resume() -> None:
    feed = Feed()
    assert feed.resume_from("") == 0 and feed.since(0) == []
    feed.changed("user_added")
    first = feed.event_id()
    feed.changed("connection_open")
    # From the first id: what changed after it.
    assert feed.since(feed.resume_from(first)) == ["connections", "events", "dashboard"]
    # No id: from now on. An id of another run, or junk: everything.
    assert feed.since(feed.resume_from("")) == []
    for junk in ("00000000-1", f"{feed.epoch}-x", "<script>", f"{feed.epoch}"):
        assert feed.since(feed.resume_from(junk)) == list(TOPICS), junk
    # An id from the future of this run is taken as now.
    assert feed.since(feed.resume_from(f"{feed.epoch}-999")) == []


def test_streams_are_bounded_per_login_and_in_all() -> None:
    feed = Feed(max_streams=3, max_per_login=2)
    with feed.subscribe("a"), feed.subscribe("a"):
        with (
            pytest.raises(LimitReached, match="at most 2 live pages per login"),
            feed.subscribe("a"),
        ):
            pass
        with feed.subscribe("b"):
            assert feed.streams == 3
            with (
                pytest.raises(LimitReached, match="at most 3 live console pages"),
                feed.subscribe("c"),
            ):
                pass
    assert feed.streams == 0
    with feed.subscribe("a"), feed.subscribe("a"):
        pass  # given back when they end


def test_a_change_wakes_every_stream_and_close_ends_them() -> None:
    feed = Feed()
    with feed.subscribe("a") as one, feed.subscribe("b") as two:
        feed.changed("logout")
        assert one.is_set() and two.is_set()
        one.clear()
        two.clear()
        feed.close()
        assert one.is_set() and two.is_set() and feed.closing
    with pytest.raises(LimitReached, match="shutting down"), feed.subscribe("a"):
        pass


# --- the pacer, on a clock of its own --------------------------------------------


def test_nothing_changed_nothing_sent_however_many_connections_live() -> None:
    """A live connection's counters refresh every COUNTERS["connections"]
    seconds; nothing else is sent while nothing changes (the dashboard
    never), and nothing at all while nothing is live."""
    feed = Feed()
    now = 100.0
    pacer = Pacer(feed, feed.resume_from(""), now)
    live = ("connections",)
    sent: list[tuple[float, list[str]]] = []
    while now <= 130.0:
        if topics := pacer.due(live, now):
            pacer.sent(topics, now)
            sent.append((now, topics))
        delay, wakes = pacer.wait(live, now)
        assert wakes and delay > 0
        now += delay
    every = COUNTERS["connections"]
    assert every >= 5.0
    assert sent == [(100.0 + every * i, ["connections"]) for i in range(1, len(sent) + 1)]
    assert len(sent) == int(30 / every)
    # Nothing live: only the keep-alive wakes the stream.
    quiet = Pacer(feed, feed.seq, now)
    assert quiet.due((), now + 1000) == [] and quiet.wait((), now) == (KEEPALIVE, True)


def test_a_change_goes_out_at_once_then_coalesced_within_the_window() -> None:
    feed = Feed()
    pacer = Pacer(feed, feed.resume_from(""), 0.0)
    live = ("connections",)
    assert pacer.due(live, 1.0) == []
    feed.changed("connection_open")
    assert pacer.due(live, 1.0) == ["connections", "events", "dashboard"]
    pacer.sent(["connections", "events", "dashboard"], 1.0)
    # A burst right after: held until the window ends, then sent together.
    feed.changed("connection_closed")
    feed.changed("user_added")
    assert pacer.due(live, 1.0 + COALESCE / 2) == []
    delay, wakes = pacer.wait(live, 1.0 + COALESCE / 2)
    assert (delay, wakes) == (COALESCE / 2, False)  # a sleep, not a wait for more changes
    assert pacer.due(live, 1.0 + COALESCE) == ["connections", "events", "users", "dashboard"]
    pacer.sent(["connections", "events", "users", "dashboard"], 1.0 + COALESCE)
    # A change resets the connections' counter refresh: the next is a full
    # interval after the change was sent.
    assert pacer.wait(live, 1.0 + COALESCE) == (COUNTERS["connections"], True)
    assert pacer.due(live, 1.0 + COALESCE + COUNTERS["connections"] - 0.01) == []
    assert pacer.due(live, 1.0 + COALESCE + COUNTERS["connections"]) == ["connections"]


def test_a_transfer_under_way_refreshes_each_second_and_stops_with_it() -> None:
    feed = Feed()
    pacer = Pacer(feed, feed.seq, 0.0)
    assert COUNTERS["transfers"] <= 1.0
    assert pacer.due(("transfers",), COUNTERS["transfers"]) == ["transfers"]
    pacer.sent(["transfers"], COUNTERS["transfers"])
    # It ended (its event was sent): no more ticks, then a new one starts
    # with a full interval before its first counter refresh.
    assert pacer.due((), 10.0) == []
    assert pacer.due(("transfers",), 10.5) == []
    assert pacer.due(("transfers",), 10.0 + COUNTERS["transfers"]) == ["transfers"]
