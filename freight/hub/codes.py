"""One-time codes at the hub (``freight send`` / ``receive``): offers,
claims, rejoins, and the count of failed claims.

A claim *fails* when its connection was linked and the handshake on that
link did not end with the sender's ``code_ok``: a wrong code
(``code_failed``), a claimant that hung up or went away, or a relink in the
middle of the handshake. Each failure counts against the code in the
database; at :data:`MAX_CODE_GUESSES` the code is deleted and its sender is
told ``code_burned``. The sending process counts the same way on its own, so
a hub that does not count gets no more guesses (docs/protocol.md 12.4).

Only the two parties of a code take part in its connection: the claim that
linked last is recorded (connection id and claimant), a rejoin must match
it, and while a verified claim is in progress another account's claim is
refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol import messages as m
from ..protocol.e2e import ACCEPT, DIAL, MAX_CODE_GUESSES
from ..protocol.relaycodes import HangupCode, RefusalCode
from .relayconn import CODE_APP_PREFIX, Conn, RelayRefused
from .streams import User

if TYPE_CHECKING:
    from .relay import Attachment, Router


@dataclass
class Offer:
    """A ``freight send`` waiting for claims under a nameplate."""

    nameplate: str
    user: User
    att: Attachment | None
    expires: float
    conn: Conn | None = None


class CodeDesk:
    def __init__(self, router: Router, max_codes: int) -> None:
        self.router = router
        self.db = router.db
        self.events = router.events
        self.max_codes = max_codes
        self.offers: dict[str, Offer] = {}

    # --- offers and claims --------------------------------------------------

    async def offer(self, att: Attachment, msg: m.Offer) -> None:
        if msg.nameplate:
            row = await self.db.get_code(msg.nameplate)
            if row is None:
                raise RelayRefused(
                    RefusalCode.CODE_UNKNOWN, f"code {msg.nameplate}-… has expired or is unknown"
                )
            if int(row.user_id) != att.user.id:
                raise RelayRefused(
                    RefusalCode.FORBIDDEN, f"code {msg.nameplate}-… belongs to someone else"
                )
            nameplate, expires = msg.nameplate, float(row.expires)
        else:
            if await self.db.count_codes(att.user.id) >= self.max_codes:
                raise RelayRefused(
                    RefusalCode.LIMIT_REACHED,
                    f"you already have {self.max_codes} codes open (the hub's limit); "
                    "wait for one to expire or resume one with --code",
                )
            nameplate = await self.db.create_code(att.user.id, msg.ttl)
            expires = time.time() + msg.ttl
        offer = self.offers.get(nameplate)
        if offer is None:
            offer = self.offers[nameplate] = Offer(nameplate, att.user, att, expires)
            # After a hub restart the connection may have been rejoined first.
            offer.conn = next(
                (c for c in self.router.conns.values() if c.nameplate == nameplate), None
            )
        else:
            offer.att = att
            current = offer.conn
            if current is not None and current.ends[ACCEPT] is None:
                # A sender process started again: its old connection cannot
                # come back; the receiver claims anew and both resume.
                self.router.end(
                    current, HangupCode.SENDER_RESTARTED, "the sender started again", by="hub"
                )
        att.offers.add(nameplate)
        self.router.deliver(
            att,
            m.CodeGrant(
                rid=msg.rid, nameplate=nameplate, expires_in=max(0.0, expires - time.time())
            ),
        )
        await self.events.emit("code_offered", att.user.name, nameplate=nameplate)

    async def claim(self, att: Attachment, msg: m.Claim) -> None:
        row = await self.db.get_code(msg.nameplate)
        if row is None:
            raise RelayRefused(RefusalCode.CODE_UNKNOWN, "this code has expired or is unknown")
        offer = self.offers.get(msg.nameplate)
        sender = await self.router.user_by_id(int(row.user_id))
        current = offer.conn if offer is not None else None
        if current is not None and current.cid in self.router.conns:
            theirs = current.ends[DIAL]
            if (theirs is not None and theirs is not att) or (
                current.verified and current.users[DIAL].id != att.user.id
            ):
                raise RelayRefused(
                    RefusalCode.CONFLICT, "someone else is receiving with this code right now"
                )
            self.router.end(
                current, HangupCode.RECEIVER_RESTARTED, "the receiver started again", by="hub"
            )
        self.router.check_room(att.user)
        await self.db.set_code_claim(msg.nameplate, msg.cid, att.user.id)
        conn = Conn(
            msg.cid,
            CODE_APP_PREFIX + msg.nameplate,
            {DIAL: att.user, ACCEPT: sender},
            nameplate=msg.nameplate,
            owner=att.user.id,
        )
        self.router.conns[msg.cid] = conn
        self.router.bind(conn, DIAL, att, rid=msg.rid, announce=False)
        if offer is None:
            offer = self.offers[msg.nameplate] = Offer(
                msg.nameplate, sender, None, float(row.expires)
            )
        offer.conn = conn
        if offer.att is not None and not offer.att.closed:
            self.router.bind(conn, ACCEPT, offer.att)
        else:
            self.router.deliver(att, m.Waiting(rid=msg.rid, cid=msg.cid))

    async def rejoin(self, att: Attachment, msg: m.Dial) -> None:
        """A rejoin of a code's connection the hub does not hold (it
        restarted): allowed only to the two parties of the claim that linked
        last, under its connection id."""
        nameplate = msg.app[len(CODE_APP_PREFIX) :]
        row = await self.db.get_code(nameplate, expired=True) if nameplate.isdigit() else None
        if row is None:
            raise RelayRefused(RefusalCode.CODE_UNKNOWN, "this code has expired or is unknown")
        party = int(row.user_id if msg.role == ACCEPT else (row.claimant_id or 0))
        if row.claim_cid != msg.cid or party != att.user.id:
            raise RelayRefused(
                RefusalCode.FORBIDDEN,
                "only the sender and the receiver of a code may rejoin its connection",
            )
        self.router.check_room(att.user)
        sender = await self.router.user_by_id(int(row.user_id))
        claimant = await self.router.user_by_id(int(row.claimant_id))
        conn = Conn(
            msg.cid,
            msg.app,
            {DIAL: claimant, ACCEPT: sender},
            linked_once=True,
            nameplate=nameplate,
            owner=att.user.id,
        )
        self.router.conns[msg.cid] = conn
        offer = self.offers.get(nameplate)
        if offer is not None:
            offer.conn = conn
        self.router.bind(conn, msg.role, att, rid=msg.rid, announce=False)
        self.router.deliver(att, m.Waiting(rid=msg.rid, cid=msg.cid))

    # --- the handshake on each link ----------------------------------------------

    def linked(self, conn: Conn) -> None:
        """Linked goes to both ends: a handshake starts unless this claim was
        verified. A link replacing one whose handshake never finished is a
        failed claim (a relink forced in the middle)."""
        if conn.hs_pending:
            self.interrupted(conn, "relinked")
        conn.hs_pending = not conn.verified

    def verified(self, att: Attachment, cid: str) -> None:
        conn = self.router.conns.get(cid)
        if conn is not None and conn.nameplate and att.ends.get(cid) == ACCEPT:
            conn.verified = True
            conn.hs_pending = False

    def interrupted(self, conn: Conn, reason: str) -> None:
        """The link of ``conn`` ended (hang-up, detach, relink, wrong code):
        if its handshake had not been verified, that claim failed."""
        if not conn.hs_pending:
            return
        conn.hs_pending = False
        self.router.spawn(self._count(conn.nameplate, conn.users[DIAL].name, reason))

    async def failed(self, att: Attachment, cid: str) -> None:
        """The sender says the claimant's confirmation did not verify."""
        conn = self.router.conns.get(cid)
        if conn is None or not conn.nameplate or att.ends.get(cid) != ACCEPT:
            return
        self.interrupted(conn, "wrong_code")
        self.router.end(conn, HangupCode.WRONG_CODE, "wrong code", by="hub")

    async def _count(self, nameplate: str, claimant: str, reason: str) -> None:
        failures = await self.db.code_failed(nameplate)
        if failures == 0:
            return  # already burned or expired and purged
        await self.events.emit(
            "code_failure", claimant, nameplate=nameplate, failures=failures, reason=reason
        )
        if failures >= MAX_CODE_GUESSES:
            await self.burn(nameplate)

    async def burn(self, nameplate: str) -> None:
        await self.db.delete_code(nameplate)
        offer = self.offers.pop(nameplate, None)
        text = (
            f"code burned: {MAX_CODE_GUESSES} claims of code {nameplate}-… failed (a wrong "
            "code, or a receiver that left before proving it); it no longer works"
        )
        if offer is None:
            return
        if offer.att is not None:
            offer.att.offers.discard(nameplate)
            self.router.deliver(
                offer.att, m.Error(code=RefusalCode.CODE_BURNED, message=text, rid="")
            )
        if offer.conn is not None and self.router.conns.get(offer.conn.cid) is offer.conn:
            self.router.end(offer.conn, HangupCode.CODE_BURNED, text, by="hub")

    # --- bookkeeping ----------------------------------------------------------------

    def ended(self, conn: Conn) -> None:
        offer = self.offers.get(conn.nameplate)
        if offer is not None and offer.conn is conn:
            offer.conn = None

    def detached(self, att: Attachment) -> None:
        for nameplate in att.offers:
            offer = self.offers.get(nameplate)
            if offer is not None and offer.att is att:
                offer.att = None

    def sweep(self, now: float) -> None:
        """Forget offers past their expiry that nobody serves any more."""
        for nameplate, offer in list(self.offers.items()):
            if offer.expires < now and offer.att is None and offer.conn is None:
                del self.offers[nameplate]
