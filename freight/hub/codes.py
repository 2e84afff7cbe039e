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

The decisions on offers and connections are the relay pairing's
(:mod:`freight.protocol.pairing`); this desk does the database's part
around them (codes, claims, failed guesses) and counts the handshakes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..protocol import messages as m
from ..protocol.e2e import ACCEPT, DIAL, MAX_CODE_GUESSES
from ..protocol.pairacts import Action, Refuse
from ..protocol.relaycodes import BY_HUB, HangupCode, RefusalCode
from .places import offer_key
from .relayconn import Conn, RelayRefused

if TYPE_CHECKING:
    from .relay import Attachment, Router


class CodeDesk:
    def __init__(self, router: Router, max_codes: int) -> None:
        self.router = router
        self.pairing = router.pairing
        self.db = router.db
        self.events = router.events
        self.max_codes = max_codes

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
            if row.finished:  # offered again: open once more
                await self._room(att)
                await self.db.set_code_finished(nameplate, False)
        else:
            await self._room(att)
            nameplate = await self.db.create_code(att.user.id, msg.ttl)
            expires = time.time() + msg.ttl
        acts = self.pairing.offer(att, msg.rid, nameplate, expires)
        if self.router.places is not None:  # claims on other nodes come here
            await self.router.place(offer_key(nameplate))
        self.router.perform(att, msg.rid, acts)
        await self.events.emit("code_offered", att.user.name, nameplate=nameplate)

    async def _room(self, att: Attachment) -> None:
        if await self.db.count_codes(att.user.id) >= self.max_codes:
            raise RelayRefused(
                RefusalCode.LIMIT_REACHED,
                f"you already have {self.max_codes} code{'s' * (self.max_codes != 1)} open "
                "(the hub's limit); wait for one to finish or expire, or resume one with --code",
            )

    async def claim(self, att: Attachment, msg: m.Claim) -> None:
        row = await self.db.get_code(msg.nameplate)
        if row is None:
            raise RelayRefused(RefusalCode.CODE_UNKNOWN, "this code has expired or is unknown")
        sender = await self.router.user_by_id(int(row.user_id))
        offer = self.pairing.offers.get(msg.nameplate)
        if self.router.places is not None and (offer is None or offer.seat is None):
            await self.router.places.check_elsewhere(
                offer_key(msg.nameplate), "the sender of this code"
            )
        # Refused, or the receiver's own earlier connection ended, before the
        # claim is recorded; then recorded and connected.
        self._refused(self.pairing.claim_check(att, msg.nameplate), att)
        await self.db.set_code_claim(msg.nameplate, msg.cid, att.user.id)
        acts = self.pairing.claim(att, msg, sender, float(row.expires))
        self._refused(acts, att)
        await self.router.placed_conn(msg.cid)

    def _refused(self, acts: list[Action], att: Attachment) -> None:
        """Raise the pairing's refusal, or perform what it asked."""
        if acts and isinstance(acts[0], Refuse):
            raise RelayRefused(acts[0].code, acts[0].message)
        self.router.perform(att, "", acts)

    async def rejoin(self, att: Attachment, msg: m.Dial, nameplate: str) -> None:
        """A rejoin of a code's connection the hub does not hold (it
        restarted): allowed only to the two parties of the claim that linked
        last, under its connection id."""
        row = await self.db.get_code(nameplate, expired=True) if nameplate.isdigit() else None
        if row is None:
            raise RelayRefused(RefusalCode.CODE_UNKNOWN, "this code has expired or is unknown")
        party = int(row.user_id if msg.role == ACCEPT else (row.claimant_id or 0))
        if row.claim_cid != msg.cid or party != att.user.id:
            raise RelayRefused(
                RefusalCode.FORBIDDEN,
                "only the sender and the receiver of a code may rejoin its connection",
            )
        sender = await self.router.user_by_id(int(row.user_id))
        claimant = await self.router.user_by_id(int(row.claimant_id))
        self._refused(self.pairing.rejoin_code(att, msg, sender, claimant), att)

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

    def finished(self, conn: Conn, code: str) -> None:
        """A verified claim's connection closed normally: its transfer
        finished, so the code stops counting against its sender's open
        codes (its owner may still offer it again until it expires).
        Clients hang up a transfer that did not finish as ``aborted``."""
        if conn.verified and code == HangupCode.CLOSED:
            self.router.spawn(self.db.set_code_finished(conn.nameplate, True))

    def failed(self, att: Attachment, cid: str) -> None:
        """The sender says the claimant's confirmation did not verify."""
        conn = self.router.conns.get(cid)
        if conn is None or not conn.nameplate or att.ends.get(cid) != ACCEPT:
            return
        self.interrupted(conn, "wrong_code")
        self.router.end(conn, HangupCode.WRONG_CODE, "wrong code", by=BY_HUB)

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
        text = (
            f"code burned: {MAX_CODE_GUESSES} claims of code {nameplate}-… failed (a wrong "
            "code, or a receiver that left before proving it); it no longer works"
        )
        offered, acts = self.pairing.burn(nameplate, text)
        if offered is not None:
            self.router.deliver(
                offered, m.Error(code=RefusalCode.CODE_BURNED, message=text, rid="")
            )
        self.router.perform(None, "", acts)
