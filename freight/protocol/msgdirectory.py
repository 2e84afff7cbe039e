"""The hub's messaging directory: which hosts are attached, what they
registered, where a message may go, and what is in flight (sans-I/O).

A **host** is one attachment that announced itself with ``MsgHello``: its
host id, account, key, the signature binding the key to the account, and the
union of its registrations per (app, peer). The adapter
(:mod:`freight.hub.messaging`) checks the signature and the identity key
before calling :meth:`Directory.hello`; the attachment is an opaque
``handle`` here.

:meth:`Directory.resolve` answers ``MsgResolve``: for an account or ``*``
the hosts whose registrations take the app with ``union & type != 0`` and a
peer filter admitting the sender's account; for ``host:<hid>`` that host
alone, unfiltered. An empty answer carries the reason of highest priority
(:data:`PRIORITY`); during the hub's warm-up an empty answer for an account
or a host is ``retry`` (its hosts may not have re-attached yet).

The in-flight table holds one entry per (message id, receiving host) from
``MsgSend`` to the receiver's ``MsgResult``, bounded per receiving and per
sending host (:data:`MAX_INFLIGHT` messages, :data:`MAX_INFLIGHT_BYTES`
payload bytes): beyond either a send is refused ``busy`` at once, so the
hub never buffers more. When a host goes, what was in flight to it is
answered ``retry`` to the senders and what it sent is forgotten (its spool
sends it again).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from . import messages as m
from .limits import MAX_HEADER_BYTES

MAX_MESSAGE_BODY: Final = 1024 * 1024  # an application's message body
SEAL_OVERHEAD: Final = 28  # nonce and tag of the end-to-end seal
MAX_SEALED: Final = MAX_MESSAGE_BODY + SEAL_OVERHEAD  # a MsgSend payload
MAX_INFLIGHT: Final = 4096  # messages in flight per host, each way
MAX_INFLIGHT_BYTES: Final = 8 * 1024 * 1024  # payload bytes in flight per host, each way
DEFAULT_WARMUP: Final = 10.0  # seconds after start when empty routes answer retry
HOST_PREFIX: Final = "host:"
MAX_THROTTLED: Final = 10_000  # keys a Throttle remembers
# The hosts of one MsgRoute take at most this many bytes of its header (the
# rest: its rid, reason and message), so that the frame stays within
# MAX_HEADER_BYTES: some 150 hosts at the least.
ROUTE_BUDGET: Final = MAX_HEADER_BYTES - 2048

# Reasons (MsgRoute.reason, MsgResult.reason).
NO_HOST: Final = "no_host"
NO_APP: Final = "no_app"
NO_INTEREST: Final = "no_interest"
TICKET_GONE: Final = "ticket_gone"
FORBIDDEN: Final = "forbidden"
BUSY: Final = "busy"
RETRY: Final = "retry"
TOO_LARGE: Final = "too_large"
NOT_HOST: Final = "not_host"

# When several hosts answer differently and none took the message, the
# reason reported is the highest of these (busy first).
PRIORITY: Final = (BUSY, RETRY, TICKET_GONE, NO_INTEREST, FORBIDDEN, NO_APP, NO_HOST)


def worst(reasons: Iterable[str]) -> str:
    """The reason of highest priority among ``reasons`` ("" for none)."""
    ranked = [PRIORITY.index(r) for r in reasons if r in PRIORITY]
    return PRIORITY[min(ranked)] if ranked else ""


def fit_route(
    hosts: Iterable[m.MsgHostInfo], budget: int = ROUTE_BUDGET
) -> tuple[list[m.MsgHostInfo], int]:
    """The first of ``hosts`` whose JSON fits in ``budget`` bytes, and how
    many were left out."""
    kept: list[m.MsgHostInfo] = []
    used = left = 0
    for info in hosts:
        size = len(msgspec.json.encode(info)) + 1  # and its comma
        if left or used + size > budget:
            left += 1
            continue
        kept.append(info)
        used += size
    return kept, left


def admits(peer: str, account: str) -> bool:
    """A registration's peer filter lets messages from ``account`` in."""
    return peer == "*" or peer == account


