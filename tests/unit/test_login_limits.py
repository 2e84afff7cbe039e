"""The login limits and the challenge book alone, time passed in: lockouts
double, entries are forgotten when idle and bounded in number, key spaces
stay apart, attempts are counted before the check and one password check
runs per account; outstanding challenges are bounded per name, address and
in all."""

from __future__ import annotations

import contextlib

import pytest

from freight.errors import RateLimited
from freight.hub.challenges import MAX_PER_ADDRESS, MAX_PER_NAME, ChallengeBook
from freight.hub.limiter import Limiter, LoginGuard, Rule, address_key

RULE = Rule(failures=3, window=60, lockout=10, max_lockout=40)


def test_lockouts_double_up_to_the_cap_and_idle_keys_are_forgotten() -> None:
    lim = Limiter()
    key = ("user", "ann", "10.0.0.1")
    now = 1000.0
    waits = []
    for _ in range(4):
        for _ in range(3):
            lim.fail(key, RULE, now)
        waits.append(lim.retry_after(key, now))
        now += waits[-1]
    assert waits == [10, 20, 40, 40]
    # Kept while its strikes may still double; quiet for longer than a
    # window and the longest lockout, nothing is kept.
    lim.fail(("user", "bob", "x"), RULE, now + 1)
    assert len(lim) == 2
    lim.fail(("user", "cy", "x"), RULE, now + 200)
    assert len(lim) == 1


def test_the_table_is_bounded() -> None:
    lim = Limiter(capacity=1000)
    for i in range(5000):
        lim.fail(("agent", f"n{i}", "x"), RULE, 1000.0)
    assert len(lim) == 1000


def test_key_spaces_and_addresses_stay_apart() -> None:
    guard = LoginGuard(lockout=10)
    for _ in range(5):
        with guard.attempt("user", "10.0.0.9", "10.0.0.1", 1000.0):
            pass  # wrong password each time
    with pytest.raises(RateLimited) as info:
        guard.check(guard.keys("user", "10.0.0.9", "10.0.0.1"), 1000.0)
    assert 9 < info.value.retry_after <= 10
    # Not the address named like the user, not another address, not an agent.
    guard.check(guard.keys("user", "admin", "10.0.0.9"), 1000.0)
    guard.check(guard.keys("user", "10.0.0.9", "10.0.0.2"), 1000.0)
    guard.check(guard.keys("agent", "10.0.0.9", "10.0.0.1"), 1000.0)


def test_attempts_count_before_the_check_and_one_runs_per_account() -> None:
    guard = LoginGuard()
    with guard.attempt("user", "ann", "a", 1000.0, exclusive=True):
        with (
            pytest.raises(RateLimited, match="being checked"),
            guard.attempt("user", "ann", "b", 1000.0, exclusive=True),
        ):
            pass
        with guard.attempt("user", "bob", "a", 1000.0, exclusive=True) as other:
            other.succeeded()
    # Four failed, then a fifth attempt is counted before its check: locked.
    for _ in range(4):
        with guard.attempt("user", "cy", "a", 1000.0, exclusive=True):
            pass
    with guard.attempt("user", "cy", "a", 1000.0, exclusive=True) as fifth:
        pass
    with pytest.raises(RateLimited):
        guard.check(guard.keys("user", "cy", "a"), 1000.0)
    # A right password takes its attempt back: the address keeps no count.
    guard = LoginGuard()
    for _ in range(30):
        with guard.attempt("user", "dee", "a", 1000.0) as ok:
            ok.succeeded()
    guard.check(guard.keys("user", "eve", "a"), 1000.0)
    assert not fifth.ok


def test_ipv6_clients_count_by_their_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_key("10.1.2.3") == "10.1.2.3"
    assert address_key(None) == address_key("not an address") == "?"


def test_challenges_are_bounded_per_name_address_and_used_once() -> None:
    book = ChallengeBook()
    mine = [book.issue("lab", "a", 1000.0) for _ in range(MAX_PER_NAME + 3)]
    # Asking again replaced this name's own oldest challenges.
    assert len(book) == MAX_PER_NAME
    assert not book.take(mine[0], "lab", 1000.0)
    assert book.take(mine[-1], "lab", 1000.0)
    assert not book.take(mine[-1], "lab", 1000.0)  # used once
    assert not book.take(mine[-2], "other", 1000.0)  # issued for another name
    for i in range(MAX_PER_ADDRESS - len(book)):
        book.issue(f"n{i}", "a", 1000.0)
    with pytest.raises(RateLimited):
        book.issue("fresh", "a", 1000.0)
    book.issue("lab", "b", 1000.0)  # another address is unaffected
    # All expire after their minute.
    book.issue("lab", "c", 1061.0)
    assert len(book) == 1


