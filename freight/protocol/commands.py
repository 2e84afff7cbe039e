"""The lifecycle of an agent command, and of the content the collection
asks agents to upload: one transition table each, ``(state, input) ->
(actions, next state)``.

A command is queued by the hub, delivered to its agent (again after a
reconnect, at most a few times), acknowledged, and answered once: done or
failed; an admin may cancel it while it is open. Content is wanted, an
upload of it is issued to one holder, the holder's answer is claimed for
finishing once, and the content ends stored, or wanted again, or given up.

The hub's database applies the same tables as compare-and-set updates
(:func:`sources` gives the states an input may move from), so a late or
replayed frame finds the row in another state and changes nothing.
:class:`CommandLifecycle` and :class:`ContentLifecycle` are the pure
machines: anything not in the table raises :class:`InvalidTransition` and
leaves the machine in ``ERROR`` for good. Neither has timers; the time a
state was entered is passed in by the caller.

States are string enums: a state compares equal to its stored name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Generic, TypeVar

from .errors import LocalProtocolError


class InvalidTransition(LocalProtocolError):
    """A lifecycle was asked to make a move its table does not allow."""

    code = "invalid_transition"
    hint = "the command or content was in another state; read it again"


class Action(enum.Enum):
    SEND = "send"  # hand the command to its agent
    SETTLE = "settle"  # wake whoever waits for the answer, act on it
    ISSUE = "issue"  # queue an upload command for a holder
    FINISH = "finish"  # check what arrived and file it
    NONE = "none"


class CommandState(enum.StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    ACKED = "acked"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"  # the machine's only; never stored


class CommandInput(enum.Enum):
    DELIVER = "deliver"
    ACK = "ack"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"


_C = CommandState
_CI = CommandInput

OPEN_COMMAND_STATES: Final = frozenset({_C.QUEUED, _C.DELIVERED, _C.ACKED})
TERMINAL_COMMAND_STATES: Final = frozenset({_C.DONE, _C.FAILED, _C.CANCELLED})

COMMAND_TABLE: Final[Mapping[tuple[CommandState, CommandInput], tuple[Action, CommandState]]] = {
    # Handed over again after a reconnect, acknowledged or not.
    **{(s, _CI.DELIVER): (Action.SEND, _C.DELIVERED) for s in OPEN_COMMAND_STATES},
    (_C.QUEUED, _CI.ACK): (Action.NONE, _C.ACKED),
    (_C.DELIVERED, _CI.ACK): (Action.NONE, _C.ACKED),
    **{(s, _CI.SUCCEED): (Action.SETTLE, _C.DONE) for s in OPEN_COMMAND_STATES},
    **{(s, _CI.FAIL): (Action.SETTLE, _C.FAILED) for s in OPEN_COMMAND_STATES},
    **{(s, _CI.CANCEL): (Action.SETTLE, _C.CANCELLED) for s in OPEN_COMMAND_STATES},
}

# The terminal state an answer ends in, by its name.
OUTCOMES: Final[Mapping[str, CommandInput]] = {
    _C.DONE: _CI.SUCCEED,
    _C.FAILED: _CI.FAIL,
    _C.CANCELLED: _CI.CANCEL,
}


class ContentState(enum.StrEnum):
    WANTED = "wanted"
    ISSUED = "issued"
    FINISHING = "finishing"
    STORED = "stored"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ERROR = "error"  # the machine's only; never stored


class ContentInput(enum.Enum):
    ISSUE = "issue"  # an upload is asked of one holder
    REISSUE = "reissue"  # no answer in time: want it again
    CLAIM = "claim"  # the holder answered; take it for finishing, once
    STORE = "store"  # it arrived whole and checked
    RETRY = "retry"  # it did not arrive, or a finish was interrupted
    SUPERSEDE = "supersede"  # no path offers it any more
    GIVE_UP = "give_up"  # too many attempts
    REVIVE = "revive"  # offered anew after it was given up


_S = ContentState
_SI = ContentInput

CONTENT_TABLE: Final[Mapping[tuple[ContentState, ContentInput], tuple[Action, ContentState]]] = {
    (_S.WANTED, _SI.ISSUE): (Action.ISSUE, _S.ISSUED),
    (_S.WANTED, _SI.GIVE_UP): (Action.NONE, _S.FAILED),
    (_S.WANTED, _SI.SUPERSEDE): (Action.NONE, _S.SUPERSEDED),
    (_S.ISSUED, _SI.REISSUE): (Action.NONE, _S.WANTED),
    (_S.ISSUED, _SI.CLAIM): (Action.FINISH, _S.FINISHING),
    (_S.FINISHING, _SI.STORE): (Action.NONE, _S.STORED),
    (_S.FINISHING, _SI.RETRY): (Action.NONE, _S.WANTED),
    (_S.FINISHING, _SI.SUPERSEDE): (Action.NONE, _S.SUPERSEDED),
    (_S.FAILED, _SI.REVIVE): (Action.NONE, _S.WANTED),
    (_S.SUPERSEDED, _SI.REVIVE): (Action.NONE, _S.WANTED),
}


StateT = TypeVar("StateT", CommandState, ContentState)
InputT = TypeVar("InputT", CommandInput, ContentInput)


def _sources(
    table: Mapping[tuple[StateT, InputT], tuple[Action, StateT]],
) -> dict[InputT, tuple[StateT, ...]]:
    out: dict[InputT, list[StateT]] = {}
    targets: dict[InputT, StateT] = {}
    for (state, event), (_action, after) in table.items():
        # One target per input whatever the source: what a compare-and-set
        # update (``WHERE state IN sources SET state = target``) relies on.
        if targets.setdefault(event, after) is not after:
            raise ValueError(f"{event} leads to two states")
        out.setdefault(event, []).append(state)
    return {event: tuple(sorted(states)) for event, states in out.items()}


_COMMAND_SOURCES: Final = _sources(COMMAND_TABLE)
_CONTENT_SOURCES: Final = _sources(CONTENT_TABLE)


def command_sources(event: CommandInput) -> tuple[CommandState, ...]:
    """The states ``event`` may move a command from."""
    return _COMMAND_SOURCES[event]


def content_sources(event: ContentInput) -> tuple[ContentState, ...]:
    """The states ``event`` may move content from."""
    return _CONTENT_SOURCES[event]


def command_target(event: CommandInput) -> CommandState:
    """The state ``event`` moves a command to (the same from every source)."""
    return COMMAND_TABLE[(command_sources(event)[0], event)][1]


def content_target(event: ContentInput) -> ContentState:
    """The state ``event`` moves content to (the same from every source)."""
    return CONTENT_TABLE[(content_sources(event)[0], event)][1]


class _Lifecycle(Generic[StateT, InputT]):
    table: Mapping[tuple[StateT, InputT], tuple[Action, StateT]]
    error: StateT

    def __init__(self, state: StateT, entered: float = 0.0) -> None:
        self.state: StateT = state
        self.entered = entered  # when ``state`` was entered

    def handle(self, event: InputT, now: float) -> Action:
        """Apply ``event``; the action the caller now takes."""
        step = self.table.get((self.state, event))
        if step is None:
            before, self.state = self.state, self.error
            raise InvalidTransition(f"{event.value} is not allowed in state {before.value}")
        action, self.state = step
        self.entered = now
        return action

    def allows(self, event: InputT) -> bool:
        return (self.state, event) in self.table


class CommandLifecycle(_Lifecycle[CommandState, CommandInput]):
    table = COMMAND_TABLE
    error = CommandState.ERROR

    @property
    def open(self) -> bool:
        return self.state in OPEN_COMMAND_STATES


class ContentLifecycle(_Lifecycle[ContentState, ContentInput]):
    table = CONTENT_TABLE
    error = ContentState.ERROR
