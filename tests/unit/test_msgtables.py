"""A messaging host's tables: the seed's match examples, the bounds, the
announce set, the dedupe window and the aggregation of answers, with
hypothesis against reference models."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.protocol.msgtables import (
    MAX_ANNOUNCED,
    REASON_PRIORITY,
    Dedupe,
    RegistrationRefused,
    Registrations,
    Tally,
    aggregate,
    worst,
)
from tests.support import Clock

HID = "ab" * 16
TICKET = re.compile(r"^[0-9a-f]{32}\.[0-9a-f]{1,16}$")  # messages.Ticket


@pytest.fixture
def seed() -> tuple[Registrations, str, str, str]:
    regs = Registrations(HID)
    a = regs.add("sensors", 0xFFFFFFFF).ticket
    b = regs.add("sensors", 0x12340000).ticket
    c = regs.add("sensors", 0xFFFF0000).ticket
    return regs, a, b, c


def test_the_seed_examples(seed: tuple[Registrations, str, str, str]) -> None:
    regs, a, b, c = seed
    assert regs.match("sensors", 0x12340000, "bob").tickets == (a, b, c)
    assert regs.match("sensors", 0x00002222, "bob").tickets == (a,)
    assert regs.match("sensors", 0x00001234, "bob").tickets == (a,)


def test_the_seed_examples_with_a_ticket(seed: tuple[Registrations, str, str, str]) -> None:
    regs, a, b, c = seed
    assert regs.match("sensors", 0x12340000, "bob", b).tickets == (b,)
    assert regs.match("sensors", 0x00002222, "bob", a).tickets == (a,)
    miss = regs.match("sensors", 0x00002222, "bob", b)
    assert miss.tickets == ()
    assert miss.reason == "no_interest"
    miss = regs.match("sensors", 0x00001234, "bob", c)
    assert miss.tickets == ()
    assert miss.reason == "no_interest"


def test_reasons_when_nothing_matches(seed: tuple[Registrations, str, str, str]) -> None:
    regs, a, b, _ = seed
    assert regs.match("other", 0xFFFFFFFF, "bob").reason == "no_app"
    assert regs.match("sensors", 0, "bob").reason == "no_interest"  # type 0 never matches
    assert regs.match("other", 0x12340000, "bob", b).reason == "ticket_gone"
    assert regs.match("sensors", 0x12340000, "bob", f"{HID}.ff").reason == "ticket_gone"
    regs.remove(a)
    assert regs.match("sensors", 0x00002222, "bob").reason == "no_interest"
    assert regs.match("sensors", 0x00002222, "bob", a).reason == "ticket_gone"


def test_peer_filters() -> None:
    regs = Registrations(HID)
    only_bob = regs.add("chat", 0xFF, peer="bob").ticket
    assert regs.match("chat", 0x01, "bob").tickets == (only_bob,)
    assert regs.match("chat", 0x01, "carol").reason == "forbidden"
    assert regs.match("chat", 0x01, "carol", only_bob).reason == "forbidden"
    regs.add("chat", 0xFF00)  # open to all, other types: carol is told no_interest
    assert regs.match("chat", 0x01, "carol").reason == "no_interest"


def test_tickets_name_the_host_and_are_never_reused() -> None:
    regs = Registrations(HID)
    first = regs.add("a", 1)
    regs.remove(first.ticket)
    second = regs.add("a", 1)
    assert TICKET.match(first.ticket)
    assert first.ticket.startswith(HID + ".")
    assert second.ticket != first.ticket
    assert first.ticket not in regs


def test_bounds_per_connection_and_per_host() -> None:
    regs = Registrations(HID)
    app_conn = object()
    for i in range(256):
        regs.add("a", i + 1, owner=app_conn)
    with pytest.raises(RegistrationRefused, match="at most 256 registrations per connection"):
        regs.add("a", 1, owner=app_conn)
    small = Registrations(HID, per_owner=10, per_host=20)
    for i in range(20):
        small.add("a", 1, owner=i // 10)
    with pytest.raises(RegistrationRefused, match="at most 20 registrations per host"):
        small.add("a", 1, owner="another")
    assert len(small) == 20


def test_refused_registrations() -> None:
    regs = Registrations(HID)
    with pytest.raises(RegistrationRefused, match="other than 0"):
        regs.add("a", 0)
    with pytest.raises(RegistrationRefused, match="32-bit"):
        regs.add("a", 1 << 32)
    with pytest.raises(RegistrationRefused, match="application name"):
        regs.add("", 1)
    assert len(regs) == 0


def test_drop_owner_removes_only_its_registrations() -> None:
    regs = Registrations(HID)
    one, two = object(), object()
    kept = regs.add("a", 1, owner=one).ticket
    for _ in range(3):
        regs.add("a", 1, owner=two)
    assert len(regs.drop_owner(two)) == 3
    assert [r.ticket for r in regs.all()] == [kept]
    for _ in range(256):  # its quota is free again
        regs.add("b", 1, owner=two)


def test_announce_is_the_union_per_app_and_peer_without_local_ones() -> None:
    regs = Registrations(HID)
    regs.add("sensors", 0x12340000)
    regs.add("sensors", 0x0000FFFF)
    regs.add("sensors", 0x1, peer="bob")
    regs.add("sensors", 0x80000000, announced=False)  # a reply registration
    assert regs.announce() == [("sensors", 0x1, "bob"), ("sensors", 0x1234FFFF, "*")]


def test_at_most_256_announced_pairs() -> None:
    regs = Registrations(HID)
    for i in range(MAX_ANNOUNCED):
        regs.add(f"app{i}", 1, owner=i)
    with pytest.raises(RegistrationRefused, match="pairs per host"):
        regs.add("one-more", 1)
    regs.add("app0", 2)  # a pair already announced is fine
    regs.add("one-more", 1, announced=False)  # so is a local one
    assert len(regs.announce()) == MAX_ANNOUNCED


# --- hypothesis: the match rule against a reference model --------------------------

APPS = ("a", "b", "c")
ACCOUNTS = ("bob", "carol")
interests = st.integers(1, 0xFFFFFFFF) | st.sampled_from([1, 0x10, 0xFF00, 0xFFFFFFFF])
types = st.integers(0, 0xFFFFFFFF) | st.sampled_from([0, 1, 0x10, 0x100, 0xFFFFFFFF])
reg_specs = st.lists(
    st.tuples(st.sampled_from(APPS), interests, st.sampled_from(("*", *ACCOUNTS))), max_size=12
)


def reference(
    regs: list[tuple[str, str, int, str]], app: str, type_: int, account: str, ticket: str
) -> tuple[tuple[str, ...], str]:
    """The seed's rule, written out on its own: (tickets, reason)."""
    if ticket:
        found = [r for r in regs if r[0] == ticket]
        if not found or found[0][1] != app:
            return (), "ticket_gone"
        _, _, interest, peer = found[0]
        if peer not in ("*", account):
            return (), "forbidden"
        return ((ticket,), "") if interest & type_ else ((), "no_interest")
    of_app = [r for r in regs if r[1] == app]
    hits = tuple(t for t, _, i, p in of_app if i & type_ and p in ("*", account))
    if hits:
        return hits, ""
    if not of_app:
        return (), "no_app"
    # Nothing matched: "no_interest" unless every registration of the app
    # shuts this account out.
    if any(p in ("*", account) for _, _, _, p in of_app):
        return (), "no_interest"
    return (), "forbidden"


