"""One-time reception tickets for data connections: short-lived, single use."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..protocol.seal import TICKET_ID_BYTES, TICKET_SECRET_BYTES

TICKET_LIFETIME = 30.0
MAX_OUTSTANDING = 10_000


@dataclass(frozen=True)
class Ticket:
    ticket_id: bytes
    secret: bytes
    user_id: int
    user_name: str
    expires: float


class TicketBook:
    def __init__(self) -> None:
        self._tickets: dict[bytes, Ticket] = {}

    def issue(self, user_id: int, user_name: str, now: float) -> Ticket:
        self._purge(now)
        if len(self._tickets) >= MAX_OUTSTANDING:
            # Bounded: the oldest unredeemed ticket goes first.
            self._tickets.pop(next(iter(self._tickets)))
        t = Ticket(
            secrets.token_bytes(TICKET_ID_BYTES),
            secrets.token_bytes(TICKET_SECRET_BYTES),
            user_id,
            user_name,
            now + TICKET_LIFETIME,
        )
        self._tickets[t.ticket_id] = t
        return t

    def redeem(self, ticket_id: bytes, now: float) -> Ticket | None:
        """The ticket, removed so it cannot be used twice; None if unknown or expired."""
        t = self._tickets.pop(ticket_id, None)
        if t is None or t.expires < now:
            return None
        return t

    def _purge(self, now: float) -> None:
        for tid in [tid for tid, t in self._tickets.items() if t.expires < now]:
            del self._tickets[tid]
