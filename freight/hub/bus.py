"""How the relay delivers frames to attachments: a small bus.

The switch's adapter (:mod:`freight.hub.relay`) never holds a reference to
the attachment it delivers to; it publishes to the attachment's id and
whoever subscribed under that id (the attachment itself, in this process)
takes the frame. :class:`InProcessBus` is the implementation for one hub
process; one over NATS (subjects ``freight.att.<aid>``) can be added later
behind the same :class:`Bus` protocol without touching the services.

Delivery is synchronous and never blocks: a subscriber queues the frame
(bounded in bytes by the relay switch) and returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..protocol import messages as m

# A subscriber: takes (message, payload, connection the record counts in).
Handler = Callable[[m.Message, bytes, Any], None]


class Bus(Protocol):
    def subscribe(self, subject: str, handler: Handler) -> None:
        """Deliver frames published to ``subject`` to ``handler`` (one per
        subject: a second subscription replaces the first)."""

    def unsubscribe(self, subject: str, handler: Handler) -> None:
        """Stop delivering to ``handler`` (a no-op if it was replaced)."""

    def publish(self, subject: str, msg: m.Message, payload: bytes = b"", conn: Any = None) -> bool:
        """Deliver one frame; False if nobody subscribed to ``subject``."""


class InProcessBus:
    """Subjects to handlers in one process: a dictionary."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def __len__(self) -> int:
        return len(self._handlers)

    def subscribe(self, subject: str, handler: Handler) -> None:
        self._handlers[subject] = handler

    def unsubscribe(self, subject: str, handler: Handler) -> None:
        if self._handlers.get(subject) == handler:
            del self._handlers[subject]

    def publish(self, subject: str, msg: m.Message, payload: bytes = b"", conn: Any = None) -> bool:
        handler = self._handlers.get(subject)
        if handler is None:
            return False
        handler(msg, payload, conn)
        return True
