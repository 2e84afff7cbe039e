"""The level the hub asks of pushes (freight.hub.compression): an account's
own, else the hub's, else the sender's wish; lower while the hub is busy."""

from __future__ import annotations

import pytest

from freight.errors import UsageError
from freight.hub.compression import MAX_USERS, CompressionPolicy


def test_the_receivers_choice_in_order() -> None:
    load = [0.2]
    policy = CompressionPolicy(load=lambda: load[0])
    assert policy.choose("max", "bob") == "max"  # auto: the wish
    assert policy.choose("bogus", "bob") == "none"
    policy.set("fast")
    assert policy.choose("max", "bob") == "fast"  # the hub's own
    policy.set("none", "bob")
    assert policy.choose("max", "bob") == "none"  # the account's own
    assert policy.choose("none", "alice") == "fast"
    policy.set("auto", "bob")
    assert policy.choose("max", "bob") == "fast"
    policy.set("max")
    load[0] = 2.4  # busy: one step down
    assert policy.choose("none", "bob") == "fast"
    load[0] = 4.5  # overloaded: nothing
    assert policy.choose("max", "bob") == "none"
    policy.busy = 0  # never steps down
    assert policy.choose("none", "bob") == "max"


def test_bad_levels_and_too_many_accounts_are_refused() -> None:
    policy = CompressionPolicy(load=lambda: 0.0)
    with pytest.raises(UsageError, match="one of auto, none, fast, max"):
        policy.set("ultra")
    for i in range(MAX_USERS):
        policy.set("fast", f"u{i}")
    with pytest.raises(UsageError, match="level of their own already"):
        policy.set("fast", "one-more")
    policy.set("none", "u1")  # changing one that has a level is fine


def test_restore_drops_damage_and_the_flag_wins() -> None:
    saved = {"hub": "max", "users": {"bob": "fast", "eve": "ultra", "5": 7}}
    policy = CompressionPolicy.restore(saved, None)
    assert (policy.hub, policy.users) == ("max", {"bob": "fast"})
    assert CompressionPolicy.restore(saved, "none").hub == "none"
    assert CompressionPolicy.restore({"hub": ["x"], "users": "no"}, None).hub == "auto"
