"""Which application names messaging hosts may register when the hub runs
with ``--app-approval``: an approved name passes; the first registration of
an unknown one records it pending (bounded) and is held, as is a refused
one, until an admin decides (``POST /v1/apps/{name}/approve|refuse``).

Approved names are remembered in memory (the common case asks nothing of
the database); every other state is read from it. A decision reaches the
hosts that announced the name at once (:meth:`.Messaging.decided`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..protocol import messages as m
from ..store.approvals import APPROVED, PENDING
from .observe import EventLog


class AppStates(Protocol):
    async def request_app(
        self, name: str, by: str, max_pending: int
    ) -> tuple[str, bool] | None: ...


def hold(regs: Iterable[m.MsgReg], states: dict[str, str]) -> tuple[list[m.MsgReg], dict[str, str]]:
    """Split a host's registrations by their applications' states: those
    that stand, and the applications held (pending or refused), by name."""
    kept = [r for r in regs if states.get(r.app) == APPROVED]
    return kept, {a: s for a, s in sorted(states.items()) if s != APPROVED}


class AppGate:
    def __init__(self, db: AppStates, events: EventLog, max_pending: int) -> None:
        self.db = db
        self.events = events
        self.max_pending = max_pending
        self.approved: set[str] = set()

    async def states(self, names: Iterable[str], account: str) -> dict[str, str]:
        """Each application's state; an unknown one is recorded pending as
        first asked for by ``account`` (an event), or, with the pending
        ones at their bound, held unrecorded (an admin may still approve it)."""
        out: dict[str, str] = {}
        for name in sorted(set(names)):
            if name in self.approved:
                out[name] = APPROVED
                continue
            got = await self.db.request_app(name, account, self.max_pending)
            state, new = got if got is not None else (PENDING, False)
            if state == APPROVED:
                self.approved.add(name)
            elif new:
                await self.events.emit("app_requested", account, app=name)
            out[name] = state
        return out

    def decided(self, name: str, state: str) -> None:
        if state == APPROVED:
            self.approved.add(name)
        else:
            self.approved.discard(name)
