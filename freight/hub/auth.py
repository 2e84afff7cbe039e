"""Passwords (argon2id), bearer tokens and the failed-login limiter."""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_LIFETIME = 30 * 24 * 3600.0
_hasher = PasswordHasher()  # argon2id with the library's recommended parameters


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(pw_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(pw_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# A valid hash to verify against when the user does not exist, so that the
# answer takes as long for unknown users as for wrong passwords.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def new_token() -> tuple[str, str]:
    """A fresh bearer token and the hash the database keeps."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def new_enrol_token() -> tuple[str, str]:
    """An enrolment token and its hash. The prefix keeps it from starting
    with "-" (a command line would read it as an option) and says what it is."""
    token = "fe1_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class LoginLimiter:
    """After ``max_failures`` failures within ``window`` seconds for a key
    (user name or client address), refuse further tries for ``lockout``
    seconds, doubling for each further lockout. Time is passed in."""

    max_failures: int = 5
    window: float = 60.0
    lockout: float = 30.0
    max_lockout: float = 3600.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _strikes: dict[str, int] = field(default_factory=dict)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0 = now)."""
        return max(0.0, self._locked_until.get(key, 0.0) - now)

    def failed(self, key: str, now: float) -> None:
        q = self._failures.setdefault(key, deque())
        q.append(now)
        while q and q[0] < now - self.window:
            q.popleft()
        if len(q) >= self.max_failures:
            strikes = self._strikes.get(key, 0)
            self._locked_until[key] = now + min(self.max_lockout, self.lockout * 2**strikes)
            self._strikes[key] = strikes + 1
            q.clear()
        if len(self._failures) > 100_000:  # bounded: forget the oldest keys
            for old in list(self._failures)[:50_000]:
                del self._failures[old]

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._strikes.pop(key, None)
        self._locked_until.pop(key, None)
