"""The hub's relay switch, sans-I/O: the life of each relayed connection and
its flow control (docs/protocol.md §12.3).

A *port* is one attached client as the switch sees it: the bytes queued
towards it and the senders paused on its account. A *link* is one relayed
connection: which port holds each end (``dial``/``accept``), its state, and
per direction the bytes queued at the hub, whether the sender is paused and
how far it overshot since. The hub's adapter (:mod:`freight.hub.relay`)
feeds inputs (bind, link, detach, relay, drained, end, sweep) and performs
what comes back: a verdict per relayed record, the senders to resume, the
connections to forget.

Connection states (``(state, input) -> state``; anything else raises
:class:`~freight.protocol.errors.LocalProtocolError` and leaves the link in
``ERROR``):

==========  =========  ==========  =====================================
state       input      next        meaning
==========  =========  ==========  =====================================
WAITING     bind       WAITING     an end registered; the other not yet
WAITING     link       LINKED      both ends there: Linked sent to both
WAITING     detach     WAITING     an end left before the first link
LINKED      bind       LINKED      an end came back on another attachment
LINKED      link       LINKED      linked anew (``rejoined``)
LINKED      detach     HALF        an end is away; records to it dropped
HALF        bind       HALF        the missing end is back (link follows)
HALF        link       LINKED      linked anew (``rejoined``)
HALF        detach     HALF        the other end left too
any live    end        ENDED       hung up, replaced, killed or cut off
ENDED       end        ENDED       (ending twice is harmless)
==========  =========  ==========  =====================================

Flow control, per record of ``size`` bytes from ``role`` (O(1), no
allocation): the record counts in its direction's ``queued`` and in the
target port's ``queued`` (plus :data:`FRAME_COST`) until ``drained``. Then,
first match wins:

* the direction's queue or the sender's overshoot since Pause exceeds
  ``overshoot * window`` -> :data:`CUT` (end with ``flow_violation``);
* the target port holds more than ``queue_limit + in_flight`` ->
  :data:`TOO_SLOW` (drop that attachment);
* the sender is not paused and the direction holds more than ``window`` or
  the port more than ``queue_limit`` -> :data:`PAUSE` (send Pause);
* else :data:`FORWARD`.

A paused sender is resumed once its target port holds at most
``queue_limit / 2`` and its direction at most ``window / 2``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Final, Generic, TypeVar

from .e2e import ACCEPT, DIAL
from .errors import LocalProtocolError

DEFAULT_WINDOW: Final = 4 * 1024 * 1024
# A sender may overshoot by what it had in flight before Pause reached it;
# far beyond that it is ignoring Pause and is cut off.
OVERSHOOT: Final = 4
DEFAULT_QUEUE_LIMIT: Final = 32 * 1024 * 1024  # bytes waiting for one attachment before Pause
# What honest senders may still have on the way when Pause reaches them
# (their write buffers, the kernel's, the hub's reads): measured up to ~25 MiB
# for 16 connections from one client on loopback. Beyond queue_limit plus
# this, senders are ignoring Pause and the attachment is dropped.
IN_FLIGHT: Final = 96 * 1024 * 1024
# What a queued frame costs beyond its payload (header, bookkeeping), so that
# floods of empty frames count too.
FRAME_COST: Final = 256
DETACHED_GRACE: Final = 3600.0  # a connection with an end gone this long is ended


class Verdict(enum.IntEnum):
    """What the adapter does with one relayed record."""

    FORWARD = 0  # queue it towards the other end
    DROP = 1  # the other end is away: drop it (the sender keeps and resends it)
    PAUSE = 2  # queue it and tell the sender Pause
    CUT = 3  # queue it, then end the connection (flow_violation)
    TOO_SLOW = 4  # queue it, then drop the target attachment (it lets too much pile up)


FORWARD: Final = Verdict.FORWARD
DROP: Final = Verdict.DROP
PAUSE: Final = Verdict.PAUSE
CUT: Final = Verdict.CUT
TOO_SLOW: Final = Verdict.TOO_SLOW


class LinkState(enum.Enum):
    WAITING = "waiting"  # never linked yet
    LINKED = "linked"  # both ends attached, Linked announced
    HALF = "half"  # linked before, an end away
    ENDED = "ended"
    ERROR = "error"


L = LinkState
_TABLE: Final[dict[tuple[LinkState, str], LinkState]] = {
    (L.WAITING, "bind"): L.WAITING,
    (L.WAITING, "link"): L.LINKED,
    (L.WAITING, "detach"): L.WAITING,
    (L.LINKED, "bind"): L.LINKED,
    (L.LINKED, "link"): L.LINKED,
    (L.LINKED, "detach"): L.HALF,
    (L.HALF, "bind"): L.HALF,
    (L.HALF, "link"): L.LINKED,
    (L.HALF, "detach"): L.HALF,
    (L.WAITING, "end"): L.ENDED,
    (L.LINKED, "end"): L.ENDED,
    (L.HALF, "end"): L.ENDED,
    (L.ENDED, "end"): L.ENDED,
}
_RELAYING: Final = frozenset({L.WAITING, L.LINKED, L.HALF})
_ENDED: Final = L.ENDED
_ERROR: Final = L.ERROR


def other(role: str) -> str:
    return ACCEPT if role == DIAL else DIAL


class Port:
    """One attachment as the switch sees it."""

    def __init__(self) -> None:
        self.queued = 0  # bytes queued towards it (FRAME_COST per frame included)
        self.closed = False
        # cid -> (link, role of the sender paused on this port's account)
        self.paused_senders: dict[str, tuple[Link[Any], str]] = {}


P = TypeVar("P", bound=Port)


class Link(Generic[P]):
    """One relayed connection as the switch sees it."""

    __slots__ = (
        "cid",
        "detached_since",
        "ends",
        "linked_once",
        "overshoot",
        "paused",
        "queued",
        "relayed",
        "state",
    )

    def __init__(self, cid: str, *, linked_once: bool = False) -> None:
        self.cid = cid
        self.state = LinkState.WAITING
        self.ends: dict[str, P | None] = {DIAL: None, ACCEPT: None}
        self.queued = {DIAL: 0, ACCEPT: 0}  # bytes at the hub towards each end
        self.paused = {DIAL: False, ACCEPT: False}  # each end told to pause sending
        # Bytes a sender relayed since it was told to pause (what it had in flight).
        self.overshoot = {DIAL: 0, ACCEPT: 0}
        self.relayed = {DIAL: 0, ACCEPT: 0}  # bytes each end sent, for the books
        self.linked_once = linked_once  # a rejoin names a connection linked before
        self.detached_since = 0.0

    def __repr__(self) -> str:
        return f"<Link {self.cid} {self.state.value}>"

    def complete(self) -> bool:
        """Both ends attached."""
        return self.ends[DIAL] is not None and self.ends[ACCEPT] is not None

    def _step(self, event: str) -> None:
        nxt = _TABLE.get((self.state, event))
        if nxt is None:
            was, self.state = self.state, LinkState.ERROR
            raise LocalProtocolError(f"relay link {self.cid}: {event!r} in state {was.value}")
        self.state = nxt


class Switch:
    """The flow-control and lifecycle rules shared by every link."""

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        in_flight: int = IN_FLIGHT,
        overshoot: int = OVERSHOOT,
        grace: float = DETACHED_GRACE,
    ) -> None:
        if window <= 0 or queue_limit <= 0 or in_flight < 0 or overshoot < 1:
            raise LocalProtocolError("relay switch limits must be positive")
        self.window = window
        self.queue_limit = queue_limit
        self.in_flight = in_flight
        self.overshoot = overshoot
        self.grace = grace
        self._cut_at = overshoot * window
        self._slow_at = queue_limit + in_flight
        self._resume_port = queue_limit // 2
        self._resume_link = window // 2

    # --- lifecycle ---------------------------------------------------------

    def bind(self, link: Link[P], role: str, port: P) -> P | None:
        """``port`` holds ``role`` of ``link`` now; returns the port it
        replaced (or None)."""
        link._step("bind")
        old = link.ends[role]
        link.ends[role] = port
        return old if old is not port else None

    def link(self, link: Link[P]) -> bool:
        """Both ends are there and Linked goes to both: returns whether it is
        a relink (``rejoined``). Pauses and overshoots start afresh."""
        if not link.complete():
            link.state = LinkState.ERROR
            raise LocalProtocolError(f"relay link {link.cid}: linked with an end missing")
        link._step("link")
        rejoined = link.linked_once
        link.linked_once = True
        link.detached_since = 0.0
        link.paused[DIAL] = link.paused[ACCEPT] = False
        link.overshoot[DIAL] = link.overshoot[ACCEPT] = 0
        return rejoined

    def detach(self, link: Link[P], role: str, now: float) -> bool:
        """The end ``role`` went away; True if the link is to be forgotten
        (never linked and nobody left)."""
        link._step("detach")
        link.ends[role] = None
        link.detached_since = now
        return not link.linked_once and link.ends[other(role)] is None

    def end(self, link: Link[P]) -> None:
        link._step("end")

    def expired(self, link: Link[P], now: float) -> bool:
        """An end has been missing for longer than the grace period."""
        return (
            link.state in _RELAYING
            and not link.complete()
            and link.detached_since > 0
            and now - link.detached_since > self.grace
        )

    # --- records -------------------------------------------------------------

    def relay(self, link: Link[P], role: str, size: int) -> Verdict:
        """A record of ``size`` bytes from ``role``: count it and say what to
        do. Anything but DROP means the adapter queues it to the other end
        (with :meth:`queue`, which the verdict already counts)."""
        state = link.state  # identity tests: an enum's hash is Python code
        if state is _ENDED or state is _ERROR:
            link.state = LinkState.ERROR
            raise LocalProtocolError(f"relay link {link.cid}: a record after it ended")
        link.relayed[role] += size
        to = ACCEPT if role == DIAL else DIAL
        target = link.ends[to]
        if target is None or target.closed:
            return DROP
        queued = link.queued[to] = link.queued[to] + size
        paused = link.paused[role]
        if paused:
            link.overshoot[role] += size
        port_queued = target.queued + size + FRAME_COST
        if queued > self._cut_at or link.overshoot[role] > self._cut_at:
            return CUT
        if port_queued > self._slow_at:
            return TOO_SLOW
        if not paused and (queued > self.window or port_queued > self.queue_limit):
            link.paused[role] = True
            target.paused_senders[link.cid] = (link, role)
            return PAUSE
        return FORWARD

    @staticmethod
    def queue(port: Port, size: int) -> int:
        """A frame of ``size`` payload bytes was queued towards ``port``;
        returns the bytes it counts (payload plus :data:`FRAME_COST`)."""
        cost = size + FRAME_COST
        port.queued += cost
        return cost

    def drained(
        self, port: P, link: Link[P] | None, role: str, size: int
    ) -> Sequence[tuple[Link[P], str]]:
        """A frame of ``size`` payload bytes towards ``port`` (as ``role`` of
        ``link`` for a relayed record) left the hub or was dropped; returns
        the (link, sender role) pairs to send Resume for."""
        port.queued -= size + FRAME_COST
        if link is not None:
            left = link.queued[role] - size
            link.queued[role] = left if left > 0 else 0
        if not port.paused_senders or port.queued > self._resume_port:
            return ()
        resume: list[tuple[Link[P], str]] = []
        for cid, (paused, sender) in list(port.paused_senders.items()):
            to = other(sender)
            if (
                paused.state not in _RELAYING
                or paused.ends[to] is not port
                or not paused.paused[sender]
            ):
                del port.paused_senders[cid]  # ended, relinked or resumed already
            elif paused.queued[to] <= self._resume_link:
                del port.paused_senders[cid]
                paused.paused[sender] = False
                paused.overshoot[sender] = 0
                if paused.ends[sender] is not None:
                    resume.append((paused, sender))
        return resume
