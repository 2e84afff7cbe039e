"""Passwords (argon2id) and bearer tokens. Failed-login limits live in
:mod:`.limiter`."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import RateLimited

TOKEN_LIFETIME = 30 * 24 * 3600.0
# argon2 runs in its own small pool, not the default executor where the
# transfers' fsync and hashing run: a burst of logins (~0.1 s of CPU each)
# must not stall a transfer. Checks beyond the pool wait, up to a bound.
ARGON2_THREADS = 2
ARGON2_WAITING = 32

T = TypeVar("T")
_hasher = PasswordHasher()  # argon2id with the library's recommended parameters


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(pw_hash: str | None, password: str) -> bool:
    """``pw_hash`` None: an account that does not exist (checked against a
    dummy hash all the same, so it takes as long, and fails)."""
    if pw_hash is None:
        verify_password(dummy_hash(), password)
        return False
    try:
        return _hasher.verify(pw_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def dummy_hash() -> str:
    """A valid hash to verify against when the user does not exist, so that
    the answer takes as long for unknown users as for wrong passwords. Made
    at the first need (in the argon2 pool), not at import: every hub start
    would pay an argon2 hash for it."""
    return hash_password(secrets.token_urlsafe(16))


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


class PasswordWork:
    """argon2 hashing and verification off the event loop, bounded."""

    def __init__(self, threads: int = ARGON2_THREADS, waiting: int = ARGON2_WAITING) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="argon2")
        self._limit = threads + waiting
        self._busy = 0  # submitted and not finished, whoever still awaits them

    def _submit(self, fn: Callable[..., T], *args: str | None) -> asyncio.Future[T]:
        if self._busy >= self._limit:
            raise RateLimited("the hub is busy checking passwords; try again", retry_after=1.0)
        self._busy += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        future.add_done_callback(self._done)  # also when the caller went away
        return future

    def _done(self, _: object) -> None:
        self._busy -= 1

    async def verify(self, pw_hash: str | None, password: str) -> bool:
        return await self._submit(verify_password, pw_hash, password)

    async def hash(self, password: str) -> str:
        return await self._submit(hash_password, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
