"""The rules of self-registration and application approval alone: the
state each --registration mode gives, what a login into an account that is
not active is told, the per-address limit on registrations (time passed
in), and which registrations of a host stand while applications are held."""

from __future__ import annotations

import pytest

from freight.errors import AwaitingApproval, Forbidden, RateLimited
from freight.hub.appgate import AppGate, hold
from freight.hub.approvalrules import login_refusal, registration_state
from freight.hub.limiter import REGISTER_ADDRESS, LoginGuard, address_key
from freight.protocol import messages as m


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


def test_held_applications_are_split_from_the_registrations_that_stand() -> None:
    regs = [
        m.MsgReg(app="chat", interest=1),
        m.MsgReg(app="chat", interest=2, peer="bob"),
        m.MsgReg(app="news", interest=1),
        m.MsgReg(app="spam", interest=1),
    ]
    states = {"chat": "approved", "news": "pending", "spam": "refused"}
    kept, held = hold(regs, states)
    assert kept == regs[:2]
    assert held == {"news": "pending", "spam": "refused"}
    assert hold(regs[:1], {"chat": "approved"}) == (regs[:1], {})


class FakeApps:
    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.asked = 0

    async def request_app(self, name: str, by: str, max_pending: int) -> tuple[str, bool] | None:
        self.asked += 1
        if name in self.rows:
            return self.rows[name], False
        if list(self.rows.values()).count("pending") >= max_pending:
            return None
        self.rows[name] = "pending"
        return "pending", True


class FakeEvents:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, dict[str, object]]] = []

    async def emit(self, kind: str, actor: str, **detail: object) -> None:
        self.emitted.append((kind, actor, detail))


async def test_the_gate_records_new_names_once_and_remembers_approvals() -> None:
    db, events = FakeApps(), FakeEvents()
    gate = AppGate(db, events, max_pending=1)  # type: ignore[arg-type]
    assert await gate.states(["chat", "chat"], "ann") == {"chat": "pending"}
    assert await gate.states(["chat"], "bo") == {"chat": "pending"}
    assert events.emitted == [("app_requested", "ann", {"app": "chat"})]
    # Beyond the bound: held all the same, not recorded.
    assert await gate.states(["news"], "bo") == {"news": "pending"}
    assert "news" not in db.rows
    db.rows["chat"] = "approved"
    gate.decided("chat", "approved")
    asked = db.asked
    assert await gate.states(["chat"], "cy") == {"chat": "approved"}
    assert db.asked == asked  # remembered: the database is not asked
    db.rows["chat"] = "refused"
    gate.decided("chat", "refused")
    assert await gate.states(["chat"], "cy") == {"chat": "refused"}
