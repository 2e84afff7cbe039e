"""A messaging host's tables: registrations and the match rule, what the host
announces, the dedupe window, and the aggregation of per-host answers.

Sans-I/O: nothing here reads a socket or a clock of its own (the dedupe
window takes one). See docs/protocol.md "Messaging" for the rules:

* A message (app A, type T, optional ticket K, from account S) goes to every
  registration with app == A, ``interest & T != 0`` and a peer filter that
  admits S (``*`` or S itself); with K, only to registration K, and only if
  its app is A, its interest matches T and its filter admits S. T == 0 never
  matches.
* When nothing matches, the reason is the highest of the registrations'
  reasons in :data:`REASON_PRIORITY` (``no_app`` when the app has none).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from .errors import FreightError

# Reasons a message reaches nobody, highest priority first (an answer
# aggregated over hosts and registrations names the highest one present).
REASON_PRIORITY: Final = (
    "busy",
    "retry",
    "ticket_gone",
    "no_interest",
    "forbidden",
    "no_app",
    "no_host",
)
# Reasons that are worth sending the message again for (after a back-off).
TRANSIENT: Final = frozenset({"busy", "retry", "not_host"})

MAX_PER_OWNER: Final = 256
MAX_PER_HOST: Final = 4096
MAX_ANNOUNCED: Final = 256  # (app, peer) pairs in a MsgHello
MAX_INTEREST: Final = 0xFFFFFFFF
MAX_COUNTER: Final = (1 << 64) - 1


class RegistrationRefused(FreightError):
    """A registration the host does not take (over a bound, or malformed)."""

    code = "registration_refused"
    exit_code = 2
    hint = "unregister some first, or use fewer applications and peers"


@dataclass(slots=True)
class Reg:
    """One registration: its ticket, app, interest, peer filter and owner
    (the local connection that made it); ``announced`` is False for the
    local-only registrations that wait for replies."""

    ticket: str
    app: str
    interest: int
    peer: str = "*"
    owner: object = None
    announced: bool = True

    def admits(self, account: str) -> bool:
        return self.peer in ("*", account)


@dataclass(frozen=True, slots=True)
class Match:
    """The registrations a message goes to, or none and why."""

    tickets: tuple[str, ...]
    reason: str = ""


def worst(reasons: Iterable[str]) -> str:
    """The highest-priority reason of ``reasons`` ("" if there is none);
    a reason outside :data:`REASON_PRIORITY` ranks below all of them."""
    best, rank = "", len(REASON_PRIORITY) + 1
    for reason in reasons:
        if not reason:
            continue
        r = REASON_PRIORITY.index(reason) if reason in REASON_PRIORITY else len(REASON_PRIORITY)
        if r < rank:
            best, rank = reason, r
    return best


def reg_reason(reg: Reg, app: str, type_: int, account: str) -> str:
    """Why ``reg`` does not take the message ("" if it does)."""
    if reg.app != app:
        return "no_app"
    if not reg.admits(account):
        return "forbidden"
    if reg.interest & type_ == 0:
        return "no_interest"
    return ""


class Registrations:
    """The registrations of one host, numbered ``<hid>.<hex counter>``
    (never renumbered), with the per-owner and per-host bounds."""

    def __init__(
        self, hid: str, *, per_owner: int = MAX_PER_OWNER, per_host: int = MAX_PER_HOST
    ) -> None:
        self.hid = hid
        self.per_owner, self.per_host = per_owner, per_host
        self._regs: dict[str, Reg] = {}
        self._by_app: dict[str, dict[str, Reg]] = {}
        self._owned: dict[int, int] = {}  # id(owner) -> count
        self._counter = 0

    def __len__(self) -> int:
        return len(self._regs)

    def __contains__(self, ticket: object) -> bool:
        return ticket in self._regs

    def get(self, ticket: str) -> Reg | None:
        return self._regs.get(ticket)

    def all(self) -> list[Reg]:
        return list(self._regs.values())

    def add(
        self,
        app: str,
        interest: int,
        *,
        peer: str = "*",
        owner: object = None,
        announced: bool = True,
    ) -> Reg:
        """A new registration, or :class:`RegistrationRefused`."""
        if not app or len(app) > 64:
            raise RegistrationRefused("an application name has 1 to 64 characters")
        if not peer or len(peer) > 64:
            raise RegistrationRefused("a peer filter is '*' or an account name")
        if not 0 < interest <= MAX_INTEREST:
            raise RegistrationRefused(
                f"an interest is a 32-bit mask other than 0, not {interest:#x}"
            )
        if self._owned.get(id(owner), 0) >= self.per_owner:
            raise RegistrationRefused(f"at most {self.per_owner} registrations per connection")
        if len(self._regs) >= self.per_host:
            raise RegistrationRefused(f"at most {self.per_host} registrations per host")
        keys = self.announce_keys() if announced else set()
        if announced and (app, peer) not in keys and len(keys) >= MAX_ANNOUNCED:
            raise RegistrationRefused(f"at most {MAX_ANNOUNCED} (application, peer) pairs per host")
        if self._counter >= MAX_COUNTER:
            raise RegistrationRefused("this host has used up its ticket numbers; restart it")
        self._counter += 1
        reg = Reg(f"{self.hid}.{self._counter:x}", app, interest, peer, owner, announced)
        self._regs[reg.ticket] = reg
        self._by_app.setdefault(app, {})[reg.ticket] = reg
        self._owned[id(owner)] = self._owned.get(id(owner), 0) + 1
        return reg

    def remove(self, ticket: str) -> Reg | None:
        reg = self._regs.pop(ticket, None)
        if reg is None:
            return None
        of_app = self._by_app[reg.app]
        del of_app[ticket]
        if not of_app:
            del self._by_app[reg.app]
        left = self._owned[id(reg.owner)] - 1
        if left:
            self._owned[id(reg.owner)] = left
        else:
            del self._owned[id(reg.owner)]
        return reg

    def drop_owner(self, owner: object) -> list[Reg]:
        """Remove every registration ``owner`` made; returns them."""
        gone = [r for r in self._regs.values() if r.owner is owner]
        for reg in gone:
            self.remove(reg.ticket)
        return gone

    def match(self, app: str, type_: int, account: str, ticket: str = "") -> Match:
        """The registrations a message goes to (the rule in the module doc)."""
        if ticket:
            reg = self._regs.get(ticket)
            if reg is None or reg.app != app:
                return Match((), "ticket_gone")
            reason = reg_reason(reg, app, type_, account)
            return Match((), reason) if reason else Match((ticket,))
        regs = self._by_app.get(app)
        if not regs:
            return Match((), "no_app")
        hits: list[str] = []
        reasons: list[str] = []
        for reg in regs.values():
            reason = reg_reason(reg, app, type_, account)
            if reason:
                reasons.append(reason)
            else:
                hits.append(reg.ticket)
        if hits:
            return Match(tuple(hits))
        return Match((), worst(reasons))

    def announce_keys(self) -> set[tuple[str, str]]:
        return {(r.app, r.peer) for r in self._regs.values() if r.announced}

    def announce(self) -> list[tuple[str, int, str]]:
        """(app, union of interests, peer) per announced (app, peer) pair,
        sorted; at most :data:`MAX_ANNOUNCED` (``add`` keeps it so)."""
        union: dict[tuple[str, str], int] = {}
        for reg in self._regs.values():
            if reg.announced:
                key = (reg.app, reg.peer)
                union[key] = union.get(key, 0) | reg.interest
        return sorted((app, interest, peer) for (app, peer), interest in union.items())


# --- dedupe ---------------------------------------------------------------------

DEDUPE_SECONDS: Final = 600.0
DEDUPE_IDS: Final = 100_000
DEDUPE_CAP: Final = 1_000_000


@dataclass(slots=True)
class Seen:
    """A message id this host has taken: still being taken (``answered``
    False) or answered with ``count`` recipients (and ``reason`` when 0)."""

    at: float
    answered: bool = False
    count: int = 0
    reason: str = ""


class Dedupe:
    """The ids this host has seen, kept at least ``seconds`` or the last
    ``ids`` of them (whichever keeps more), never more than ``cap``."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        seconds: float = DEDUPE_SECONDS,
        ids: int = DEDUPE_IDS,
        cap: int = DEDUPE_CAP,
    ) -> None:
        self._clock = clock
        self.seconds, self.ids, self.cap = seconds, ids, max(cap, ids)
        self._seen: OrderedDict[str, Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, mid: str) -> Seen | None:
        return self._seen.get(mid)

    def begin(self, mid: str) -> Seen:
        """Record ``mid`` as being taken (it must not be known)."""
        seen = self._seen[mid] = Seen(self._clock())
        self._trim()
        return seen

    def answer(self, mid: str, count: int, reason: str = "") -> None:
        """``mid`` is answered: its duplicates get the same answer."""
        seen = self._seen.get(mid)
        if seen is None:
            seen = self._seen[mid] = Seen(self._clock())
            self._trim()
        seen.answered, seen.count, seen.reason = True, count, reason

    def forget(self, mid: str) -> None:
        """Drop ``mid`` (answered ``busy``/``retry``: it is to come again)."""
        self._seen.pop(mid, None)

    def load(self, mid: str, at: float, count: int, reason: str) -> None:
        """An answered id remembered from before (``at``: this clock's time)."""
        self._seen[mid] = Seen(at, True, count, reason)
        self._seen.move_to_end(mid)
        self._trim()

    def _trim(self) -> None:
        now = self._clock()
        seen = self._seen
        while len(seen) > self.cap or (
            len(seen) > self.ids and now - next(iter(seen.values())).at > self.seconds
        ):
            seen.popitem(last=False)


