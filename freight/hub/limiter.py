"""Limits on failed logins, enrolments and agent challenges.

Failures are counted per *key*, a tuple whose first item names its key
space, so a user called ``10.0.0.7`` never shares an entry with the address
10.0.0.7, nor an agent with a user of the same name. Every check counts two
keys: the account name together with the client address (a lockout aimed at
``admin`` from one machine leaves ``admin`` usable from every other) and the
address alone, with a higher allowance (one machine trying name after name).
IPv6 clients count by their /64, which one subscriber usually holds whole.

An attempt is counted *before* the check it guards (and taken back if it
succeeds), and a password check allows one attempt in flight per account:
requests racing each other cannot all pass the limit before the first
failure is recorded. Every table here is bounded and forgets idle entries;
time is passed in. The nodes of a cluster with a bus tell each other every
failure they count (:meth:`LoginGuard.heard`), so guesses spread over the
nodes meet the same limits as guesses aimed at one.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import RateLimited

Key = tuple[str, ...]

MAX_KEYS = 100_000  # entries kept; the least recently failed go first
MAX_CHECKING = 10_000  # accounts with a password check in flight
MAX_TOLD = 4  # keys taken from one notice of another node
MAX_KEY_CHARS = 256  # characters of one part of a key told by another node


@dataclass(frozen=True)
class Rule:
    """``failures`` within ``window`` seconds lock a key for ``lockout``
    seconds, doubling with each further lockout up to ``max_lockout``."""

    failures: int
    window: float = 60.0
    lockout: float = 30.0
    max_lockout: float = 3600.0


@dataclass
class _Entry:
    rule: Rule
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    strikes: int = 0
    touched: float = 0.0
    pending: int = 0  # attempts held (counted in ``times``) whose check runs

    def idle(self, now: float) -> bool:
        """Nothing left to remember: not locked, and quiet long enough that
        its strikes are forgiven too."""
        quiet = max(self.rule.window, self.rule.max_lockout)
        return self.locked_until <= now and now - self.touched > quiet


class Limiter:
    """Failure counts and lockouts per key."""

    def __init__(self, capacity: int = MAX_KEYS) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def counted(self, key: Key) -> bool:
        """Whether ``key`` holds failures (or strikes), beyond the attempts
        whose check is under way."""
        entry = self._entries.get(key)
        return entry is not None and (len(entry.times) > entry.pending or entry.strikes > 0)

    def retry_after(self, key: Key, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        entry = self._entries.get(key)
        return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def fail(self, key: Key, rule: Rule, now: float) -> None:
        """Count a failure."""
        entry = self._touch(key, rule, now)
        entry.times.append(now)
        self._lock_if_due(entry, rule, now)

    def hold(self, key: Key, rule: Rule, now: float) -> bool:
        """Count an attempt whose check is about to run, unless the failures
        in the window and the checks under way already fill the rule (then
        False: the caller waits its turn; nothing is locked)."""
        entry = self._touch(key, rule, now)
        if len(entry.times) >= rule.failures:
            return False
        entry.times.append(now)
        entry.pending += 1
        return True

    def settle(self, key: Key, rule: Rule, stamp: float, *, failed: bool) -> None:
        """The check of an attempt held at ``stamp`` ended: a failure stays
        counted (and may lock the key, from ``stamp`` on), anything else is
        taken back."""
        entry = self._entries.get(key)
        if entry is None:
            return  # cleared meanwhile (a success of the account)
        entry.pending = max(0, entry.pending - 1)
        if failed:
            self._lock_if_due(entry, rule, stamp)
        elif stamp in entry.times:
            entry.times.remove(stamp)

    def _touch(self, key: Key, rule: Rule, now: float) -> _Entry:
        self._expire(now)
        entry = self._entries.pop(key, None) or _Entry(rule)
        self._entries[key] = entry  # most recently failed last
        entry.touched = now
        while entry.times and entry.times[0] < now - rule.window:
            entry.times.popleft()
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return entry

    @staticmethod
    def _lock_if_due(entry: _Entry, rule: Rule, now: float) -> None:
        """Lock once the failures known (not the checks under way) fill the rule."""
        if len(entry.times) - entry.pending >= rule.failures:
            entry.locked_until = now + min(rule.max_lockout, rule.lockout * 2**entry.strikes)
            entry.strikes += 1
            entry.times.clear()
            entry.pending = 0

    def clear(self, key: Key) -> None:
        self._entries.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if not oldest.idle(now):
                return
            self._entries.popitem(last=False)


def address_key(remote: str | None) -> str:
    """The client address as the limits count it."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# The rules per key space. An address gets more room than a name at an
# address: many people and agents may share one NAT address.
USER = Rule(5)
USER_ADDRESS = Rule(20)
AGENT = Rule(5)
AGENT_ADDRESS = Rule(50)
ENROL_ADDRESS = Rule(5)
LINK_ADDRESS = Rule(20)  # unknown link tokens: guesses
REGISTER_ADDRESS = Rule(10)  # self-registrations, each counted (POST /v1/register)