def test_checks_under_way_wait_their_turn_and_only_failures_lock() -> None:
    # A fleet behind one NAT enrolling at once: more attempts in flight than
    # the address may fail. Those beyond are told to try again in a second,
    # nobody is locked out, and once the checks passed the address is clear.
    guard = LoginGuard()
    now = 1000.0
    with contextlib.ExitStack() as flight:
        held = [flight.enter_context(guard.attempt("enrol", "", "nat", now)) for _ in range(5)]
        with pytest.raises(RateLimited, match="under way") as busy:
            flight.enter_context(guard.attempt("enrol", "", "nat", now))
        assert busy.value.retry_after == 1.0
        for attempt in held:
            attempt.succeeded()
    guard.check(guard.keys("enrol", "", "nat"), now)  # not locked
    for _ in range(20):  # and the address keeps no count of them
        with guard.attempt("enrol", "", "nat", now) as ok:
            ok.succeeded()
    # Five that fail, in flight together: the address is locked once they
    # are known to have failed.
    with contextlib.ExitStack() as flight:
        for _ in range(5):
            flight.enter_context(guard.attempt("enrol", "", "bad", now))
    with pytest.raises(RateLimited, match="failed enrolments"):
        guard.check(guard.keys("enrol", "", "bad"), now)


def fail_here(guard: LoginGuard, name: str, now: float) -> None:
    with contextlib.suppress(RateLimited), guard.attempt("user", name, "10.0.0.1", now):
        pass  # the check failed: not marked succeeded


def test_a_cluster_node_tells_its_failures_and_counts_what_it_hears() -> None:
    here, there = LoginGuard(), LoginGuard()
    told: list[tuple[str, list[tuple[str, ...]]]] = []
    here.told = lambda kind, keys: told.append((kind, keys))
    for _ in range(3):
        fail_here(here, "ann", 100.0)
    assert told == [("failed", [("user", "ann", "10.0.0.1"), ("user-address", "10.0.0.1")])] * 3
    for _, keys in told:  # as the bus carries them: JSON lists
        there.heard({"failed": [list(k) for k in keys]}, 100.0)
    for _ in range(2):
        fail_here(there, "ann", 100.5)
    with pytest.raises(RateLimited, match="too many failed logins"):
        there.check(there.keys("user", "ann", "10.0.0.1"), 101.0)
    # A success elsewhere clears the account's count here (not the address's).
    ok = LoginGuard()
    ok.heard({"failed": [["user", "bob", "10.0.0.2"]] * 4}, 100.0)
    ok.heard({"cleared": [["user", "bob", "10.0.0.2"], ["user-address", "10.0.0.2"]]}, 100.0)
    assert len(ok.limiter) == 0
    fail_here(ok, "bob", 100.0)  # one failure: far from the five of a lockout
    ok.check(ok.keys("user", "bob", "10.0.0.2"), 100.0)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"failed": "user"},
        {"failed": [["nosuchspace", "ann", "10.0.0.1"]]},
        {"failed": [["user"]]},
        {"failed": [["user", "ann", "10.0.0.1", "extra"]]},
        {"failed": [["user", 5, "10.0.0.1"]]},
        {"failed": [["user", "a" * 257, "10.0.0.1"]]},
        {"cleared": [["user-address", "10.0.0.1"]]},
    ],
)
def test_what_a_node_hears_is_checked(body: object) -> None:
    guard = LoginGuard()
    guard.limiter.fail(("user-address", "10.0.0.1"), guard.rules["user-address"], 1.0)
    guard.heard(body, 1.0)
    assert list(guard.limiter._entries) == [("user-address", "10.0.0.1")]


def test_one_notice_counts_a_few_keys_at_most() -> None:
    guard = LoginGuard()
    guard.heard({"failed": [["user", f"n{i}", "10.0.0.1"] for i in range(1000)]}, 1.0)
    assert len(guard.limiter) == 4


def test_a_success_is_told_only_when_it_clears_a_count() -> None:
    guard = LoginGuard()
    told: list[str] = []
    guard.told = lambda kind, keys: told.append(kind)
    with guard.attempt("user", "ann", "10.0.0.1", 1.0) as attempt:
        attempt.succeeded()
    assert told == []  # nothing counted: nothing to tell
    fail_here(guard, "ann", 2.0)
    with guard.attempt("user", "ann", "10.0.0.1", 3.0) as attempt:
        attempt.succeeded()
    assert told == ["failed", "cleared"]
