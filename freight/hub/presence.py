"""Agent presence at the hub: which agent's command channel is attached,
each agent's bandwidth cap, and the events that wake whoever waits for a
command's result.

A service of its own with narrow dependencies (the live attachments and a
clock), so the relay switch knows nothing of agents or commands.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Generic, Protocol, TypeVar

from ..protocol.bucket import TokenBucket


class _User(Protocol):
    @property
    def id(self) -> int: ...


class Present(Protocol):
    """What presence needs of an attachment."""

    @property
    def user(self) -> _User: ...

    commands: bool  # it carries an agent's commands
    closed: bool


A = TypeVar("A", bound=Present)


class Presence(Generic[A]):
    def __init__(
        self,
        attachments: Collection[A],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attachments = attachments
        self._clock = clock
        self.caps: dict[int, TokenBucket] = {}  # per-agent bandwidth caps
        self._command_events: dict[int, asyncio.Event] = {}

    # --- who is attached -------------------------------------------------------

    def attachment_of(self, user_id: int) -> A | None:
        """The agent's command channel, if it is attached."""
        return next(
            (a for a in self._attachments if a.user.id == user_id and a.commands and not a.closed),
            None,
        )

    # --- bandwidth caps ----------------------------------------------------------

    def cap_between(self, dial_id: int, accept_id: int) -> TokenBucket | None:
        """The cap on a connection between these two accounts, if either end
        is a capped agent."""
        if not self.caps:
            return None
        return self.caps.get(dial_id) or self.caps.get(accept_id)

    def set_cap(self, user_id: int, cap: int) -> None:
        if cap <= 0:
            self.caps.pop(user_id, None)
        elif user_id in self.caps:
            self.caps[user_id].set_rate(cap, self._clock())
        else:
            self.caps[user_id] = TokenBucket(cap, self._clock())

    # --- command results ---------------------------------------------------------

    def command_event(self, command_id: int) -> asyncio.Event:
        """Set when command ``command_id`` gets its result; take it before
        reading the command's state, so a result in between is not missed."""
        return self._command_events.setdefault(command_id, asyncio.Event())

    def forget_command_event(self, command_id: int) -> None:
        self._command_events.pop(command_id, None)

    def command_finished(self, command_id: int) -> None:
        event = self._command_events.get(command_id)
        if event is not None:
            event.set()
