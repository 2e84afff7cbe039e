"""The rules of self-registration alone: the state each --registration mode
gives, what a login into an account that is not active is told, and the
per-address limit on registrations (time passed in)."""

from __future__ import annotations

import pytest

from freight.errors import AwaitingApproval, Forbidden, RateLimited
from freight.hub.approvalrules import login_refusal, registration_state
from freight.hub.limiter import REGISTER_ADDRESS, LoginGuard, address_key


def test_each_mode_gives_its_state_and_off_refuses() -> None:
    assert registration_state("open") == "active"
    assert registration_state("approval") == "pending"
    with pytest.raises(Forbidden, match="self-registration is off on this hub"):
        registration_state("off")


def test_only_an_active_account_logs_in_and_the_others_are_told_why() -> None:
    assert login_refusal("active") is None
    waiting = login_refusal("pending")
    assert isinstance(waiting, AwaitingApproval) and waiting.code == "awaiting_approval"
    assert waiting.message == "your account waits for an administrator's approval"
    refused = login_refusal("refused")
    assert isinstance(refused, Forbidden) and not isinstance(refused, AwaitingApproval)
    assert "refused by an administrator" in refused.message


def register_once(guard: LoginGuard, address: str, now: float) -> None:
    with guard.attempt("register", "", address_key(address), now):
        pass  # never forgiven: every registration counts


def test_registrations_are_limited_per_address_and_not_per_name() -> None:
    guard = LoginGuard(lockout=30.0)
    now = 1000.0
    for _ in range(REGISTER_ADDRESS.failures):
        register_once(guard, "10.0.0.1", now)
    with pytest.raises(RateLimited, match="too many registrations from this address") as exc:
        register_once(guard, "10.0.0.1", now + 1)
    assert exc.value.retry_after == pytest.approx(29.0)
    register_once(guard, "10.0.0.2", now + 1)  # another address is not held back
    # An IPv6 client counts by its /64: one subscriber cannot rotate round it.
    for i in range(REGISTER_ADDRESS.failures):
        register_once(guard, f"2001:db8::{i + 1}", now)
    with pytest.raises(RateLimited):
        register_once(guard, "2001:db8::ffff", now)
    # A password login from the locked-out address is another key space.
    with guard.attempt("user", "ann", address_key("10.0.0.1"), now + 2) as attempt:
        attempt.succeeded()
    register_once(guard, "10.0.0.1", now + 31)  # the lockout ends
