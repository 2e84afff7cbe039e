"""Live logins: every channel a login holds open (control WebSocket, HTTP
attachment, data connection), so that ending the login ends them.

A login ends when its account is disabled or removed, when the password
changes (every login but the one that changed it), when it is logged out,
when its identity key is removed, and when it expires: then each channel it
holds is closed at once, not at its next request. Streams and tickets check
the login again in the database as well (:meth:`LiveSessions.verify`), which
also covers a change made through another hub sharing the database (seen
within ``VERIFIED_FOR`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import NotLoggedIn
from .observe import EventLog
from .streams import User

CLOSE_TIMEOUT = 5.0  # per channel; a peer that never answers a close is dropped
IDLE_CHECK = 3600.0  # the expiry task's sleep when no login is live
# A database check of a login is reused this long: a change made here ends
# the login at once anyway; one made through another hub is seen this late.
VERIFIED_FOR = 2.0
MAX_VERIFIED = 100_000


class LiveSessions:
    def __init__(self, db: Any, events: EventLog) -> None:
        self.db = db
        self.events = events
        self._chans: dict[str, set[Any]] = {}  # token hash -> its live channels
        self._users: dict[str, tuple[int, str]] = {}  # token hash -> (user id, name)
        self._expires: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._verified: dict[str, tuple[float, float]] = {}  # token -> (checked, expires)

    async def verify(self, user: User) -> float:
        """Check in the database that ``user``'s login is still good; its
        expiry. NotLoggedIn if it was revoked, expired or disabled. An
        answer is reused for ``VERIFIED_FOR`` seconds (a push of many small
        files starts a stream for each); ending a login here forgets it."""
        now = time.monotonic()
        seen = self._verified.get(user.token)
        if seen is not None and now - seen[0] < VERIFIED_FOR and seen[1] > time.time():
            return seen[1]
        row = await self.db.login_by_token(user.token, time.time())
        if row is None or int(row.id) != user.id:
            raise NotLoggedIn("this login was revoked or has expired; log in again")
        if row.disabled:
            raise NotLoggedIn(f"account {user.name!r} is disabled; ask an admin to enable it")
        expires = float(row.token_expires)
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[user.token] = (now, expires)
        return expires

    @contextlib.contextmanager
    def track(self, user: User, chan: Any, expires: float) -> Iterator[None]:
        """Hold ``chan`` as one of ``user``'s login's channels while inside."""
        token = user.token
        self._chans.setdefault(token, set()).add(chan)
        self._users[token] = (user.id, user.name)
        if token not in self._expires or expires < self._expires[token]:
            self._expires[token] = expires
            self._changed.set()
        try:
            yield
        finally:
            chans = self._chans.get(token)
            if chans is not None:
                chans.discard(chan)
                if not chans:
                    self._forget(token)

    def live(self, user_id: int) -> int:
        """How many channels the account holds open."""
        return sum(
            len(self._chans.get(token, ()))
            for token, (uid, _) in self._users.items()
            if uid == user_id
        )

    async def end_user(self, user_id: int, reason: str, *, keep: str = "") -> int:
        """Close every channel of the account's logins but ``keep``'s."""
        tokens = [tok for tok, (uid, _) in self._users.items() if uid == user_id and tok != keep]
        # Logins holding no channel may have been verified lately too.
        self._verified = {t: v for t, v in self._verified.items() if t == keep}
        return await self.end_tokens(tokens, reason)

    async def end_tokens(self, tokens: Iterable[str], reason: str) -> int:
        """Close every channel of these logins; how many were closed."""
        chans: list[Any] = []
        names: dict[str, int] = {}
        for token in list(tokens):
            self._verified.pop(token, None)
            held = self._chans.get(token)
            if not held:
                continue
            chans.extend(held)
            name = self._users[token][1]
            names[name] = names.get(name, 0) + len(held)
            self._forget(token)
        await asyncio.gather(*(self._close(chan) for chan in chans))
        for name, count in names.items():
            await self.events.emit("sessions_closed", name, reason=reason, channels=count)
        return len(chans)

    def _forget(self, token: str) -> None:
        self._chans.pop(token, None)
        self._users.pop(token, None)
        self._expires.pop(token, None)

    @staticmethod
    async def _close(chan: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(chan.aclose(), CLOSE_TIMEOUT)

    async def run(self) -> None:
        """Close the channels of each login when it expires."""
        while True:
            now = time.time()
            due = [token for token, at in self._expires.items() if at <= now]
            if due:
                await self.end_tokens(due, "expired")
                continue
            wait = min(self._expires.values(), default=now + IDLE_CHECK) - now
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, wait))
