"""The hub's relay pairing, sans-I/O: who listens, which connections exist,
and what each request of an attached client does to them (docs/protocol.md
§12.7).

The switch (:mod:`freight.protocol.switch`) decides the life of one link
and its flow; this machine decides which links exist and which attachment
holds each end. It owns the tables: listeners by (user, application),
connections by id, the connections each account holds, the recently ended
connections (so an end that rejoins late learns why), the offers of
one-time codes by nameplate, and two indexes that keep every decision
O(1) in the number of connections: the dials waiting for a listener and
the connections by (dialler, acceptor, application).

Inputs take users already resolved: the adapter (:mod:`freight.hub.relay`)
does the database look-ups first, and where a decision needs one it has not
done, the machine answers :class:`ResolvePeer` or :class:`RejoinCode` and
the adapter calls again with the answer (the machine decides afresh then,
so nothing that changed in between is missed). Each input returns the
actions to perform, in order:

==========================  =====================================================
action                      the adapter
==========================  =====================================================
:class:`Refuse`             answers the request with ``error {code, message}``
:class:`Done`               answers ``done {rid}``
:class:`Granted`            answers ``code_grant``
:class:`Waiting`            answers ``waiting {rid, cid}``
:class:`Ready`              looks up both ends' keys, then calls :meth:`Pairing.linked`
                            and sends ``linked`` to both ends
:class:`Hangup`             sends ``hangup`` to that attachment
:class:`Ended`              records the end (events, metrics, the code's count)
:class:`Away`               an end of a code's connection went away (the claim's count)
:class:`ResolvePeer`        looks the user up and calls :meth:`Pairing.dial` again
:class:`RejoinCode`         checks the code's claim and calls :meth:`Pairing.rejoin_code`
==========================  =====================================================

Refusals (``Error.code``, English text as sent):

* ``self_connect`` -- a dial of one's own account (a rejoin from the
  accepting end too, except of a code's connection: one may send to oneself);
* ``usage`` -- ``listen`` on ``code:…``, a fresh dial naming the accepting
  end, a ``dial`` of ``code:…`` that is not a rejoin;
* ``conflict`` -- a connection id of someone else (or whose other end this
  attachment holds), an application listened
  for on another live attachment, a second live dial of the same pair and
  application, a claim while another claimant is on the code;
* ``limit_reached`` -- :data:`MAX_LISTENS` listens or ``max_conns``
  connections held by the account.

Time enters only through :meth:`Pairing.detach` and
:meth:`Pairing.handle_timer`: :meth:`Pairing.next_deadline` says when a
connection with an end away runs out of grace (it ends ``peer_gone``).
An input the machine does not know (a role that is neither ``dial`` nor
``accept``) raises :class:`~freight.protocol.errors.LocalProtocolError`; an
illegal step of one link leaves that link in ``ERROR`` (the switch's rule).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from . import messages as m
from .e2e import ACCEPT, DIAL
from .errors import LocalProtocolError
from .pairacts import (
    Action,
    Away,
    Done,
    Ended,
    Gone,
    Granted,
    Hangup,
    Pair,
    Party,
    Ready,
    Refuse,
    RejoinCode,
    ResolvePeer,
    Seat,
    Waiting,
)
from .relaycodes import BY_HUB, BY_PEER, HangupCode, RefusalCode
from .switch import LinkState, Switch, other
from .tunnel import TUNNEL_PREFIX, listen_app

CODE_APP_PREFIX: Final = "code:"
MAX_LISTENS: Final = 64  # applications one account may listen for
DEFAULT_MAX_CONNS: Final = 256  # relayed connections per account
ENDED_REMEMBERED: Final = 10_000  # ended connections remembered for ends that rejoin late
_ROLES: Final = frozenset({DIAL, ACCEPT})


S = TypeVar("S", bound=Seat)
C = TypeVar("C", bound=Pair)


@dataclass(slots=True)
class Offer(Generic[S]):
    """A ``freight send`` waiting for claims under a nameplate."""

    nameplate: str
    user: Party
    seat: S | None
    expires: float


ConnFactory = Callable[[str, str, dict[str, Party], int, bool, str], C]


def _role(role: str) -> str:
    if role not in _ROLES:
        raise LocalProtocolError(f"relay pairing: unknown role {role!r}")
    return role


class Pairing(Generic[S, C]):
    """Listeners, connections, codes' offers and the rules that pair them."""

    def __init__(
        self,
        switch: Switch,
        new_conn: ConnFactory[C],
        *,
        max_conns: int = DEFAULT_MAX_CONNS,
        max_listens: int = MAX_LISTENS,
        remembered: int = ENDED_REMEMBERED,
    ) -> None:
        if max_conns < 1 or max_listens < 1 or remembered < 0:
            raise LocalProtocolError("relay pairing limits must be positive")
        self.switch = switch
        self.new_conn = new_conn
        self.max_conns = max_conns
        self.max_listens = max_listens
        self.remembered = remembered
        self.conns: dict[str, C] = {}
        self.listeners: dict[tuple[str, str], tuple[S, str]] = {}
        self.listening: dict[str, int] = {}  # user name -> applications listened for
        self.held: dict[int, int] = {}  # account id -> connections it owns
        self.ended: OrderedDict[str, Gone] = OrderedDict()
        self.offers: dict[str, Offer[S]] = {}
        self.coded: dict[str, C] = {}  # nameplate -> its latest connection
        # (acceptor name, app) -> dials waiting for that listener, by cid
        self.waiting: dict[tuple[str, str], dict[str, C]] = {}
        # (dialler id, acceptor id, app) -> connections of that pair, by cid
        self.pairs: dict[tuple[int, int, str], dict[str, C]] = {}
        self.away: dict[str, C] = {}  # an end left, in the order they left

    # --- listening ------------------------------------------------------------

    def listen(self, seat: S, msg: m.Listen) -> list[Action]:
        if msg.app.startswith(CODE_APP_PREFIX):
            return [Refuse(RefusalCode.USAGE, "code:… applications are for send/receive only")]
        if msg.app.startswith(TUNNEL_PREFIX):
            return [
                Refuse(RefusalCode.USAGE, "tunnel.… names one tunnel connection; listen for tunnel")
            ]
        name = seat.user.name
        key = (name, msg.app)
        current = self.listeners.get(key)
        if current is None and self.listening.get(name, 0) >= self.max_listens:
            return [
                Refuse(
                    RefusalCode.LIMIT_REACHED,
                    f"you listen for {self.max_listens} applications already (the hub's "
                    "limit); stop one first",
                )
            ]
        if current is not None and current[0] is not seat and not current[0].closed:
            return [
                Refuse(
                    RefusalCode.CONFLICT,
                    f"you already listen for {msg.app!r} elsewhere; stop that one first",
                )
            ]
        if current is None:
            self.listening[name] = self.listening.get(name, 0) + 1
        else:
            current[0].apps.discard(msg.app)
        self.listeners[key] = (seat, msg.peer)
        seat.apps.add(msg.app)
        acts: list[Action] = [Done(msg.rid)]
        # Dials that were waiting for this listener connect now.
        waiting = self.waiting.get(key)
        if waiting:
            for conn in list(waiting.values()):
                if (
                    conn.ends[ACCEPT] is None
                    and not conn.linked_once
                    and conn.ends[DIAL] is not None
                    and msg.peer in ("*", conn.users[DIAL].name)
                ):
                    self._unwait(conn)
                    self._bind(conn, ACCEPT, seat, "", acts)
        return acts

    def unlisten(self, seat: S, msg: m.Unlisten) -> list[Action]:
        key = (seat.user.name, msg.app)
        current = self.listeners.pop(key, None)
        if current is not None:
            self._unlistened(key, current[0])
        seat.apps.discard(msg.app)
        return [Done(msg.rid)]

    def _unlistened(self, key: tuple[str, str], seat: S) -> None:
        left = self.listening.get(key[0], 0) - 1
        if left > 0:
            self.listening[key[0]] = left
        else:
            self.listening.pop(key[0], None)
        seat.apps.discard(key[1])

    # --- dialling ---------------------------------------------------------------

    def dial(self, seat: S, msg: m.Dial, peer: Party | None = None) -> list[Action]:
        """A ``dial`` (fresh or ``rejoin``); ``peer`` is the account named
        ``msg.peer`` once the adapter has looked it up."""
        role = _role(msg.role)
        me = seat.user
        if msg.peer == me.name and (role == DIAL or not msg.app.startswith(CODE_APP_PREFIX)):
            return [Refuse(RefusalCode.SELF_CONNECT, "you cannot connect to yourself")]
        acts: list[Action] = []
        conn = self.conns.get(msg.cid)
        if conn is not None:
            holder = conn.users.get(role)
            if holder is None or holder.id != me.id or seat.ends.get(msg.cid) == other(role):
                return [
                    Refuse(RefusalCode.CONFLICT, f"connection {msg.cid} belongs to someone else")
                ]
            self._bind(conn, role, seat, msg.rid, acts)
            if not conn.complete():
                acts.append(Waiting(msg.rid, msg.cid))
            return acts
        if role == ACCEPT and not msg.rejoin:
            return [Refuse(RefusalCode.USAGE, "only a rejoin may name the accepting end")]
        gone = self.ended.get(msg.cid) if msg.rejoin else None
        if gone is not None and me.id in gone.owners:
            return [Hangup(seat, msg.cid, gone.code, gone.message, gone.by)]
        if msg.app.startswith(CODE_APP_PREFIX):
            if not msg.rejoin:
                return [Refuse(RefusalCode.USAGE, "connect to a code with claim, not dial")]
            return [RejoinCode(msg.app[len(CODE_APP_PREFIX) :])]
        if peer is None or peer.name != msg.peer:
            return [ResolvePeer(msg.peer)]
        users: dict[str, Party] = {role: me, other(role): peer}
        key = (users[DIAL].id, users[ACCEPT].id, msg.app)
        if role == DIAL and not msg.rejoin:
            olds = list(self.pairs.get(key, {}).values())
            if any(old.ends[DIAL] is not None for old in olds):
                return [
                    Refuse(
                        RefusalCode.CONFLICT,
                        f"a connection from you to {peer.name}/{msg.app} already exists",
                    )
                ]
            refused = self._no_room(me, sum(1 for old in olds if old.owner == me.id))
            if refused is not None:
                return [refused]
            for old in olds:
                self._end(
                    old, HangupCode.REPLACED, "replaced by a new connection", BY_HUB, None, acts
                )
        else:
            refused = self._no_room(me)
            if refused is not None:
                return [refused]
        conn = self._open(msg.cid, msg.app, users, me.id, msg.rejoin, "")
        conn.pair_key = key
        self.pairs.setdefault(key, {})[conn.cid] = conn
        self._bind(conn, role, seat, msg.rid, acts, announce=False)
        if not msg.rejoin:
            # A tunnel connection (tunnel.TAG.PROTO:SERVICE) reaches the
            # listener of its service (docs/protocol.md §18).
            wanted = listen_app(msg.app)
            listener = self.listeners.get((peer.name, wanted))
            if listener is not None and listener[1] in ("*", me.name):
                self._bind(conn, ACCEPT, listener[0], "", acts)
                return acts
            conn.waits_for = (peer.name, wanted)
            self.waiting.setdefault(conn.waits_for, {})[conn.cid] = conn
        acts.append(Waiting(msg.rid, msg.cid))
        return acts

    def _no_room(self, user: Party, freed: int = 0) -> Refuse | None:
        """Refuse a new connection beyond the account's cap (``freed``: its
        connections this request ends first)."""
        held = self.held.get(user.id, 0) - freed
        if held >= self.max_conns:
            return Refuse(
                RefusalCode.LIMIT_REACHED,
                f"you have {held} relayed connections open (the hub's limit); close some first",
            )
        return None

    def _open(
        self, cid: str, app: str, users: dict[str, Party], owner: int, rejoin: bool, nameplate: str
    ) -> C:
        conn = self.new_conn(cid, app, users, owner, rejoin, nameplate)
        self.conns[cid] = conn
        self.held[owner] = self.held.get(owner, 0) + 1
        if nameplate:
            self.coded[nameplate] = conn
        return conn

    def _bind(
        self, conn: C, role: str, seat: S, rid: str, acts: list[Action], *, announce: bool = True
    ) -> None:
        old = self.switch.bind(conn, role, seat)
        if old is not None:
            old.ends.pop(conn.cid, None)
        seat.ends[conn.cid] = role
        if rid:
            conn.rids[role] = rid
        if announce and conn.complete():
            acts.append(Ready(conn))

    def linked(self, conn: C) -> bool | None:
        """The adapter is about to send ``linked`` to both ends of ``conn``:
        whether it is a relink (``rejoined``), or None if ``conn`` ended or
        lost an end meanwhile (nothing to send)."""
        if self.conns.get(conn.cid) is not conn or not conn.complete():
            return None
        return self.switch.link(conn)

    # --- codes --------------------------------------------------------------------

    def offer(self, seat: S, rid: str, nameplate: str, expires: float) -> list[Action]:
        """``freight send`` offers ``nameplate`` (the adapter made or checked it)."""
        acts: list[Action] = []
        offer = self.offers.get(nameplate)
        if offer is None:
            self.offers[nameplate] = Offer(nameplate, seat.user, seat, expires)
        else:
            offer.seat = seat
            current = self.coded.get(nameplate)
            if current is not None and current.ends[ACCEPT] is None:
                # A sender process started again: its old connection cannot
                # come back; the receiver claims anew and both resume.
                self._end(
                    current,
                    HangupCode.SENDER_RESTARTED,
                    "the sender started again",
                    BY_HUB,
                    None,
                    acts,
                )
        seat.offers.add(nameplate)
        acts.append(Granted(rid, nameplate, expires))
        return acts

    def claim_check(self, seat: S, nameplate: str) -> list[Action]:
        """Before the adapter records a claim: refuse it, or end the code's
        current connection that the same receiver left behind."""
        acts: list[Action] = []
        current = self.coded.get(nameplate)
        if current is not None:
            theirs = current.ends[DIAL]
            if (theirs is not None and theirs is not seat) or (
                current.verified and current.users[DIAL].id != seat.user.id
            ):
                return [
                    Refuse(
                        RefusalCode.CONFLICT, "someone else is receiving with this code right now"
                    )
                ]
            self._end(
                current,
                HangupCode.RECEIVER_RESTARTED,
                "the receiver started again",
                BY_HUB,
                None,
                acts,
            )
        refused = self._no_room(seat.user)
        return [refused] if refused is not None else acts

    def claim(self, seat: S, msg: m.Claim, sender: Party, expires: float) -> list[Action]:
        """A claim the adapter recorded: connect the receiver to the sender."""
        acts = self.claim_check(seat, msg.nameplate)
        if acts and isinstance(acts[0], Refuse):
            return acts
        conn = self._open(
            msg.cid,
            CODE_APP_PREFIX + msg.nameplate,
            {DIAL: seat.user, ACCEPT: sender},
            seat.user.id,
            False,
            msg.nameplate,
        )
        self._bind(conn, DIAL, seat, msg.rid, acts, announce=False)
        offer = self.offers.get(msg.nameplate)
        if offer is None:
            offer = self.offers[msg.nameplate] = Offer(msg.nameplate, sender, None, expires)
        if offer.seat is not None and not offer.seat.closed and offer.seat is not seat:
            self._bind(conn, ACCEPT, offer.seat, "", acts)
        else:
            acts.append(Waiting(msg.rid, msg.cid))
        return acts

    def rejoin_code(self, seat: S, msg: m.Dial, sender: Party, claimant: Party) -> list[Action]:
        """A rejoin of a code's connection the hub does not hold, checked by
        the adapter against the code's recorded claim."""
        role = _role(msg.role)
        if msg.cid in self.conns:  # rejoined by the other end meanwhile
            return self.dial(seat, msg)
        refused = self._no_room(seat.user)
        if refused is not None:
            return [refused]
        nameplate = msg.app[len(CODE_APP_PREFIX) :]
        conn = self._open(
            msg.cid, msg.app, {DIAL: claimant, ACCEPT: sender}, seat.user.id, True, nameplate
        )
        acts: list[Action] = []
        self._bind(conn, role, seat, msg.rid, acts, announce=False)
        acts.append(Waiting(msg.rid, msg.cid))
        return acts

    def burn(self, nameplate: str, text: str) -> tuple[S | None, list[Action]]:
        """The code stopped working: forget its offer (returns the attachment
        that offered it) and end its connection."""
        acts: list[Action] = []
        offer = self.offers.pop(nameplate, None)
        seat = offer.seat if offer is not None else None
        if seat is not None:
            seat.offers.discard(nameplate)
        conn = self.coded.get(nameplate) if offer is not None else None
        if conn is not None:
            self._end(conn, HangupCode.CODE_BURNED, text, BY_HUB, None, acts)
        return seat, acts

    # --- endings ----------------------------------------------------------------------

    def hangup(self, seat: S, msg: m.Hangup) -> list[Action]:
        """An end hung up: the other end hears it (by ``peer``)."""
        acts: list[Action] = []
        conn = self.conns.get(msg.cid)
        if conn is not None and seat.ends.get(msg.cid) is not None:
            self._end(conn, msg.code, msg.message, BY_PEER, seat, acts)
        return acts

    def end(self, conn: C, code: str, message: str, by: str) -> list[Action]:
        """End ``conn`` (cut off, killed, a wrong code): both ends hear it."""
        acts: list[Action] = []
        if self.conns.get(conn.cid) is conn:
            self._end(conn, code, message, by, None, acts)
        return acts

    def _end(
        self, conn: C, code: str, message: str, by: str, skip: Seat | None, acts: list[Action]
    ) -> None:
        cid = conn.cid
        self.switch.end(conn)
        self._drop(conn)
        if self.remembered:
            owners = frozenset(u.id for u in conn.users.values())
            self.ended[cid] = Gone(code, message, by, owners)
            self.ended.move_to_end(cid)
            while len(self.ended) > self.remembered:
                self.ended.popitem(last=False)
        acts.append(Ended(conn, code, message, by))
        for role in (DIAL, ACCEPT):
            seat = conn.ends[role]
            if seat is not None:
                seat.ends.pop(cid, None)
                if seat is not skip:
                    acts.append(Hangup(seat, cid, code, message, by))

    def _drop(self, conn: C) -> None:
        """Take ``conn`` out of every table."""
        cid = conn.cid
        del self.conns[cid]
        left = self.held[conn.owner] - 1
        if left:
            self.held[conn.owner] = left
        else:
            del self.held[conn.owner]
        if conn.nameplate and self.coded.get(conn.nameplate) is conn:
            del self.coded[conn.nameplate]
        self._unwait(conn)
        if conn.pair_key is not None:
            same = self.pairs[conn.pair_key]
            del same[cid]
            if not same:
                del self.pairs[conn.pair_key]
            conn.pair_key = None
        self.away.pop(cid, None)

    def _unwait(self, conn: C) -> None:
        key = conn.waits_for
        if key is not None:
            conn.waits_for = None
            waiting = self.waiting[key]
            del waiting[conn.cid]
            if not waiting:
                del self.waiting[key]

    # --- attachments and time ------------------------------------------------------

    def detach(self, seat: S, now: float) -> list[Action]:
        """An attachment went away: its ends wait for a rejoin (or, never
        linked and nobody left, are forgotten), its listens and offers stop."""
        acts: list[Action] = []
        for cid, role in list(seat.ends.items()):
            conn = self.conns.get(cid)
            if conn is None or conn.ends[role] is not seat:
                continue
            if conn.nameplate:
                acts.append(Away(conn))
            if self.switch.detach(conn, role, now):
                # Never linked and nobody left: the dialling process went
                # away (a reconnect dials it afresh).
                self.switch.end(conn)
                self._drop(conn)
            else:
                self.away.pop(cid, None)
                self.away[cid] = conn
        seat.ends.clear()
        for app in list(seat.apps):
            key = (seat.user.name, app)
            current = self.listeners.get(key)
            if current is not None and current[0] is seat:
                del self.listeners[key]
                self._unlistened(key, seat)
        seat.apps.clear()
        for nameplate in seat.offers:
            offer = self.offers.get(nameplate)
            if offer is not None and offer.seat is seat:
                offer.seat = None
        return acts

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` has something to do (None: nothing
        waits on time)."""
        for conn in self.away.values():
            return conn.detached_since + self.switch.grace
        return None

    def handle_timer(self, now: float) -> list[Action]:
        """End connections whose end stayed away past the grace period, and
        forget offers past their expiry that nobody serves any more."""
        acts: list[Action] = []
        while self.away:
            cid, conn = next(iter(self.away.items()))
            if conn.state is not LinkState.ENDED and conn.complete():
                del self.away[cid]  # it came back
            elif self.switch.expired(conn, now):
                self._end(
                    conn,
                    HangupCode.PEER_GONE,
                    "the other end did not come back",
                    BY_HUB,
                    None,
                    acts,
                )
            elif conn.detached_since + self.switch.grace >= now:
                break  # the first to run out of grace: not yet
            else:
                del self.away[cid]
        for nameplate, offer in list(self.offers.items()):
            if offer.expires < now and offer.seat is None and nameplate not in self.coded:
                del self.offers[nameplate]
        return acts
