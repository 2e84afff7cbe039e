"""Sending and receiving files under a one-time code: the sender offers a
code and waits for a receiver that proves it; both ends ride out drops and
restarts (a stopped sender resumes with the same code)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CodeUnknown, ConnectionEnded, SenderRestarted
from ..protocol.e2e import MAX_CODE_GUESSES, WrongCode
from ..protocol.errors import ProtocolError
from .listener import Listener, split_code
from .receiving import Consent, Destination, receive_entries, refuse_to_replace
from .relay import Connection, RelayClient
from .sendrecv import Entry, Reporter, Shaping, Summary, send_entries
from .words import new_code_words

# A claim that has linked proves its code within this, or counts as failed
# (it also holds the code: nobody else can claim it meanwhile).
HANDSHAKE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Offered:
    """A code the hub granted: give ``code`` to the receiver."""

    code: str
    expires_in: float


async def _handshake(conn: Connection, offer: Listener, reporter: Reporter) -> bool:
    """Wait for a claim to prove the code; False (and a notice) if it did not.
    Each failed claim counts: the offer ends after MAX_CODE_GUESSES."""
    try:
        await conn.wait_established(HANDSHAKE_TIMEOUT)
        return True
    except TimeoutError:
        await conn.abort("timeout", "the code handshake took too long")
        why = "a receiver did not prove the code in time"
    except WrongCode:
        why = "someone tried a wrong code"
    except (ConnectionEnded, ProtocolError):
        why = "a receiver left before proving the code"
    reporter.notice(
        f"{why} ({offer.failures} of {MAX_CODE_GUESSES} failed claims allowed); still waiting"
    )
    return False


async def send_with_code(
    relay: RelayClient,
    entries: list[Entry],
    reporter: Reporter,
    *,
    code: str | None = None,
    ttl: float = 3600.0,
    on_code: Callable[[Offered], object] | None = None,
    on_connection: Callable[[], object] | None = None,
    shaping: Shaping | None = None,
) -> Summary:
    """Offer ``entries`` under a new code (or ``code``, to resume a stopped
    send), tell ``on_code`` the code, and send to the first receiver that
    proves it; a receiver that drops is waited for again until the code
    expires. ``on_connection`` is called each time a receiver's claim
    arrives. ``relay`` must be started."""
    nameplate, words = split_code(code) if code else ("", new_code_words())
    offer = await relay.offer(words, nameplate, ttl)
    if on_code is not None:
        on_code(Offered(offer.code, offer.expires_in))
    deadline = time.monotonic() + offer.expires_in
    while True:
        try:
            conn = await asyncio.wait_for(offer.accept(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise CodeUnknown(
                f"code {offer.code} expired before the transfer finished",
                hint="run freight send again for a new code; --ttl sets how long it lasts",
            ) from None
        try:
            if on_connection is not None:
                on_connection()
            if await _handshake(conn, offer, reporter):
                summary = await send_entries(conn, entries, reporter, shaping=shaping)
                await conn.close()
                return summary
        except ConnectionEnded as exc:
            reporter.notice(f"{exc.message}; waiting for the receiver to come back")
        finally:
            await _abandon(conn)


async def receive_with_code(
    relay: RelayClient,
    code: str,
    dest: Destination,
    reporter: Reporter,
    *,
    consent: Consent = refuse_to_replace,
    on_connection: Callable[[], object] | None = None,
    on_restart: Callable[[], object] | None = None,
    shaping: Shaping | None = None,
) -> Summary:
    """Claim ``code`` and receive what its sender offers into ``dest``,
    resuming when the sender starts again (``on_restart`` is told, else the
    reporter's notice). ``on_connection`` is called after each claim.
    ``relay`` must be started."""
    while True:
        conn = await relay.claim(code)
        try:
            if on_connection is not None:
                on_connection()
            summary = await receive_entries(conn, dest, reporter, consent=consent, shaping=shaping)
            await conn.close()
            return summary
        except SenderRestarted:
            # Branch on the hub's code (sender_restarted), not its words.
            if on_restart is not None:
                on_restart()
            else:
                reporter.notice("the sender started again; resuming")
        finally:
            await _abandon(conn)


async def _abandon(conn: Connection) -> None:
    """Hang up a connection whose transfer did not finish (an error,
    Ctrl-C) as ``aborted``: the hub keeps the code open for a resume
    (``closed`` would mark it finished)."""
    if not conn.closed:
        await conn.abort("aborted", "the transfer stopped before it finished")
