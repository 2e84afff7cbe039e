"""The load tester's measuring: latencies from the due time (no coordinated
omission), workers' histograms merged into one report, constant memory,
the live 10 s window, the open model's schedule, and each expect clause
judged against what was measured."""

from __future__ import annotations

import itertools
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.loadtest.clients import BLOCK, RowRun
from freight.loadtest.scenario import Expect, Fault, Rate, Size, parse_expect, parse_scenario
from freight.loadtest.schedule import (
    Pacer,
    client_starts,
    draw_size,
    fault_times,
    interval,
    loops,
)
from freight.loadtest.stats import RowStats, add_sparse, new_histogram, sparse
from freight.loadtest.verdict import judge


def test_a_stalled_server_shows_in_the_latency_from_the_due_time() -> None:
    """A 1 s stall behind 100 operations due 10 ms apart: measured from when
    each was sent (raw) only one is slow; measured from when each was due,
    the queue the stall built is seen, as a user would feel it."""
    stats = RowStats("pairs")
    pacer = Pacer(first=0.0, every=0.01)
    clock = 0.0
    for _ in range(100):
        due = pacer.next_due()
        start = max(clock, due)
        clock = start + (1.0 if due == 0.0 else 0.001)  # the first one stalls 1 s
        stats.record(due, start, clock, 100)
    assert stats.latencies(stats.raw)["p90"] < 0.002
    assert stats.latencies()["p50"] > 0.4  # half the operations waited behind the stall
    assert stats.ops == 100 and stats.bytes == 10_000


def test_workers_merge_into_the_report_one_process_would_give() -> None:
    rng = random.Random(7)
    samples = [rng.uniform(0.0001, 2.0) for _ in range(3000)]
    whole = RowStats("r")
    parts = [RowStats("r") for _ in range(3)]
    for i, s in enumerate(samples):
        whole.record(0.0, 0.0, s, 10)
        parts[i % 3].record(0.0, 0.0, s, 10)
        if i % 100 == 0:
            whole.error("timeout")
            parts[i % 3].error("timeout")
    merged = RowStats.merge("r", [p.snapshot() for p in parts])
    assert merged.latencies() == whole.latencies()
    assert (merged.ops, merged.bytes, merged.errors) == (whole.ops, whole.bytes, whole.errors)


def test_memory_stays_constant_however_many_samples() -> None:
    stats = RowStats("r")
    stats.record(0.0, 0.0, 0.001)
    before = sys.getsizeof(stats.latency.counts) + sys.getsizeof(stats.raw.counts)
    for i in range(200_000):
        stats.record(0.0, 0.0, (i % 5000) / 1000)
    after = sys.getsizeof(stats.latency.counts) + sys.getsizeof(stats.raw.counts)
    assert after == before
    assert stats.latencies()["max"] == pytest.approx(4.999, rel=0.001)


def test_error_kinds_are_bounded() -> None:
    stats = RowStats("r")
    for i in range(1000):
        stats.error(f"kind-{i}")
    assert len(stats.errors) == 65 and stats.errors["other"] == 1000 - 64


def test_the_live_window_forgets_what_is_older_than_10_s() -> None:
    stats = RowStats("r")
    for t in range(5):
        stats.record(t, t, t + 0.5)  # 500 ms each, seconds 0-4
    for t in range(20, 25):
        stats.record(t, t, t + 0.002)  # 2 ms each, seconds 20-24
    live = stats.window.percentiles(25.0)
    assert live["p99"] == pytest.approx(0.002, rel=0.01)
    assert stats.window.percentiles(40.0) == {}
    assert stats.latencies()["max"] == pytest.approx(0.5, rel=0.01)


def test_clients_start_evenly_over_the_ramp() -> None:
    row = parse_scenario("id,count,role,attach_at,ramp\nidle,4,agent-idle,10s,2s\n").rows[0]
    assert client_starts(row) == [10.0, 10.5, 11.0, 11.5]


def test_rates_become_intervals_or_loops() -> None:
    assert interval(Rate("per_client", 50.0), 100) == pytest.approx(0.02)
    assert interval(Rate("total", 1000.0), 100) == pytest.approx(0.1)
    assert interval(Rate("concurrency", 4.0), 100) is None
    assert interval(None, 5) is None
    assert loops(Rate("concurrency", 4.0)) == 4 and loops(None) == 1


def test_the_pacer_counts_what_fell_due() -> None:
    pacer = Pacer.for_client(5.0, 0.1, random.Random(1))
    assert 5.0 <= pacer.first < 5.1
    assert pacer.due_until(4.0) == 0
    assert pacer.due_until(pacer.first + 0.95) == 10
    pacer.next_due()
    assert pacer.due_until(pacer.first + 0.95) == 9