@settings(max_examples=300, deadline=None)
@given(
    specs=reg_specs,
    removed=st.lists(st.integers(0, 11), max_size=4),
    app=st.sampled_from(APPS),
    type_=types,
    account=st.sampled_from(ACCOUNTS),
    pick=st.none() | st.integers(0, 13),
)
def test_match_agrees_with_the_reference(
    specs: list[tuple[str, int, str]],
    removed: list[int],
    app: str,
    type_: int,
    account: str,
    pick: int | None,
) -> None:
    regs = Registrations(HID)
    model = [(regs.add(a, i, peer=p).ticket, a, i, p) for a, i, p in specs]
    for idx in removed:
        if idx < len(model):
            regs.remove(model[idx][0])
    gone = {model[idx][0] for idx in removed if idx < len(model)}
    live = [r for r in model if r[0] not in gone]
    if pick is None:
        ticket = ""
    elif pick < len(model):
        ticket = model[pick][0]
    else:
        ticket = f"{HID}.{pick + 100:x}"  # never issued
    got = regs.match(app, type_, account, ticket)
    assert (got.tickets, got.reason) == reference(live, app, type_, account, ticket)
    union: dict[tuple[str, str], int] = {}
    for _, a, i, p in live:
        union[(a, p)] = union.get((a, p), 0) | i
    assert regs.announce() == sorted((a, i, p) for (a, p), i in union.items())


# --- dedupe ------------------------------------------------------------------------


def test_dedupe_pending_then_answered_with_the_count() -> None:
    clock = Clock()
    d = Dedupe(clock)
    mid = "1" * 32
    assert d.get(mid) is None
    d.begin(mid)
    seen = d.get(mid)
    assert seen is not None
    assert not seen.answered
    d.answer(mid, 3)
    seen = d.get(mid)
    assert seen is not None
    assert seen.answered
    assert seen.count == 3
    d.forget(mid)
    assert d.get(mid) is None


