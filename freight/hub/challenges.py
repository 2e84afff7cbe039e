"""Outstanding agent-login challenges, bounded so that no one client can
crowd out everyone else's.

Each name at an address holds at most a few challenges (asking again
replaces its own oldest), each address at most ``MAX_PER_ADDRESS`` (beyond
that it is told to retry later; other addresses are unaffected), and the
whole table at most ``MAX_CHALLENGES``. A challenge lives ``CHALLENGE_TTL``
seconds and is used once. Time is passed in.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..errors import RateLimited

CHALLENGE_TTL = 60.0
MAX_PER_NAME = 4  # per name and address
MAX_PER_ADDRESS = 1024
MAX_CHALLENGES = 100_000


@dataclass(frozen=True)
class _Issued:
    name: str
    address: str
    expires: float


class ChallengeBook:
    def __init__(self) -> None:
        self._issued: OrderedDict[str, _Issued] = OrderedDict()  # oldest first
        self._per_name: dict[tuple[str, str], deque[str]] = {}
        self._per_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, name: str, address: str, now: float) -> str:
        """A fresh challenge for ``name`` asked from ``address``."""
        self._expire(now)
        mine = self._per_name.get((name, address))
        if mine is not None and len(mine) >= MAX_PER_NAME:
            self._drop(mine[0])
        elif self._per_address.get(address, 0) >= MAX_PER_ADDRESS:
            raise RateLimited(
                "too many agent logins under way from this address; try again shortly",
                retry_after=5.0,
            )
        elif len(self._issued) >= MAX_CHALLENGES:
            raise RateLimited("too many agent logins under way; try again shortly", retry_after=5.0)
        nonce = secrets.token_hex(32)
        self._issued[nonce] = _Issued(name, address, now + CHALLENGE_TTL)
        self._per_name.setdefault((name, address), deque()).append(nonce)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return nonce

    def take(self, nonce: str, name: str, now: float) -> bool:
        """Use a challenge: True if it was issued for ``name`` and is live."""
        issued = self._issued.get(nonce)
        if issued is None:
            return False
        self._drop(nonce)
        return issued.name == name and issued.expires >= now

    def _expire(self, now: float) -> None:
        while self._issued:
            nonce, issued = next(iter(self._issued.items()))
            if issued.expires >= now:
                return
            self._drop(nonce)

    def _drop(self, nonce: str) -> None:
        issued = self._issued.pop(nonce)
        pair = (issued.name, issued.address)
        mine = self._per_name[pair]
        mine.remove(nonce)
        if not mine:
            del self._per_name[pair]
        left = self._per_address[issued.address] - 1
        if left:
            self._per_address[issued.address] = left
        else:
            del self._per_address[issued.address]
