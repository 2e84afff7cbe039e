"""Per-account caps on what one account holds open at the hub at once:
connections (control channels over WebSocket or HTTP, and data
connections) and streams. A refusal is a :class:`LimitReached` with a
one-line reason; the counts live in memory, like the connections.

And one cap of the node's own: :class:`AttachPace`, the control channels
it takes a second."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import LimitReached, RateLimited
from ..protocol.bucket import TokenBucket

if TYPE_CHECKING:
    from .streams import User

DEFAULT_CONNECTIONS = 128
DEFAULT_STREAMS = 128
DEFAULT_ATTACH_RATE = 200  # control channels a node takes a second


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


class AttachPace:
    """A bound on the control channels (clients and agents attaching) this
    node takes a second. When a node of a cluster dies or is drained, its
    clients come back to the others spread over seconds instead of in one
    stampede: those over the bound are answered 429 with a Retry-After and
    try again after it, with jitter of their own. A token bucket: ``rate``
    a second, as many (at least one) in one burst; 0 takes every one. Time
    is passed in."""

    RETRY_AFTER = 1.0  # seconds a refused client is told to wait (the header says 2)
    UNIT = 1000  # tokens per attachment: the integer bucket then takes rates below one

    def __init__(
        self, rate: float = DEFAULT_ATTACH_RATE, metrics: Any = None, now: float = 0.0
    ) -> None:
        burst = round(max(1.0, rate) * self.UNIT)
        self.bucket = TokenBucket(round(rate * self.UNIT), now, burst=burst, full=True)
        self.metrics = metrics

    def take(self, now: float) -> None:
        """Count one attachment, or raise RateLimited when the bound is full."""
        if self.bucket.take(self.UNIT, now):
            return
        if self.metrics is not None:
            self.metrics.refused.labels("attach_rate").inc()
        raise RateLimited(
            "this hub node is taking as many new attachments a second as it allows; "
            "try again in a moment",
            retry_after=self.RETRY_AFTER,
        )