# --- aggregation -------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """The answers of the hosts a message went to. A host answering a
    transient reason (busy, retry) is to be sent to again; the message is
    complete when every host has a final answer."""

    hosts: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    route_reason: str = ""  # why the route named no host
    sent: set[str] = field(default_factory=set)  # hosts sent to at least once

    def expect(self, hids: Iterable[str]) -> list[str]:
        """Add the hosts of a (new) route; returns the ones to send to now:
        each without a final answer."""
        todo = []
        for hid in hids:
            got = self.hosts.get(hid)
            if got is None or got[1] in TRANSIENT:
                self.hosts[hid] = None
                todo.append(hid)
        return todo

    def record(self, hid: str, count: int, reason: str) -> bool:
        """One host's answer (ignored for a host not sent to, or one that
        already answered finally); True if it was taken."""
        if hid not in self.hosts:
            return False
        got = self.hosts[hid]
        if got is not None and got[1] not in TRANSIENT:
            return False
        self.hosts[hid] = (count, "" if count else (reason or "no_app"))
        return True

    @property
    def waiting(self) -> list[str]:
        return [hid for hid, got in self.hosts.items() if got is None]

    @property
    def transient(self) -> list[str]:
        return [hid for hid, got in self.hosts.items() if got is not None and got[1] in TRANSIENT]

    @property
    def complete(self) -> bool:
        """Every host answered and none of them is to be tried again."""
        return all(got is not None and got[1] not in TRANSIENT for got in self.hosts.values())

    def result(self) -> tuple[int, str]:
        """(count, reason) over what is known: the sum of the counts, and
        when it is 0 the highest-priority reason."""
        count = sum(got[0] for got in self.hosts.values() if got is not None)
        if count:
            return count, ""
        reasons = [got[1] for got in self.hosts.values() if got is not None]
        if self.route_reason:
            reasons.append(self.route_reason)
        if any(got is None for got in self.hosts.values()):
            reasons.append("timeout")
        return 0, worst(reasons) or ("no_host" if not self.hosts else "timeout")


def aggregate(answers: Iterable[tuple[int, str]]) -> tuple[int, str]:
    """One answer from the per-host answers: the sum of the counts, or
    (0, the highest-priority reason)."""
    total, reasons = 0, []
    for count, reason in answers:
        total += count
        reasons.append(reason)
    return (total, "") if total else (0, worst(reasons) or "no_host")