Regs = tuple[m.MsgReg, ...]


def normalise(regs: Iterable[m.MsgReg]) -> Regs:
    """One entry per (app, peer), interests OR-ed, in a stable
    order (so equal sets compare equal)."""
    union: dict[tuple[str, str], int] = {}
    for reg in regs:
        key = (reg.app, reg.peer)
        union[key] = union.get(key, 0) | reg.interest
    return tuple(
        m.MsgReg(app=app, interest=interest, peer=peer)
        for (app, peer), interest in sorted(union.items())
    )


@dataclass(slots=True, eq=False)
class Host:
    """One attached host as the hub knows it."""

    hid: str
    account: str
    key: str
    sig: str
    identity: str
    regs: Regs
    handle: object
    since: float  # when it (last) announced itself, the caller's clock
    sent: int = 0  # messages from it the hub handed on
    delivered: int = 0  # messages it answered with a count > 0
    refused: int = 0  # its messages refused (by the hub, or answered with no taker)
    in_count: int = 0  # in flight to it
    in_bytes: int = 0
    out_count: int = 0  # in flight from it
    out_bytes: int = 0
    inbound: set[tuple[str, str]] = field(default_factory=set)  # flight keys to it
    outbound: set[tuple[str, str]] = field(default_factory=set)  # flight keys from it

    def info(self) -> m.MsgHostInfo:
        return m.MsgHostInfo(
            hid=self.hid, account=self.account, key=self.key, sig=self.sig, identity=self.identity
        )

    def apps(self) -> set[str]:
        return {reg.app for reg in self.regs}


