"""The control-channel dispatcher: a registry of message handlers.

Each service registers the messages it answers (the relay its requests and
records, the command queue an agent's acknowledgements and results, the
ticket desk ticket requests) and hooks to run when an agent's command
channel attaches. A channel's serving loop hands every control message to
:meth:`Dispatcher.dispatch`; a message no service registered for this kind
of channel raises :class:`~freight.protocol.errors.ProtocolError`, which the
loop answers with an ``Error`` frame carrying its code (``protocol_error``)
before closing.

A leaf: it knows messages and errors, not the services. A lookup is one
dict access per message (relayed records come through here).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import messages as m
from ..protocol.errors import FreightError, ProtocolError
from .streams import User


class Scope(enum.IntEnum):
    """Which channels a handler serves, widest last: a data connection
    carries streams only; an attached control channel also the relay and
    tickets; an agent's own attachment also its commands."""

    DATA = 0
    CONTROL = 1
    AGENT = 2


@dataclass(slots=True)
class Link:
    """One channel being served, as the handlers see it."""

    user: User
    chan: Any  # transport.channel.FrameChannel
    att: Any = None  # the relay's attachment (None on a data connection)
    scope: Scope = Scope.DATA
    closing: bool = field(default=False)  # set by a handler: stop serving


Handler = Callable[[Link, Any, bytes], Awaitable[None]]
AttachHook = Callable[[Link, str], Awaitable[None]]


class Dispatcher:
    def __init__(self) -> None:
        self._handlers: dict[type[m.Message], tuple[Handler, int]] = {}
        self._on_agent: list[AttachHook] = []

    def register(self, kind: type[m.Message], handler: Handler, scope: Scope) -> None:
        """Answer messages of type ``kind`` on channels of ``scope`` or wider."""
        if kind in self._handlers:
            raise ValueError(f"{kind.__name__} has a handler already")
        self._handlers[kind] = (handler, int(scope))  # a plain int compares quicker

    def registered(self) -> dict[type[m.Message], Scope]:
        return {kind: Scope(scope) for kind, (_, scope) in self._handlers.items()}

    def on_agent_attached(self, hook: AttachHook) -> None:
        """Run ``hook(link, client_version)`` when an agent's command channel
        attaches, in the order registered."""
        self._on_agent.append(hook)

    async def agent_attached(self, link: Link, version: str) -> None:
        for hook in self._on_agent:
            await hook(link, version)

    def route(self, link: Link, msg: m.Message) -> Handler:
        """The handler for ``msg`` on ``link``; ProtocolError when no service
        takes it on this kind of channel. (The serving loop awaits the handler
        itself: one call less per relayed record than :meth:`dispatch`.)"""
        entry = self._handlers.get(type(msg))
        if entry is None or entry[1] > link.scope:
            where = "data connection" if link.scope == Scope.DATA else "control channel"
            raise ProtocolError(f"unexpected {type(msg).__name__} on a {where}")
        return entry[0]

    async def dispatch(self, link: Link, msg: m.Message, payload: bytes) -> None:
        """Hand ``msg`` to its service; ProtocolError when none takes it here."""
        await self.route(link, msg)(link, msg, payload)


def error_answer(exc: FreightError) -> m.Error:
    """The Error frame telling a peer why its channel closes (a stable code)."""
    return m.Error(code=exc.code, message=exc.message[:4000])
