"""What waits for incoming relayed connections: a :class:`Listener` for an
application (``listen``) or a code offer (``freight send``), and the code
format. A code offer also counts failed claims (docs/protocol.md 12.2)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from ..errors import CodeBurned, FreightError, UsageError
from ..logs import fields
from ..protocol import messages as m
from ..protocol.e2e import MAX_CODE_GUESSES, CodeHandshake, Handshake

if TYPE_CHECKING:
    from .relay import Connection, RelayClient

log = logging.getLogger("freight.relay")

# Connections linked but not yet accepted by the application; a dialer
# beyond this is turned away (``busy``) rather than held in memory.
MAX_PENDING = 64
ACCEPT_TURNS = 3  # turns of the event loop a full listener's application gets to accept


class Listener:
    """Incoming connections for an application (or a code offer)."""

    def __init__(self, client: RelayClient, app: str, peer: str = "*", code: str = "") -> None:
        self.client = client
        self.app = app
        self.peer = peer
        self.code = code  # a code offer's full code (NAMEPLATE-words)
        self.nameplate = ""
        self.expires_in = 0.0
        self.failures = 0  # claims of a code offer that failed
        self.failure: FreightError | None = None  # why no more come
        self._pending: deque[Connection] = deque()
        self._changed = asyncio.Event()

    @property
    def full(self) -> bool:
        return len(self._pending) >= MAX_PENDING

    def deliver(self, conn: Connection) -> None:
        self._pending.append(conn)
        self._changed.set()

    def fail(self, exc: FreightError) -> None:
        """No more connections will come: ``accept`` raises ``exc`` once
        those already here are taken."""
        if self.failure is None:
            self.failure = exc
        self._changed.set()

    def claim_failed(self) -> None:
        """A claim linked and did not prove the code. After MAX_CODE_GUESSES
        the offer ends here, whatever the hub counts."""
        if self.failures >= MAX_CODE_GUESSES:
            return  # already ended
        self.failures += 1
        log.debug("claim failed", extra=fields(nameplate=self.nameplate, failures=self.failures))
        if self.failures == MAX_CODE_GUESSES:
            self.client.offers.pop(self.nameplate, None)
            self.fail(
                CodeBurned(
                    f"code burned: {MAX_CODE_GUESSES} claims of code {self.nameplate}-… failed "
                    "(a wrong code, or a receiver that left before proving it); "
                    "it no longer works"
                )
            )

    async def accept(self) -> Connection:
        while not self._pending:
            if self.failure is not None:
                raise self.failure
            self._changed.clear()
            await self._changed.wait()
        return self._pending.popleft()

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Connection]:
        while True:
            yield await self.accept()

    async def aclose(self) -> None:
        if self.nameplate:
            self.client.offers.pop(self.nameplate, None)
        else:
            self.client.listeners.pop(self.app, None)
            with contextlib.suppress(FreightError):
                await self.client.send_frame(m.Unlisten(rid=secrets.token_hex(6), app=self.app))


def split_code(code: str) -> tuple[str, str]:
    """``7-crossbow-gazelle-tulip`` → (``7``, ``crossbow-gazelle-tulip``)."""
    nameplate, _, words = code.strip().partition("-")
    if not re.fullmatch(r"[0-9]{1,12}", nameplate) or not words:
        raise UsageError(f"{code!r} is not a code like 7-crossbow-gazelle-tulip")
    return nameplate, words


def code_handshake(code: str) -> Callable[[Connection], Handshake]:
    """The handshake of each connection made by a one-time code: both ends
    prove they know ``code`` (a PAKE), bound to the connection's role and
    application."""

    def make(conn: Connection) -> Handshake:
        return CodeHandshake(code, conn.role, conn.app.encode())

    return make


async def turns_to_accept(listener: Listener | None) -> None:
    """Connections linked in a burst can fill a listener before its
    application's accept loop has had a turn: give it some before the next
    one is turned away as busy."""
    for _ in range(ACCEPT_TURNS):
        if listener is None or not listener.full:
            return
        await asyncio.sleep(0)
