"""The hub's messaging directory (protocol/msgdirectory.py), fed inputs:
hosts announcing themselves, routes with their reasons, the in-flight table
and its bounds, hosts going; and checked against a plain reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from freight.protocol import messages as m
from freight.protocol.frames import encode_header
from freight.protocol.limits import MAX_HEADER_BYTES
from freight.protocol.msgdirectory import (
    MAX_SEALED,
    PRIORITY,
    Directory,
    Hello,
    Taken,
    Throttle,
    fit_route,
    worst,
)

KEY = "ab" * 32
SIG = "cd" * 64


def hid(n: int) -> str:
    return f"{n:032x}"


def mid(n: int) -> str:
    return f"{n + 0x1000:032x}"


def reg(app: str, interest: int, peer: str = "*") -> m.MsgReg:
    return m.MsgReg(app=app, interest=interest, peer=peer)


def hello(regs: list[m.MsgReg]) -> m.MsgHello:
    return m.MsgHello(rid="r", key=KEY, sig=SIG, identity=KEY, regs=regs)


def announce(
    d: Directory, handle: object, account: str, n: int, regs: list[m.MsgReg], now: float = 100.0
) -> Hello:
    out = d.hello(handle, account, hello(regs), hid(n), now)
    assert isinstance(out, Hello)
    return out


def send(n: int, to: int, app: str = "chat", type: int = 1) -> m.MsgSend:
    return m.MsgSend(id=mid(n), to=hid(to), app=app, type=type)


def ready() -> Directory:
    return Directory(started=0.0, warmup=10.0)


# --- the seed's match examples ---------------------------------------------------


def test_seed_interests_against_seed_types() -> None:
    """Interests 0xFFFFFFFF, 0x12340000, 0xFFFF0000 against types
    0x12340000, 0x00002222, 0x00001234: a host takes a type when some
    registration's interest shares a bit with it."""
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 0xFFFFFFFF)])
    announce(d, "b", "alice", 2, [reg("chat", 0x12340000)])
    announce(d, "c", "alice", 3, [reg("chat", 0xFFFF0000)])
    expected = {
        0x12340000: [hid(1), hid(2), hid(3)],
        0x00002222: [hid(1)],
        0x00001234: [hid(1)],
    }
    for type, hosts in expected.items():
        route = d.resolve("bob", "alice", "chat", type, 100.0)
        assert [h.hid for h in route.hosts] == hosts, hex(type)
        assert route.reason == ""
        star = d.resolve("bob", "*", "chat", type, 100.0)
        assert [h.hid for h in star.hosts] == hosts, hex(type)


def test_a_host_without_the_types_interest_is_no_interest() -> None:
    d = ready()
    announce(d, "b", "alice", 2, [reg("chat", 0x12340000)])
    announce(d, "c", "alice", 3, [reg("chat", 0xFFFF0000)])
    route = d.resolve("bob", "alice", "chat", 0x00001234, 100.0)
    assert route.hosts == ()
    assert route.reason == "no_interest"
    assert d.resolve("bob", "alice", "chat", 0, 100.0).reason == "no_interest"


# --- routes and their reasons -------------------------------------------------------


def test_reasons_for_empty_routes() -> None:
    d = ready()
    assert d.resolve("bob", "alice", "chat", 1, 100.0).reason == "no_host"
    assert d.resolve("bob", "*", "chat", 1, 100.0).reason == "no_host"
    assert d.resolve("bob", "host:" + hid(9), "", 0, 100.0).reason == "no_host"
    announce(d, "a", "alice", 1, [reg("files", 1), reg("chat", 1, peer="carol")])
    assert d.resolve("bob", "alice", "mail", 1, 100.0).reason == "no_app"
    assert d.resolve("bob", "*", "mail", 1, 100.0).reason == "no_app"
    assert d.resolve("bob", "alice", "chat", 1, 100.0).reason == "forbidden"
    assert d.resolve("bob", "*", "chat", 1, 100.0).reason == "forbidden"
    assert d.resolve("bob", "alice", "files", 2, 100.0).reason == "no_interest"
    assert [h.hid for h in d.resolve("carol", "alice", "chat", 1, 100.0).hosts] == [hid(1)]


