"""Per-account caps on what one account holds open at the hub at once:
connections (control channels over WebSocket or HTTP, and data
connections) and streams. A refusal is a :class:`LimitReached` with a
one-line reason; the counts live in memory, like the connections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import LimitReached

if TYPE_CHECKING:
    from .streams import User

DEFAULT_CONNECTIONS = 128
DEFAULT_STREAMS = 128


class AccountCaps:
    def __init__(
        self,
        connections: int = DEFAULT_CONNECTIONS,
        streams: int = DEFAULT_STREAMS,
        metrics: Any = None,
    ) -> None:
        self.limits = {"connections": connections, "streams": streams}
        self.metrics = metrics
        self.held: dict[tuple[str, int], int] = {}

    def count(self, kind: str, user_id: int) -> int:
        return self.held.get((kind, user_id), 0)

    @contextmanager
    def _hold(self, kind: str, user: User) -> Iterator[None]:
        key = (kind, user.id)
        limit = self.limits[kind]
        if self.held.get(key, 0) >= limit:
            if self.metrics is not None:
                self.metrics.refused.labels(f"account_{kind}").inc()
            raise LimitReached(
                f"{user.name} already has {limit} {kind} open at the hub, the most an "
                "account may have"
            )
        self.held[key] = self.held.get(key, 0) + 1
        try:
            yield
        finally:
            left = self.held[key] - 1
            if left:
                self.held[key] = left
            else:
                del self.held[key]

    def connection(self, user: User) -> Any:
        """Hold one connection of ``user`` for the ``with`` block."""
        return self._hold("connections", user)

    def stream(self, user: User) -> Any:
        """Hold one stream of ``user`` for the ``with`` block."""
        return self._hold("streams", user)
