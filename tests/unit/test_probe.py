"""The probe's machines fed messages and times: the receiver's bounded
samples, the responder's table, and the estimator on made-up trains."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.protocol import messages as m
from freight.protocol.limits import MAX_PROBE_SECONDS
from freight.protocol.probe import (
    MalformedProbe,
    ProbeResponder,
    SendTrain,
    State,
    TrainReceiver,
    estimate,
    train_seconds,
)


def train(rate: float, seconds: float, size: int = 65536) -> list[tuple[int, int]]:
    """Samples of a train arriving at ``rate`` bytes/s."""
    rx = TrainReceiver("p", size=size)
    n = int(rate * seconds / size)
    for i in range(n):
        rx.arrive(m.ProbeData(pid="p", seq=i, len=size), size, 100.0 + i * size / rate)
    return rx.samples()


def test_steady_train_gives_its_rate() -> None:
    est = estimate(train(12.5e6, 2.0), rtt=0.02)
    assert est.available == pytest.approx(12.5e6, rel=0.01)
    assert est.capacity == pytest.approx(12.5e6, rel=0.02)
    assert est.seconds == pytest.approx(2.0, rel=0.01)


def test_slow_start_is_left_out() -> None:
    # The first 20 % of the time at a tenth of the rate, then the full rate.
    rx = TrainReceiver("p")
    t, seq, size = 0.0, 0, 65536
    while t < 2.0:
        rate = 1e6 if t < 0.4 else 10e6
        t += size / rate
        rx.arrive(m.ProbeData(pid="p", seq=seq, len=size), size, t)
        seq += 1
    est = estimate(rx.samples(), rtt=0.08)
    assert est.available == pytest.approx(10e6, rel=0.02)


def test_capacity_sees_a_gap_in_cross_traffic() -> None:
    rx = TrainReceiver("p")
    t, seq, size = 0.0, 0, 65536
    while t < 3.0:
        rate = 10e6 if 2.0 < t < 2.4 else 5e6
        t += size / rate
        rx.arrive(m.ProbeData(pid="p", seq=seq, len=size), size, t)
        seq += 1
    est = estimate(rx.samples(), rtt=0.02)
    assert est.capacity > 1.5 * est.available
    assert est.capacity <= 10.1e6


def test_samples_stay_bounded_and_keep_the_last_arrival() -> None:
    rx = TrainReceiver("p", size=100, limit=16)
    for i in range(10_000):
        rx.arrive(m.ProbeData(pid="p", seq=i, len=100), 100, i * 0.001)
    s = rx.samples()
    assert len(s) <= 16
    assert s[0] == (0, 100)
    assert s[-1] == (9_999_000, 1_000_000)
    assert rx.report().records == 10_000


def test_receiver_refuses_gaps_other_trains_and_oversize() -> None:
    rx = TrainReceiver("p", size=100)
    rx.arrive(m.ProbeData(pid="p", seq=0, len=10), 10, 0.0)
    with pytest.raises(MalformedProbe, match="record 2 where 1"):
        rx.arrive(m.ProbeData(pid="p", seq=2, len=10), 10, 0.1)
    with pytest.raises(MalformedProbe, match="inside train"):
        rx.arrive(m.ProbeData(pid="q", seq=1, len=10), 10, 0.1)
    with pytest.raises(MalformedProbe, match="more than 100"):
        rx.arrive(m.ProbeData(pid="p", seq=1, len=101), 101, 0.1)


def test_receiver_refuses_an_endless_train() -> None:
    rx = TrainReceiver("p", size=10)
    rx.arrive(m.ProbeData(pid="p", seq=0, len=1), 1, 0.0)
    with pytest.raises(MalformedProbe, match="longer than"):
        rx.arrive(m.ProbeData(pid="p", seq=1, len=1), 1, MAX_PROBE_SECONDS + 60)


def test_responder_table() -> None:
    r = ProbeResponder()
    assert r.request(m.Probe(pid="a", op="ping")) == m.ProbeReport(pid="a", op="ping")
    assert r.request(m.Probe(pid="u", op="up", size=1024)).op == "ping"
    assert r.state is State.RECEIVING
    r.data(m.ProbeData(pid="u", seq=0, len=1024), 1024, 1.0)
    r.data(m.ProbeData(pid="u", seq=1, len=1024), 1024, 1.5)
    report = r.request(m.Probe(pid="u", op="end"))
    assert isinstance(report, m.ProbeReport)
    assert report.records == 2 and report.samples == [(0, 1024), (500_000, 2048)]
    down = r.request(m.Probe(pid="d", op="down", seconds=1.0, size=2048))
    assert down == SendTrain(pid="d", seconds=1.0, size=2048)
    assert r.state is State.IDLE


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (None, m.Probe(pid="x", op="end")),
        (m.Probe(pid="x", op="up"), m.Probe(pid="x", op="up")),
        (m.Probe(pid="x", op="up"), m.Probe(pid="x", op="down", seconds=1)),
        (m.Probe(pid="x", op="up"), m.Probe(pid="y", op="end")),
    ],
)
def test_responder_refuses_what_the_table_lacks(first: m.Probe | None, then: m.Probe) -> None:
    r = ProbeResponder()
    if first is not None:
        r.request(first)
    with pytest.raises(MalformedProbe):
        r.request(then)
    assert r.state is State.ERROR
    with pytest.raises(MalformedProbe):  # broken for good
        r.request(m.Probe(pid="z", op="ping"))


def test_record_outside_a_train_breaks_the_responder() -> None:
    r = ProbeResponder()
    with pytest.raises(MalformedProbe, match="outside a train"):
        r.data(m.ProbeData(pid="x", seq=0, len=1), 1, 0.0)
    assert r.state is State.ERROR


def test_estimate_refuses_nonsense() -> None:
    with pytest.raises(MalformedProbe):
        estimate([(0, 1)], 0.01)
    with pytest.raises(MalformedProbe):
        estimate([(0, 1), (0, 2), (0, 3)], 0.01)
    with pytest.raises(MalformedProbe, match="grow"):
        estimate([(0, 10), (5, 5), (9, 20)], 0.01)


def test_train_length_follows_the_round_trip() -> None:
    assert train_seconds(0.0001) == 1.5
    assert train_seconds(0.08) == 2.0
    assert train_seconds(5.0) == MAX_PROBE_SECONDS


ops = st.sampled_from(["ping", "up", "end", "down"])


@given(
    st.lists(st.tuples(st.booleans(), ops, st.integers(0, 5), st.integers(0, 5000)), max_size=40)
)
def test_responder_fuzz(steps: list[tuple[bool, str, int, int]]) -> None:
    """Any sequence either works or raises MalformedProbe and stays broken;
    samples stay bounded and ordered."""
    r = ProbeResponder()
    now = 0.0
    for is_data, op, seq, nbytes in steps:
        now += 0.01
        try:
            if is_data:
                r.data(m.ProbeData(pid="p", seq=seq, len=nbytes), nbytes, now)
            else:
                out = r.request(m.Probe(pid="p", op=op, seconds=1.0, size=1024))
                if isinstance(out, m.ProbeReport):
                    assert len(out.samples) <= 512
                    assert out.samples == sorted(out.samples)
        except MalformedProbe:
            assert r.state is State.ERROR
            return


@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**9)), max_size=50))
def test_estimate_fuzz(points: list[tuple[int, int]]) -> None:
    try:
        est = estimate(points, 0.01)
    except MalformedProbe:
        return
    assert est.capacity >= est.available >= 0


def test_a_receiver_stall_and_catch_up_moves_the_estimate_little() -> None:
    # 10 MB/s for 2 s, but the receiver takes nothing for 0.25 s at 1.2 s
    # and then every record queued meanwhile at once.
    rx = TrainReceiver("p")
    size, rate = 65536, 10e6
    for seq in range(int(rate * 2.0 / size)):
        t = seq * size / rate
        if 1.2 <= t < 1.45:
            t = 1.45
        rx.arrive(m.ProbeData(pid="p", seq=seq, len=size), size, t)
    est = estimate(rx.samples(), rtt=0.02)
    assert est.available == pytest.approx(10e6, rel=0.05)
    assert est.capacity < 1.3e7