def test_no_interest_outranks_forbidden_across_hosts() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 1, peer="carol")])
    announce(d, "b", "alice", 2, [reg("chat", 2)])
    assert d.resolve("bob", "alice", "chat", 1, 100.0).reason == "no_interest"


def test_a_host_dest_is_that_host_unfiltered() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 1, peer="carol")])
    route = d.resolve("bob", "host:" + hid(1), "mail", 8, 100.0)
    assert [h.hid for h in route.hosts] == [hid(1)]
    info = route.hosts[0].info()
    assert info.account == "alice"
    assert info.key == KEY
    assert d.resolve("bob", "host:" + hid(1), "", 0, 100.0).hosts[0].hid == hid(1)


def test_an_account_dest_without_app_lists_its_hosts() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [])
    announce(d, "b", "alice", 2, [reg("chat", 1)])
    assert [h.hid for h in d.resolve("bob", "alice", "", 0, 100.0).hosts] == [hid(1), hid(2)]
    assert d.resolve("bob", "*", "", 0, 100.0).reason == "no_app"


def test_warm_up_answers_retry_for_accounts_and_hosts_not_for_star() -> None:
    d = Directory(started=50.0, warmup=10.0)
    assert d.resolve("bob", "alice", "chat", 1, 55.0).reason == "retry"
    assert d.resolve("bob", "host:" + hid(1), "", 0, 55.0).reason == "retry"
    assert d.resolve("bob", "*", "chat", 1, 55.0).reason == "no_host"
    assert d.resolve("bob", "alice", "chat", 1, 60.0).reason == "no_host"


def test_peer_filter_admits_only_the_named_account() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 1, peer="bob")])
    assert [h.hid for h in d.resolve("bob", "*", "chat", 1, 100.0).hosts] == [hid(1)]
    assert d.resolve("carol", "*", "chat", 1, 100.0).reason == "forbidden"


def test_worst_follows_the_priority_order() -> None:
    assert worst([]) == ""
    for i, reason in enumerate(PRIORITY):
        assert worst(PRIORITY[i:]) == reason
    assert worst(["no_host", "busy", "no_app"]) == "busy"


# --- hello -----------------------------------------------------------------------


def test_hello_again_replaces_the_registrations_and_reports_a_change() -> None:
    d = ready()
    first = announce(d, "a", "alice", 1, [reg("chat", 1), reg("chat", 2)])
    assert first.changed
    assert first.host.regs == (reg("chat", 3),)
    same = announce(d, "a", "alice", 1, [reg("chat", 3)])
    assert not same.changed
    moved = announce(d, "a", "alice", 1, [reg("mail", 1)])
    assert moved.changed
    assert d.resolve("bob", "*", "chat", 1, 100.0).reason == "no_app"
    assert [h.hid for h in d.resolve("bob", "*", "mail", 1, 100.0).hosts] == [hid(1)]


def test_another_accounts_host_id_is_taken() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [])
    out = d.hello("b", "mallory", hello([]), hid(1), 100.0)
    assert out == Taken("alice")
    assert d.hosts[hid(1)].handle == "a"


def test_a_reattach_replaces_the_old_attachment_and_retries_its_flights() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 1)])
    announce(d, "s", "bob", 2, [])
    assert d.send("s", send(1, 1), 10) == ("", d.hosts[hid(1)])
    again = announce(d, "a2", "alice", 1, [reg("chat", 1)])
    assert again.retry == ((hid(2), mid(1)),)
    assert d.host_of("a") is None
    assert d.detach("a") == (None, ())  # the old attachment's late detach
    assert d.hosts[hid(1)].handle == "a2"
    assert d.hosts[hid(2)].out_count == 0


# --- in flight -------------------------------------------------------------------


def test_send_result_and_refusals() -> None:
    d = ready()
    assert d.send("s", send(1, 1), 10) == ("not_host", None)
    announce(d, "s", "bob", 2, [])
    assert d.send("s", send(1, 1), 10) == ("no_host", None)
    announce(d, "a", "alice", 1, [reg("chat", 1)])
    assert d.send("s", send(1, 1), MAX_SEALED + 1) == ("too_large", None)
    reason, receiver = d.send("s", send(1, 1), MAX_SEALED)
    assert reason == ""
    assert receiver is d.hosts[hid(1)]
    assert d.hosts[hid(1)].in_bytes == MAX_SEALED
    answer = d.result("a", m.MsgResult(id=mid(1), count=2))
    assert answer is not None
    assert answer.sender.hid == hid(2)
    assert answer.receiver.hid == hid(1)
    assert d.result("a", m.MsgResult(id=mid(1), count=2)) is None  # answered already
    assert d.flights == {}
    sender, receiver2 = d.hosts[hid(2)], d.hosts[hid(1)]
    assert (sender.sent, sender.refused, sender.out_count, sender.out_bytes) == (1, 2, 0, 0)
    assert (receiver2.delivered, receiver2.in_count, receiver2.in_bytes) == (1, 0, 0)


