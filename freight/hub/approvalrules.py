"""The rules of self-registration and approvals, without I/O: which state a
registration gets under each ``freight hub --registration`` mode, and what
a login into an account that is not active is told (only once its password
is verified, so a guesser learns nothing)."""

from __future__ import annotations

from ..errors import AwaitingApproval, Forbidden, FreightError
from ..store.approvals import ACTIVE, PENDING, REFUSED

REGISTRATION_MODES = ("off", "open", "approval")


def registration_state(mode: str) -> str:
    """The state a new account gets under ``mode``; Forbidden when off."""
    if mode == "open":
        return ACTIVE
    if mode == "approval":
        return PENDING
    raise Forbidden("self-registration is off on this hub; ask an admin for an account")


def login_refusal(state: str) -> FreightError | None:
    """Why an account in ``state`` may not log in (None: it may)."""
    if state == ACTIVE:
        return None
    if state == PENDING:
        return AwaitingApproval("your account waits for an administrator's approval")
    if state == REFUSED:
        return Forbidden("your registration was refused by an administrator")
    return Forbidden(f"this account is {state}; ask an admin")