class Attempt:
    """One counted attempt; call :meth:`succeeded` if the check passed."""

    def __init__(self, guard: LoginGuard, keys: list[Key], now: float) -> None:
        self.guard = guard
        self.keys = keys
        self.now = now
        self.ok = False

    def succeeded(self) -> None:
        """A passed check: its account key starts afresh, and the attempt
        no longer counts against the address (taken back as it ends)."""
        self.ok = True
        limiter = self.guard.limiter
        accounts = [key for key in self.keys if not key[0].endswith("-address")]
        # Told only when there was a count to clear: the other nodes hold
        # the same counts (each failure is told), and logins are many.
        cleared = [key for key in accounts if limiter.counted(key)]
        for key in accounts:
            limiter.clear(key)
        if cleared:
            self.guard._tell("cleared", cleared)


def _attempts(space: str) -> str:
    return {
        "enrol": "enrolments",
        "link": "link tokens",
        "register": "registrations",
        "agent": "agent logins",
    }.get(space, "logins")


class LoginGuard:
    """What every password check, agent login and enrolment goes through."""

    def __init__(self, lockout: float = 30.0) -> None:
        self.limiter = Limiter()
        self.rules = {
            name: Rule(r.failures, r.window, lockout, r.max_lockout)
            for name, r in (
                ("user", USER),
                ("user-address", USER_ADDRESS),
                ("agent", AGENT),
                ("agent-address", AGENT_ADDRESS),
                ("enrol-address", ENROL_ADDRESS),
                ("link-address", LINK_ADDRESS),
                ("register-address", REGISTER_ADDRESS),
            )
        }
        self._checking: set[Key] = set()
        # Set on a cluster's node: tells the other nodes each failure counted
        # here ("failed") and each account key a success cleared ("cleared").
        self.told: Callable[[str, list[Key]], None] | None = None

    def keys(self, space: str, name: str, address: str) -> list[Key]:
        """The account-at-address key first, then the address key."""
        if not name:
            return [(space + "-address", address)]
        return [(space, name, address), (space + "-address", address)]

    def check(self, keys: list[Key], now: float) -> None:
        """Refuse while any of ``keys`` is locked out."""
        wait = max(self.limiter.retry_after(key, now) for key in keys)
        if wait > 0:
            space = keys[0][0].split("-")[0]
            what = {
                "enrol": "failed enrolments",
                "link": "failed link tokens",
                "register": "registrations from this address",
            }.get(space, "failed logins")
            raise RateLimited(f"too many {what}; try again in {int(wait) + 1} s", retry_after=wait)

    @contextmanager
    def attempt(
        self, space: str, name: str, address: str, now: float, *, exclusive: bool = False
    ) -> Iterator[Attempt]:
        """Check, then count an attempt before the caller checks the
        credentials. ``exclusive``: one attempt in flight per account, the
        others are refused at once (they would all have passed the check)."""
        keys = self.keys(space, name, address)
        self.check(keys, now)
        account = (space, name)
        if exclusive:
            if account in self._checking:
                raise RateLimited(
                    f"another login for {name!r} is being checked; try again in a second",
                    retry_after=1.0,
                )
            if len(self._checking) >= MAX_CHECKING:
                raise RateLimited("the hub is busy checking logins; try again", retry_after=1.0)
            self._checking.add(account)
        held: list[Key] = []
        attempt = Attempt(self, keys, now)
        busy = False
        try:
            for key in keys:
                if not self.limiter.hold(key, self.rules[key[0]], now):
                    busy = True
                    raise RateLimited(
                        f"too many {_attempts(space)} under way from this address; "
                        "try again in a second",
                        retry_after=1.0,
                    )
                held.append(key)
            try:
                yield attempt
            except RateLimited:  # the check itself could not run (the hub is busy)
                busy = True
                raise
        finally:
            failed = not attempt.ok and not busy
            for key in held:
                self.limiter.settle(key, self.rules[key[0]], now, failed=failed)
            if failed and held:
                self._tell("failed", held)
            if exclusive:
                self._checking.discard(account)

    def failed(self, space: str, name: str, address: str, now: float) -> None:
        """Count a failure that needed no check (an unknown enrolment token)."""
        keys = self.keys(space, name, address)
        for key in keys:
            self.limiter.fail(key, self.rules[key[0]], now)
        self._tell("failed", keys)

    def _tell(self, kind: str, keys: list[Key]) -> None:
        if self.told is not None:
            self.told(kind, keys)

    def heard(self, body: object, now: float) -> None:
        """What another node of the cluster told (its notice is signed with
        the cluster's secret): failures it counted, account keys a success
        cleared. Only well-formed keys of known spaces are taken, so a guess
        counts against the same limits whichever node it reached."""
        if not isinstance(body, dict):
            return
        for kind in ("failed", "cleared"):
            keys = body.get(kind)
            for key in keys[:MAX_TOLD] if isinstance(keys, list) else ():
                if not self._well_formed(key):
                    continue
                if kind == "failed":
                    self.limiter.fail(tuple(key), self.rules[key[0]], now)
                elif not key[0].endswith("-address"):
                    self.limiter.clear(tuple(key))

    def _well_formed(self, key: object) -> bool:
        """A key another node told: a known space, then one or two bounded
        strings."""
        return (
            isinstance(key, list)
            and 2 <= len(key) <= 3
            and all(isinstance(k, str) and len(k) <= MAX_KEY_CHARS for k in key)
            and key[0] in self.rules
        )