def test_a_result_from_another_host_does_not_land_a_flight() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [])
    announce(d, "s", "bob", 2, [])
    d.send("s", send(1, 1), 5)
    assert d.result("s", m.MsgResult(id=mid(1), count=1)) is None
    assert d.result("x", m.MsgResult(id=mid(1), count=1)) is None
    assert len(d.flights) == 1


def test_the_in_flight_bounds_answer_busy() -> None:
    d = Directory(started=0.0, max_inflight=3, max_inflight_bytes=100)
    announce(d, "a", "alice", 1, [])
    announce(d, "s", "bob", 2, [])
    announce(d, "t", "bob", 3, [])
    for i in range(3):
        assert d.send("s", send(i, 1), 1)[0] == ""
    assert d.send("s", send(3, 1), 1)[0] == "busy"  # the receiver's count
    assert d.send("t", send(4, 1), 1)[0] == "busy"
    d.result("a", m.MsgResult(id=mid(0), count=1))
    assert d.send("t", send(4, 1), 98)[0] == ""
    assert d.send("t", send(5, 2), 3)[0] == "busy"  # the sender's bytes: 98 + 3 > 100
    assert d.send("t", send(5, 2), 2)[0] == ""
    assert d.hosts[hid(3)].out_bytes == 100


def test_the_same_message_sent_again_is_handed_on_not_counted_twice() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [])
    announce(d, "s", "bob", 2, [])
    announce(d, "t", "bob", 3, [])
    assert d.send("s", send(1, 1), 5)[0] == ""
    assert d.send("s", send(1, 1), 5)[0] == ""
    assert d.hosts[hid(1)].in_count == 1
    assert d.send("t", send(1, 1), 5)[0] == "busy"  # another host's id


def test_detach_answers_retry_for_flights_to_it_and_forgets_its_own() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 1)])
    announce(d, "s", "bob", 2, [])
    d.send("s", send(1, 1), 5)
    d.send("s", send(2, 1), 5)
    d.send("a", send(3, 2), 7)
    d.send("a", send(4, 1), 7)  # to itself
    host, retry = d.detach("a")
    assert host is not None
    assert host.hid == hid(1)
    assert retry == ((hid(2), mid(1)), (hid(2), mid(2)))
    assert d.flights == {}
    s = d.hosts[hid(2)]
    assert (s.in_count, s.in_bytes, s.out_count, s.out_bytes) == (0, 0, 0, 0)
    assert d.resolve("bob", "alice", "chat", 1, 100.0).reason == "no_host"
    assert d.detach("a") == (None, ())


def test_visibility_of_hosts() -> None:
    d = ready()
    announce(d, "a", "alice", 1, [reg("chat", 1, peer="carol")])
    announce(d, "b", "bob", 2, [reg("chat", 1)])
    announce(d, "c", "dave", 3, [reg("chat", 1, peer="dave")])
    assert [h.hid for h in d.visible("carol", admin=False)] == [hid(1), hid(2)]
    assert [h.hid for h in d.visible("alice", admin=False)] == [hid(1), hid(2)]
    assert [h.hid for h in d.visible("eve", admin=True)] == [hid(1), hid(2), hid(3)]


# --- against a reference model ---------------------------------------------------------

ACCOUNTS = ["alice", "bob", "carol"]
APPS = ["chat", "mail"]
TYPES = [0, 1, 2, 0x12340000, 0x00002222, 0x00001234, 0xFFFFFFFF]
INTERESTS = [0, 1, 3, 0xFFFFFFFF, 0x12340000, 0xFFFF0000]


@dataclass
class ModelHost:
    account: str
    handle: int
    regs: list[tuple[str, int, str]]