def test_dedupe_keeps_ten_minutes_even_beyond_the_id_count() -> None:
    clock = Clock()
    d = Dedupe(clock, seconds=600, ids=100, cap=10_000)
    for i in range(1000):
        d.answer(f"{i:032x}", 1)
    assert len(d) == 1000  # all within ten minutes
    clock.now += 601
    d.answer("f" * 32, 1)
    assert len(d) == 100  # old ones go down to the id window
    assert d.get(f"{999:032x}") is not None
    assert d.get(f"{0:032x}") is None


def test_dedupe_has_a_hard_cap() -> None:
    clock = Clock()
    d = Dedupe(clock, seconds=600, ids=100, cap=500)
    for i in range(2000):
        d.answer(f"{i:032x}", 1)
    assert len(d) == 500
    assert d.get(f"{1999:032x}") is not None


def test_dedupe_loads_remembered_ids() -> None:
    clock = Clock()
    d = Dedupe(clock)
    d.load("2" * 32, clock.now - 5, 2, "")
    seen = d.get("2" * 32)
    assert seen is not None
    assert seen.count == 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.floats(0, 100)), min_size=1, max_size=60))
def test_dedupe_window_against_a_model(steps: list[tuple[int, float]]) -> None:
    clock = Clock()
    d = Dedupe(clock, seconds=120, ids=30, cap=200)
    history: list[tuple[str, float]] = []
    n = 0
    for batch, advance in steps:
        clock.now += advance
        for _ in range(batch):
            mid = f"{n:032x}"
            n += 1
            d.answer(mid, 1)
            history.append((mid, clock.now))
        assert len(d) <= 200
        # The last 30 ids, and every id younger than 120 s, are known
        # (unless the hard cap pushed them out).
        for mid, _at in history[-30:]:
            assert d.get(mid) is not None
        young = [mid for mid, at in history if clock.now - at <= 120][-200:]
        for mid in young:
            assert d.get(mid) is not None


# --- aggregation -------------------------------------------------------------------


def test_reason_priority() -> None:
    assert REASON_PRIORITY[0] == "busy"
    assert worst(["no_host", "no_app", "forbidden"]) == "forbidden"
    assert worst(["no_app", "no_interest", "ticket_gone"]) == "ticket_gone"
    assert worst(["ticket_gone", "retry"]) == "retry"
    assert worst(["retry", "busy", "no_host"]) == "busy"
    assert worst([]) == ""


def test_aggregate_sums_counts_or_names_the_worst_reason() -> None:
    assert aggregate([(2, ""), (0, "no_app"), (3, "")]) == (5, "")
    assert aggregate([(0, "no_app"), (0, "no_interest")]) == (0, "no_interest")
    assert aggregate([]) == (0, "no_host")


def test_tally_retries_transient_hosts_only() -> None:
    t = Tally()
    assert t.expect(["h1", "h2", "h3"]) == ["h1", "h2", "h3"]
    assert t.record("h1", 2, "")
    assert t.record("h2", 0, "busy")
    assert not t.record("h9", 1, "")  # not sent to
    assert t.waiting == ["h3"]
    assert t.transient == ["h2"]
    assert not t.complete
    assert t.record("h3", 0, "no_interest")
    assert not t.record("h3", 5, "")  # a final answer stays
    assert t.expect(["h1", "h2", "h3"]) == ["h2"]
    assert t.record("h2", 1, "")
    assert t.complete
    assert t.result() == (3, "")


def test_tally_without_a_count_names_the_worst_or_timeout() -> None:
    t = Tally()
    t.expect(["h1", "h2"])
    t.record("h1", 0, "no_app")
    assert t.result() == (0, "no_app")  # h2 never answered: no_app still outranks
    t2 = Tally()
    t2.expect(["h1"])
    assert t2.result() == (0, "timeout")
    t3 = Tally(route_reason="no_host")
    assert t3.result() == (0, "no_host")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([*REASON_PRIORITY, ""])),
        min_size=1,
        max_size=10,
    )
)
def test_aggregate_against_a_model(answers: list[tuple[int, str]]) -> None:
    total = sum(c for c, _ in answers)
    count, reason = aggregate(answers)
    assert count == total
    if total:
        assert reason == ""
    else:
        present = [r for _, r in answers if r]
        expected = min(present, key=REASON_PRIORITY.index) if present else "no_host"
        assert reason == expected
