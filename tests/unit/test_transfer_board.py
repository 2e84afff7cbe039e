"""The transfer board's sampler, driven by hand with injected clocks: the
rate is the bytes of the last ten seconds, the ETA follows from it, the
throughput counts transfers that ended between two ticks, and the hour
keeps one average a minute, at most sixty."""

from __future__ import annotations

from freight.hub.transfers import MINUTES, Transfer, TransferBoard
from tests.support import Clock


def test_rate_eta_throughput_and_the_hour() -> None:
    mono, wall = Clock(100.0), Clock(60_000.0)
    board = TransferBoard(mono, wall)
    t = Transfer("push:1:a", "push", 1, "ann", "a.bin", 100_000)
    board.start(t)
    for second in range(15):
        t.done = second * 2000
        board.sample([])
        mono.now += 1
        wall.now += 1
    row = t.describe()
    # The last 11 samples span 10 s and 20,000 bytes.
    assert row["rate"] == 2000 and row["eta"] == (100_000 - 28_000) / 2000
    assert board.throughput() == 2000
    assert board.in_flight([], user_id=1) == [row] and board.in_flight([], user_id=2) == []
    # Ending between two ticks: its last bytes still count.
    t.done = 100_000
    board.finish(t)
    assert board.live == {}
    board.sample([])
    assert board._seconds[-1][1] == 100_000
    # A minute later the first minute's average is kept; never more than 60.
    for _ in range(MINUTES + 5):
        wall.now += 60
        board.sample([])
    hour = board.hour()
    assert len(hour) == MINUTES and all(m["bytes_per_second"] == 0 for m in hour[1:])


def test_a_resumed_transfer_counts_only_new_bytes() -> None:
    mono, wall = Clock(0.0), Clock(0.0)
    board = TransferBoard(mono, wall)
    t = Transfer("push:1:b", "push", 1, "ann", "b.bin", 10_000, done=6000, retry="resumed")
    board.start(t)
    board.sample([])
    mono.now = 1
    t.done = 7000
    board.sample([])
    assert board.throughput() == 1000 and t.describe()["retry"] == "resumed"
