"""The command and content lifecycles (freight.protocol.commands): their
tables, and random inputs that may only ever raise the typed error, after
which the machine stays broken."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.protocol.commands import (
    COMMAND_TABLE,
    CONTENT_TABLE,
    OPEN_COMMAND_STATES,
    TERMINAL_COMMAND_STATES,
    Action,
    CommandInput,
    CommandLifecycle,
    CommandState,
    ContentInput,
    ContentLifecycle,
    ContentState,
    InvalidTransition,
    command_sources,
    command_target,
    content_sources,
    content_target,
)
from freight.protocol.errors import LocalProtocolError, ProtocolError

C, CI = CommandState, CommandInput
S, SI = ContentState, ContentInput


def test_a_command_runs_its_course() -> None:
    m = CommandLifecycle(C.QUEUED, 1.0)
    assert m.open
    assert m.handle(CI.DELIVER, 2.0) is Action.SEND and m.state is C.DELIVERED
    assert m.handle(CI.ACK, 3.0) is Action.NONE and m.state is C.ACKED
    assert m.handle(CI.DELIVER, 4.0) is Action.SEND  # again after a reconnect
    assert m.handle(CI.SUCCEED, 5.0) is Action.SETTLE
    assert m.state is C.DONE and m.entered == 5.0 and not m.open


@pytest.mark.parametrize("end", [CI.SUCCEED, CI.FAIL, CI.CANCEL])
@pytest.mark.parametrize("late", list(CommandInput))
def test_nothing_moves_an_answered_command(end: CommandInput, late: CommandInput) -> None:
    m = CommandLifecycle(C.QUEUED)
    m.handle(end, 1.0)
    answered = m.state
    assert answered in TERMINAL_COMMAND_STATES and not m.allows(late)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(late, 2.0)
    assert isinstance(exc.value, LocalProtocolError) and exc.value.code == "invalid_transition"
    assert m.state is C.ERROR
    with pytest.raises(InvalidTransition):  # and the error stays
        m.handle(CI.DELIVER, 3.0)


def test_an_ack_is_taken_once() -> None:
    m = CommandLifecycle(C.DELIVERED)
    m.handle(CI.ACK, 1.0)
    with pytest.raises(InvalidTransition):
        m.handle(CI.ACK, 2.0)


def test_the_compare_and_set_views_of_the_command_table() -> None:
    assert set(command_sources(CI.ACK)) == {C.QUEUED, C.DELIVERED}
    for event in (CI.DELIVER, CI.SUCCEED, CI.FAIL, CI.CANCEL):
        assert set(command_sources(event)) == OPEN_COMMAND_STATES
    assert command_target(CI.SUCCEED) is C.DONE
    assert command_target(CI.CANCEL) is C.CANCELLED
    # Stored names are the enum's: a state compares equal to its name.
    assert C.DONE == "done" and "acked" in OPEN_COMMAND_STATES
    assert {s for s, _ in COMMAND_TABLE} == OPEN_COMMAND_STATES


def test_content_runs_its_course_and_comes_back_when_offered_again() -> None:
    m = ContentLifecycle(S.WANTED)
    assert m.handle(SI.ISSUE, 1.0) is Action.ISSUE
    assert m.handle(SI.CLAIM, 2.0) is Action.FINISH
    m.handle(SI.SUPERSEDE, 3.0)
    m.handle(SI.REVIVE, 4.0)
    assert m.state is S.WANTED
    m.handle(SI.ISSUE, 5.0)
    m.handle(SI.CLAIM, 6.0)
    m.handle(SI.STORE, 7.0)
    assert m.state is S.STORED
    with pytest.raises(InvalidTransition):  # stored content is not wanted again
        m.handle(SI.RETRY, 8.0)


def test_the_compare_and_set_views_of_the_content_table() -> None:
    assert content_sources(SI.CLAIM) == (S.ISSUED,)
    assert content_sources(SI.REISSUE) == (S.ISSUED,)
    assert content_sources(SI.RETRY) == (S.FINISHING,)
    assert set(content_sources(SI.REVIVE)) == {S.FAILED, S.SUPERSEDED}
    assert content_target(SI.REVIVE) is S.WANTED
    assert not any(s is S.STORED for s, _ in CONTENT_TABLE)  # stored is final


@given(
    start=st.sampled_from([s for s in CommandState if s is not C.ERROR]),
    events=st.lists(st.sampled_from(list(CommandInput)), max_size=20),
)
def test_random_command_inputs_raise_only_the_typed_error(
    start: CommandState, events: list[CommandInput]
) -> None:
    m = CommandLifecycle(start)
    broken = False
    for i, event in enumerate(events):
        before = m.state
        try:
            m.handle(event, float(i))
        except ProtocolError as exc:
            assert isinstance(exc, InvalidTransition)
            assert broken or (before, event) not in COMMAND_TABLE
            broken = True
            assert m.state is C.ERROR
            continue
        assert not broken
        assert m.state is COMMAND_TABLE[(before, event)][1]
        if before in TERMINAL_COMMAND_STATES:
            raise AssertionError("an answered command moved")


@given(
    start=st.sampled_from([s for s in ContentState if s is not S.ERROR]),
    events=st.lists(st.sampled_from(list(ContentInput)), max_size=20),
)
def test_random_content_inputs_raise_only_the_typed_error(
    start: ContentState, events: list[ContentInput]
) -> None:
    m = ContentLifecycle(start)
    broken = False
    for i, event in enumerate(events):
        before = m.state
        try:
            m.handle(event, float(i))
        except ProtocolError as exc:
            assert isinstance(exc, InvalidTransition)
            broken = True
            assert m.state is S.ERROR
            continue
        assert not broken and before is not S.STORED
        assert m.state is CONTENT_TABLE[(before, event)][1]