@given(st.integers(0, 2**32), st.integers(1, 1 << 20), st.integers(0, 1 << 20))
@settings(max_examples=100)
def test_sizes_are_drawn_within_their_bounds(seed: int, low: int, spread: int) -> None:
    rng = random.Random(seed)
    assert low <= draw_size(Size("uniform", low=low, high=low + spread), rng) <= low + spread
    drawn = sorted(draw_size(Size("lognormal", low=low, sigma=0.5), rng) for _ in range(201))
    assert 0.7 * low - 1 <= drawn[100] <= 1.4 * low + 1  # the median is the given size
    assert draw_size(Size("fixed", low=low), rng) == low
    assert draw_size(Size("file", file="x"), rng, file_size=spread) == spread


def test_the_same_seed_draws_the_same_run() -> None:
    def draws(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [draw_size(Size("lognormal", low=65536, sigma=1.5), rng) for _ in range(50)]

    assert draws(42) == draws(42) != draws(43)


def test_fault_times() -> None:
    rng = random.Random(3)
    assert fault_times(Fault("drop", at=30.0), 60.0, rng) == [30.0]
    assert fault_times(Fault("hub_kill", at=90.0), 60.0, rng) == []
    assert fault_times(Fault("bad_tls"), 60.0, rng) == []
    times = fault_times(Fault("drop_every", every=30.0, jitter=10.0), 300.0, rng)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert 7 <= len(times) <= 14 and all(20.0 <= g <= 40.0 for g in gaps)


def _stats() -> RowStats:
    stats = RowStats("pairs", clients=100, attached_end=99, bytes=10 << 20)
    for i in range(1000):
        stats.record(0.0, 0.0, 0.001 + i / 100_000)  # 1 ms to 11 ms
    stats.verified, stats.mismatched, stats.lost = 19, 1, 2
    stats.errors["timeout"] = 3
    stats.faults, stats.recovered = 10, 9
    return stats


@pytest.mark.parametrize(
    ("clause", "shown", "passed"),
    [
        ("p99<50ms", "10.9 ms", True),
        ("p50<5ms", "5.99 ms", False),
        ("max<=11ms", "11 ms", True),
        ("attached>=99.9%", "99%", False),
        ("attached>=99%", "99%", True),
        ("verified=100%", "95%", False),
        ("recovered>=90%", "90%", True),
        ("errors=0", "3", False),
        ("errors<=3", "3", True),
        ("loss<1%", "0.1996%", True),
        ("loss=0", "2", False),
        ("throughput>=1MiB/s", "1.0 MiB/s", True),
        ("throughput>2MiB/s", "1.0 MiB/s", False),
    ],
)
def test_each_clause_is_judged_against_the_measure(clause: str, shown: str, passed: bool) -> None:
    verdict = judge(parse_expect(clause), _stats(), seconds=10.0, hub_alive=True)
    assert (verdict.shown, verdict.passed, verdict.clause, verdict.row) == (
        shown,
        passed,
        clause,
        "pairs",
    )


def test_nothing_measured_fails_its_clause() -> None:
    empty = RowStats("quiet")
    for clause in ("p99<1s", "verified=100%", "recovered>=0%", "attached>=0%"):
        verdict = judge(parse_expect(clause), empty, seconds=10.0, hub_alive=True)
        assert (verdict.passed, verdict.shown) == (False, "nothing measured")
    assert judge(Expect("hub_alive"), empty, 1.0, hub_alive=False).shown == "not answering"
    assert judge(Expect("hub_alive"), empty, 1.0, hub_alive=True).passed


def test_each_seconds_histograms_are_reused_not_made_anew() -> None:
    """A long run makes no histogram per second (allocating and freeing
    their counts again and again kept the tester's memory growing)."""
    stats = RowStats("r")
    ring = [id(h) for h in stats.window.ring]
    pair = {id(stats.interval), id(stats.spare)}
    for second in range(100):
        stats.record(second, second, second + 0.002)
        taken = stats.take_interval()
        assert taken.get_total_count() == 1 and id(taken) in pair
        stats.window.percentiles(second)
    assert [id(h) for h in stats.window.ring] == ring
    assert {id(stats.interval), id(stats.spare)} == pair


def test_a_second_sent_sparse_adds_up_to_the_same_histogram() -> None:
    rng = random.Random(5)
    one = RowStats("r")
    for _ in range(500):
        one.record(0.0, 0.0, rng.uniform(0.0001, 3.0))
    taken = one.take_interval()
    other = new_histogram()
    add_sparse(other, sparse(taken))
    add_sparse(other, [[-1, 5], [10**9, 5], [3, 0]])  # out of range or empty: ignored
    assert other.get_total_count() == 500
    for p in (50.0, 99.0, 100.0):
        assert other.get_value_at_percentile(p) == taken.get_value_at_percentile(p)


@given(size=st.integers(0, 3 * (1 << 20)), seq=st.integers(0, 2**63))
@settings(max_examples=40, deadline=None)
def test_a_payload_has_its_size_its_number_and_the_block_in_order(size: int, seq: int) -> None:
    run = RowRun.__new__(RowRun)
    run.block = bytes(range(256)) * (BLOCK // 256)  # each byte's successor is known
    run.rng = random.Random(seq)
    data = run.payload(size, seq)
    assert len(data) == max(size, 8)
    assert int.from_bytes(data[:8], "big") == seq
    body = data[8:]
    assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(body))