@dataclass
class Model:
    hosts: dict[str, ModelHost] = field(default_factory=dict)
    flights: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def reason_for(self, host: ModelHost, sender: str, app: str, type: int) -> str:
        found = set()
        for a, interest, peer in host.regs:
            if a != app:
                continue
            if peer not in ("*", sender):
                found.add("forbidden")
            elif interest & type:
                return ""
            else:
                found.add("no_interest")
        return worst(found or {"no_app"})

    def resolve(self, sender: str, dest: str, app: str, type: int) -> tuple[list[str], str]:
        if dest.startswith("host:"):
            h = dest[5:]
            return ([h], "") if h in self.hosts else ([], "no_host")
        if dest == "*":
            cands = {h: x for h, x in self.hosts.items() if any(r[0] == app for r in x.regs)}
            if not cands:
                return [], ("no_app" if self.hosts else "no_host")
        else:
            cands = {h: x for h, x in self.hosts.items() if x.account == dest}
            if not cands:
                return [], "no_host"
        verdicts = {h: self.reason_for(x, sender, app, type) for h, x in cands.items()}
        hosts = sorted(h for h, v in verdicts.items() if not v)
        return (hosts, "") if hosts else ([], worst(verdicts.values()))

    def load(self, hid: str, inbound: bool) -> tuple[int, int]:
        mine = [
            size
            for (_, rcv), (snd, size) in self.flights.items()
            if (rcv if inbound else snd) == hid
        ]
        return len(mine), sum(mine)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("hello"),
            st.integers(0, 4),  # handle
            st.sampled_from(ACCOUNTS),
            st.integers(0, 3),  # host number
            st.lists(
                st.tuples(
                    st.sampled_from(APPS),
                    st.sampled_from(INTERESTS),
                    st.sampled_from(["*", *ACCOUNTS]),
                ),
                max_size=4,
            ),
        ),
        st.tuples(st.just("detach"), st.integers(0, 4)),
        st.tuples(
            st.just("send"),
            st.integers(0, 4),
            st.integers(0, 5),
            st.integers(0, 3),
            st.integers(1, 40),
        ),
        st.tuples(st.just("result"), st.integers(0, 4), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    queries=st.lists(
        st.tuples(
            st.sampled_from(ACCOUNTS),
            st.sampled_from(["*", "host:" + hid(0), "host:" + hid(2), *ACCOUNTS]),
            st.sampled_from(APPS),
            st.sampled_from(TYPES),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_directory_matches_a_reference_model(
    ops: list[tuple[object, ...]], queries: list[tuple[str, str, str, int]]
) -> None:
    d = Directory(started=0.0, max_inflight=3, max_inflight_bytes=60)
    model = Model()
    retried: list[tuple[str, str]] = []
    model_retried: list[tuple[str, str]] = []

    def drop(h: str) -> None:
        gone = model.hosts.pop(h)
        del gone
        for key in sorted(model.flights):
            snd, _ = model.flights[key]
            if snd == h:
                del model.flights[key]
        for key in sorted(model.flights):
            if key[1] == h:
                model_retried.append((model.flights.pop(key)[0], key[0]))

    def handle_of(handle: int) -> str | None:
        return next((h for h, x in model.hosts.items() if x.handle == handle), None)

    for op in ops:
        if op[0] == "hello":
            _, handle, account, n, regs = op
            assert isinstance(handle, int) and isinstance(n, int) and isinstance(account, str)
            h = hid(n)
            out = d.hello(handle, account, hello([reg(*r) for r in regs]), h, 100.0)  # type: ignore[arg-type, misc]
            held = model.hosts.get(h)
            if held is not None and held.account != account:
                assert out == Taken(held.account)
                continue
            assert isinstance(out, Hello)
            retried.extend(out.retry)
            prev = handle_of(handle)
            if prev is not None and prev != h:
                drop(prev)
            if held is not None and held.handle != handle:
                drop(h)
            model.hosts[h] = ModelHost(account, handle, list(regs))  # type: ignore[arg-type]
        elif op[0] == "detach":
            handle = op[1]
            _, out_retry = d.detach(handle)
            retried.extend(out_retry)
            h2 = handle_of(handle)  # type: ignore[arg-type]
            if h2 is not None:
                drop(h2)
        elif op[0] == "send":
            _, handle, n, to, size = op
            assert isinstance(n, int) and isinstance(to, int) and isinstance(size, int)
            reason, _ = d.send(handle, send(n, to), size)
            sender = handle_of(handle)  # type: ignore[arg-type]
            key = (mid(n), hid(to))
            if sender is None:
                expect = "not_host"
            elif hid(to) not in model.hosts:
                expect = "no_host"
            elif key in model.flights:
                expect = "" if model.flights[key][0] == sender else "busy"
            else:
                cin, bin_ = model.load(hid(to), inbound=True)
                cout, bout = model.load(sender, inbound=False)
                full = cin >= 3 or bin_ + size > 60 or cout >= 3 or bout + size > 60
                expect = "busy" if full else ""
                if not full:
                    model.flights[key] = (sender, size)
            assert reason == expect, op
        else:
            _, handle, n = op
            assert isinstance(n, int)
            answer = d.result(handle, m.MsgResult(id=mid(n), count=1))
            receiver = handle_of(handle)  # type: ignore[arg-type]
            key = (mid(n), receiver or "")
            if receiver is not None and key in model.flights:
                snd, _ = model.flights.pop(key)
                assert answer is not None
                assert answer.sender.hid == snd
            else:
                assert answer is None
        assert sorted(d.hosts) == sorted(model.hosts)
        assert set(d.flights) == set(model.flights)
        for h, host in d.hosts.items():
            assert (host.in_count, host.in_bytes) == model.load(h, inbound=True)
            assert (host.out_count, host.out_bytes) == model.load(h, inbound=False)
    assert retried == model_retried
    for sender, dest, app, type in queries:
        route = d.resolve(sender, dest, app, type, 100.0)
        hosts, reason = model.resolve(sender, dest, app, type)
        assert ([h.hid for h in route.hosts], route.reason) == (hosts, reason)


# --- the events' throttle --------------------------------------------------------------


def test_throttle_emits_once_per_window_with_what_it_held_back() -> None:
    t = Throttle(60.0)
    assert t.note(("bob", "busy"), 0.0) == 1
    assert [t.note(("bob", "busy"), s) for s in (1.0, 30.0, 59.9)] == [0, 0, 0]
    assert t.note(("bob", "no_host"), 10.0) == 1  # another key has its own window
    assert t.note(("bob", "busy"), 60.0) == 4  # this one and the three held back
    assert t.note(("bob", "busy"), 61.0) == 0
    assert t.note(("bob", "busy"), 200.0) == 2


def test_throttle_remembers_a_bounded_number_of_keys() -> None:
    t = Throttle(10.0, cap=3)
    assert [t.note(k, 0.0) for k in "abc"] == [1, 1, 1]
    assert t.note("a", 1.0) == 0
    assert t.note("d", 5.0) == 0  # full, every key within its window
    assert t.dropped == 1
    assert t.note("d", 10.0) == 1  # a, b, c forgotten: a's held-back one is dropped
    assert t.dropped == 2
    assert t.note("a", 11.0) == 1


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 5)), max_size=60))
def test_throttle_never_loses_count_and_never_exceeds_its_cap(
    notes: list[tuple[int, float]],
) -> None:
    t = Throttle(2.0, cap=3)
    now, emitted = 0.0, 0
    for key, step in notes:
        now += step
        emitted += t.note(key, now)
        assert len(t._seen) <= 3
    held = sum(h for _, h in t._seen.values())
    assert emitted + held + t.dropped == len(notes)


def test_a_route_lists_only_as_many_hosts_as_fit_in_one_frame_header() -> None:
    d = ready()
    for n in range(400):
        announce(d, n, "a" * 64, n, [reg("chat", 1)])
    infos = [h.info() for h in d.resolve("bob", "*", "chat", 1, 100.0).hosts]
    assert len(infos) == 400
    kept, left = fit_route(infos)
    assert kept == infos[: len(kept)]
    assert left == 400 - len(kept)
    assert len(kept) >= 150
    header = encode_header(m.MsgRoute(rid="r" * 64, hosts=kept, message="m" * 500))
    assert len(header) <= MAX_HEADER_BYTES
    assert fit_route(infos[:3]) == (infos[:3], 0)
    assert fit_route(infos[:3], budget=0) == ([], 3)
