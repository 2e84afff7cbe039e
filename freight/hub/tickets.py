"""One-time reception tickets for data connections: short-lived, single use."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..protocol.seal import TICKET_ID_BYTES, TICKET_SECRET_BYTES

TICKET_LIFETIME = 30.0
# Per user: a user asking for tickets in a loop only evicts their own.
MAX_OUTSTANDING_PER_USER = 64


@dataclass(frozen=True)
class Ticket:
    ticket_id: bytes
    secret: bytes
    user_id: int
    user_name: str
    expires: float
    lane_of: Any = None  # the attachment this data connection serves as lane
    session: str = ""  # the login it was issued to (its token's hash)


class TicketBook:
    def __init__(self) -> None:
        self._tickets: dict[bytes, Ticket] = {}
        self._by_user: dict[int, list[bytes]] = {}

    def issue(
        self, user_id: int, user_name: str, now: float, lane_of: Any = None, session: str = ""
    ) -> Ticket:
        self._purge(now)
        mine = self._by_user.setdefault(user_id, [])
        while len(mine) >= MAX_OUTSTANDING_PER_USER:
            self._tickets.pop(mine.pop(0), None)
        t = Ticket(
            secrets.token_bytes(TICKET_ID_BYTES),
            secrets.token_bytes(TICKET_SECRET_BYTES),
            user_id,
            user_name,
            now + TICKET_LIFETIME,
            lane_of,
            session,
        )
        self._tickets[t.ticket_id] = t
        mine.append(t.ticket_id)
        return t

    def redeem(self, ticket_id: bytes, now: float) -> Ticket | None:
        """The ticket, removed so it cannot be used twice; None if unknown or expired."""
        t = self._tickets.pop(ticket_id, None)
        if t is None:
            return None
        self._by_user[t.user_id].remove(ticket_id)
        return t if t.expires >= now else None

    def outstanding(self, user_id: int) -> int:
        return len(self._by_user.get(user_id, ()))

    def _purge(self, now: float) -> None:
        for tid in [tid for tid, t in self._tickets.items() if t.expires < now]:
            t = self._tickets.pop(tid)
            self._by_user[t.user_id].remove(tid)
