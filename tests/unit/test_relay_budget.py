"""The hub's budget over relayed connections (freight.hub.relaybudget):
each moving direction is one more stream sharing the budget, idle ones
stop counting, an unlimited budget costs nothing. Time is passed in."""

from __future__ import annotations

from freight.hub.bandwidth import BandwidthManager, Budget
from freight.hub.relaybudget import IDLE, REFRESH, RelayBudget
from tests.support import Clock


def test_relayed_directions_share_the_budget_with_streams() -> None:
    clock = Clock(100.0)
    bw = BandwidthManager(Budget.parse("12M"))
    budget = RelayBudget(bw, clock=clock, minute=lambda: 600)
    a = budget.bucket("c1", "accept")
    assert a is not None and a.rate == 12 << 20
    bw.register("push:1:s1")  # a push starts
    b = budget.bucket("c2", "dial")
    assert b is not None and b.rate == 4 << 20  # three share it now
    clock.now += REFRESH
    assert budget.bucket("c1", "accept") is a and a.rate == 4 << 20  # re-computed
    budget.forget("c1")
    clock.now += REFRESH
    assert budget.bucket("c2", "dial") is b and b.rate == 6 << 20
    assert len(bw.active) == 2


def test_idle_directions_stop_counting() -> None:
    clock = Clock(100.0)
    bw = BandwidthManager(Budget.parse("8M"))
    budget = RelayBudget(bw, clock=clock, minute=lambda: 0)
    budget.bucket("quiet", "dial")
    clock.now += IDLE + REFRESH
    busy = budget.bucket("busy", "dial")
    assert busy is not None and busy.rate == 8 << 20
    assert len(budget) == 1 and bw.active == {"relay-busy-dial"}


def test_an_unlimited_budget_hands_out_no_bucket_and_lifting_frees_all() -> None:
    clock = Clock(100.0)
    bw = BandwidthManager(Budget.parse("off"))
    budget = RelayBudget(bw, clock=clock, minute=lambda: 0)
    assert budget.bucket("c", "dial") is None
    bw.budget = Budget.parse("1M")
    assert budget.bucket("c", "dial") is None  # seen unlimited a moment ago
    clock.now += REFRESH
    limited = budget.bucket("c", "dial")
    assert limited is not None and limited.rate == 1 << 20
    bw.budget = Budget.parse("off")
    clock.now += REFRESH
    assert budget.bucket("c", "dial") is None
    assert len(budget) == 0 and not bw.active


class SettingsDb:
    def __init__(self, value: str | None) -> None:
        self.value = value

    async def get_setting(self, key: str) -> str | None:
        assert key == "user_caps"
        return self.value


async def test_saved_user_caps_survive_damage() -> None:
    from freight.hub.users import saved_user_caps

    assert await saved_user_caps(SettingsDb('{"3": 2048, "x": 5, "4": -1, "5": "9"}')) == {3: 2048}
    assert await saved_user_caps(SettingsDb("not json")) == {}
    assert await saved_user_caps(SettingsDb("[1, 2]")) == {}
    assert await saved_user_caps(SettingsDb(None)) == {}