@dataclass(frozen=True, slots=True)
class Route:
    """The answer to a resolve: hosts, or none and why."""

    hosts: tuple[Host, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Hello:
    """What an accepted MsgHello changed: ``changed`` when the registration
    set differs from the one the hub knew for this host (a new host counts
    as changed from nothing); ``retry``: (sender hid, message id) of what
    was in flight to an attachment this one replaced."""

    host: Host
    changed: bool
    retry: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Taken:
    """A host id held by another account: the hello is refused."""

    account: str


@dataclass(frozen=True, slots=True)
class Flight:
    sender: str
    receiver: str
    size: int


@dataclass(frozen=True, slots=True)
class Answer:
    """Where a receiver's result goes: the sending host."""

    sender: Host
    receiver: Host


class Directory:
    """Hosts, their registrations, and messages in flight. Times are the
    caller's clock (monotonic seconds); ``started`` is the hub's start."""

    def __init__(
        self,
        *,
        started: float,
        warmup: float = DEFAULT_WARMUP,
        max_inflight: int = MAX_INFLIGHT,
        max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
        max_sealed: int = MAX_SEALED,
    ) -> None:
        self.started = started
        self.warmup = warmup
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.max_sealed = max_sealed
        self.hosts: dict[str, Host] = {}
        self._by_handle: dict[object, str] = {}
        self._by_account: dict[str, set[str]] = {}
        self._by_app: dict[str, set[str]] = {}
        self.flights: dict[tuple[str, str], Flight] = {}  # (id, receiver hid)

    # --- hosts -----------------------------------------------------------------

    def warming(self, now: float) -> bool:
        return now - self.started < self.warmup

    def host_of(self, handle: object) -> Host | None:
        """The host an attachment announced, if it did."""
        hid = self._by_handle.get(handle)
        return None if hid is None else self.hosts.get(hid)

    def hello(
        self,
        handle: object,
        account: str,
        msg: m.MsgHello,
        hid: str,
        now: float,
    ) -> Hello | Taken:
        """Record (or update) the host ``handle`` announced with ``msg``
        (already verified: ``hid`` is its key's id). The same attachment
        announcing again replaces its registrations; a new attachment of the
        same account with the same host id replaces the old one (a
        re-attach); another account's host id is :class:`Taken`."""
        regs = normalise(msg.regs)
        held = self.hosts.get(hid)
        if held is not None and held.account != account:
            return Taken(held.account)
        retry: tuple[tuple[str, str], ...] = ()
        previous = self._by_handle.get(handle)
        if previous is not None and previous != hid:
            retry += self._drop(previous)  # this attachment changed keys
        if held is not None and held.handle is not handle:
            retry += self._drop(hid)  # a re-attach: the old attachment is done
            held = None
        if held is not None:
            changed = held.regs != regs
            self._unindex_apps(held)
            held.regs = regs
            held.key, held.sig, held.identity = msg.key, msg.sig, msg.identity
            held.since = now
            self._index_apps(held)
            return Hello(held, changed, retry)
        host = Host(hid, account, msg.key, msg.sig, msg.identity, regs, handle, now)
        self.hosts[hid] = host
        self._by_handle[handle] = hid
        self._by_account.setdefault(account, set()).add(hid)
        self._index_apps(host)
        return Hello(host, bool(regs), retry)

    def detach(self, handle: object) -> tuple[Host | None, tuple[tuple[str, str], ...]]:
        """An attachment went: its host (if it announced one and was not
        replaced meanwhile) and the (sender hid, message id) of what was in
        flight to it, each to be answered ``retry``."""
        hid = self._by_handle.get(handle)
        if hid is None:
            return None, ()
        host = self.hosts.get(hid)
        return host, self._drop(hid)

    def _drop(self, hid: str) -> tuple[tuple[str, str], ...]:
        host = self.hosts.pop(hid)
        self._by_handle.pop(host.handle, None)
        peers = self._by_account[host.account]
        peers.discard(hid)
        if not peers:
            del self._by_account[host.account]
        self._unindex_apps(host)
        for key in list(host.outbound):  # what it sent: forgotten
            self._land(key)
        retry = []
        for key in sorted(host.inbound):  # what it was sent: answered retry
            if key in self.flights:  # (not one it sent itself, landed above)
                flight = self._land(key)
                retry.append((flight.sender, key[0]))
        return tuple(retry)

    def _index_apps(self, host: Host) -> None:
        for app in host.apps():
            self._by_app.setdefault(app, set()).add(host.hid)

    def _unindex_apps(self, host: Host) -> None:
        for app in host.apps():
            hids = self._by_app[app]
            hids.discard(host.hid)
            if not hids:
                del self._by_app[app]

    # --- routes ----------------------------------------------------------------

    def resolve(self, sender: str, dest: str, app: str, type: int, now: float) -> Route:
        """Which hosts would take a message of ``type`` for ``app`` from
        account ``sender`` at ``dest`` (an account, ``*`` or ``host:<hid>``)."""
        route = self._resolve(sender, dest, app, type)
        if not route.hosts and dest != "*" and self.warming(now):
            return Route((), RETRY)
        return route

    def _resolve(self, sender: str, dest: str, app: str, type: int) -> Route:
        if dest.startswith(HOST_PREFIX):
            host = self.hosts.get(dest[len(HOST_PREFIX) :])
            return Route((host,)) if host is not None else Route((), NO_HOST)
        if dest == "*":
            if not app:
                return Route((), NO_APP)
            hids = self._by_app.get(app, set())
            if not hids:
                return Route((), NO_APP if self.hosts else NO_HOST)
        else:
            hids = self._by_account.get(dest, set())
            if not hids:
                return Route((), NO_HOST)
            if not app:  # just the account's hosts
                return Route(tuple(self.hosts[h] for h in sorted(hids)))
        found: list[Host] = []
        reasons: set[str] = set()
        for hid in sorted(hids):
            host = self.hosts[hid]
            reason = self._verdict(host, sender, app, type)
            if reason:
                reasons.add(reason)
            else:
                found.append(host)
        if found:
            return Route(tuple(found))
        return Route((), worst(reasons))

    @staticmethod
    def _verdict(host: Host, sender: str, app: str, type: int) -> str:
        """ "" when ``host`` takes the message, else why not."""
        reasons = {NO_APP}
        for reg in host.regs:
            if reg.app != app:
                continue
            if not admits(reg.peer, sender):
                reasons.add(FORBIDDEN)
            elif reg.interest & type:
                return ""
            else:
                reasons.add(NO_INTEREST)
        return worst(reasons)

    # --- in flight -------------------------------------------------------------

    def send(self, handle: object, msg: m.MsgSend, size: int) -> tuple[str, Host | None]:
        """A host's ``MsgSend`` with ``size`` payload bytes: ("", receiver)
        to hand it on (now in flight), or (reason, None) to answer at once."""
        sender = self.host_of(handle)
        if sender is None:
            return NOT_HOST, None
        if size > self.max_sealed:
            sender.refused += 1
            return TOO_LARGE, None
        receiver = self.hosts.get(msg.to)
        if receiver is None:
            sender.refused += 1
            return NO_HOST, None
        key = (msg.id, msg.to)
        held = self.flights.get(key)
        if held is not None:  # sent again while in flight: hand it on once more
            if held.sender == sender.hid:
                return "", receiver
            sender.refused += 1
            return BUSY, None  # another host's message of that id
        if (
            receiver.in_count >= self.max_inflight
            or receiver.in_bytes + size > self.max_inflight_bytes
            or sender.out_count >= self.max_inflight
            or sender.out_bytes + size > self.max_inflight_bytes
        ):
            sender.refused += 1
            return BUSY, None
        self.flights[key] = Flight(sender.hid, receiver.hid, size)
        receiver.in_count += 1
        receiver.in_bytes += size
        receiver.inbound.add(key)
        sender.out_count += 1
        sender.out_bytes += size
        sender.outbound.add(key)
        sender.sent += 1
        return "", receiver

    def result(self, handle: object, msg: m.MsgResult) -> Answer | None:
        """A receiving host's ``MsgResult``: the sender to forward it to, or
        None when nothing of that id is in flight to it (answered already,
        or the sender went)."""
        receiver = self.host_of(handle)
        if receiver is None:
            return None
        key = (msg.id, receiver.hid)
        if key not in self.flights:
            return None
        flight = self._land(key)
        sender = self.hosts.get(flight.sender)
        if sender is None:
            return None
        if msg.count > 0:
            receiver.delivered += 1
        else:
            sender.refused += 1
        return Answer(sender, receiver)

    def _land(self, key: tuple[str, str]) -> Flight:
        flight = self.flights.pop(key)
        receiver = self.hosts.get(flight.receiver)
        if receiver is not None:
            receiver.in_count -= 1
            receiver.in_bytes -= flight.size
            receiver.inbound.discard(key)
        sender = self.hosts.get(flight.sender)
        if sender is not None:
            sender.out_count -= 1
            sender.out_bytes -= flight.size
            sender.outbound.discard(key)
        return flight

    # --- listing ---------------------------------------------------------------

    def visible(self, account: str, admin: bool) -> list[Host]:
        """The hosts ``account`` may see listed: all for an admin, else its
        own and those with a registration open to it."""
        hosts = sorted(self.hosts.values(), key=lambda h: h.hid)
        if admin:
            return hosts
        return [
            h for h in hosts if h.account == account or any(admits(r.peer, account) for r in h.regs)
        ]


class Throttle:
    """At most one event per key per ``window`` seconds, so a flood cannot
    fill the event table: :meth:`note` says when to emit one and how many
    occurrences it stands for (this one and those held back since the last
    event of its key). Remembers at most ``cap`` keys: when full, keys whose
    window has passed are forgotten (what they held back is counted in
    ``dropped``), and while every key is within its window the occurrences
    of new keys are only counted there."""

    def __init__(self, window: float, cap: int = MAX_THROTTLED) -> None:
        self.window = window
        self.cap = cap
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key -> (last emitted, held back)
        self.dropped = 0

    def note(self, key: Hashable, now: float) -> int:
        """0: hold this one back; n > 0: emit an event counting n."""
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window:
            self._seen[key] = (last[0], last[1] + 1)
            return 0
        if last is None and len(self._seen) >= self.cap:
            self._prune(now)
            if len(self._seen) >= self.cap:
                self.dropped += 1
                return 0
        self._seen[key] = (now, 0)
        return 1 + (last[1] if last is not None else 0)

    def _prune(self, now: float) -> None:
        for key, (at, held) in list(self._seen.items()):
            if now - at >= self.window:
                del self._seen[key]
                self.dropped += held
