"""The console's live feed without a hub: which topics an event changes,
where a reconnecting stream resumes, and the bounds on streams."""

from __future__ import annotations

import pytest

from freight.errors import LimitReached
from freight.hub.console.stream import TOPICS, Feed, topics_of


@pytest.mark.parametrize(
    ("kind", "topics"),
    [
        ("connection_open", {"connections", "dashboard", "events"}),
        ("connection_killed", {"connections", "dashboard", "events"}),
        ("user_added", {"users", "events"}),
        ("login", {"users", "events"}),
        ("login_failure", {"users", "dashboard", "events"}),
        ("agent_enrolled", {"agents", "dashboard", "events"}),
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
