"""The probe, ``--limit 50%`` and ``--priority background`` on a path shaped
with tc (tbf, 20 Mbit/s each way) plus a userspace delay line (40 ms round
trip), against iperf3 on the same path. The full matrix (10/50/100 Mbit/s
x 20/80 ms) is ``make bench-bandwidth``.

The assertions keep a margin around the issue's targets (probe within 20 %,
limit 42-58 %, the competitor losing at most 15 %): the suite shares two
cores with everything else that runs, and bench/bandwidth.py measures the
targets themselves.

Needs root, iproute2 (ip, tc) and iperf3; skipped with the reason otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shapedpath import (
    ShapedPath,
    background_run,
    make_file,
    push,
    sample_partials,
    shaped_path,
    stop,
    window_rates,
)
from tests.support import Client, Hub

MBIT = 20.0
RTT_MS = 40.0


@pytest.fixture(scope="module")
def path() -> Iterator[ShapedPath]:
    with shaped_path(MBIT, octet=233) as p, p.delay(RTT_MS):
        yield p


@pytest.fixture(scope="module")
def hub(path: ShapedPath, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("bw") / "hub", host=path.outside).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def client(path: ShapedPath, hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Client:
    c = Client(tmp_path_factory.mktemp("bw-client"), hub)
    path.login(c)
    return c


@pytest.fixture(scope="module")
def iperf3_port(path: ShapedPath) -> Iterator[int]:
    with path.iperf3_server() as port:
        yield port


@pytest.fixture(scope="module")
def capacity(path: ShapedPath, iperf3_port: int) -> float:
    """iperf3's steady rate up the path, bytes/s."""
    return path.iperf3(iperf3_port, 4.0)


def test_probe_agrees_with_iperf3(
    path: ShapedPath, client: Client, iperf3_port: int, capacity: float
) -> None:
    down = path.iperf3(iperf3_port, 4.0, reverse=True)
    found = json.loads(path.freight(client.env, "probe", "--json"))
    assert found["rtt"] == pytest.approx(RTT_MS / 1000, abs=0.015)
    assert found["up"]["available"] == pytest.approx(capacity, rel=0.2)
    assert found["down"]["available"] == pytest.approx(down, rel=0.2)


def test_limit_half_of_the_path(
    path: ShapedPath, hub: Hub, client: Client, capacity: float, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "half.bin", 24 * 1024 * 1024)
    proc = push(path, client, src, "--limit", "50%")
    try:
        samples = sample_partials(hub, proc, 10.0)
    finally:
        stop(proc)
    rates = window_rates(samples[2:], 4.0)  # past the first second
    assert rates, samples
    for rate in rates:
        assert 0.42 * capacity <= rate <= 0.58 * capacity, (rate / capacity, rates)


def test_background_yields_to_a_competitor(
    path: ShapedPath, hub: Hub, client: Client, iperf3_port: int, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "background.bin", 64 * 1024 * 1024)
    result = background_run(path, hub, client, src, iperf3_port, takeback=False)
    assert result.competitor_loss <= 0.15, result


# The take-back is timed by a userspace delay line: on a machine whose cores
# are busy with other tests, the line's own waits for a CPU read as queueing
# delay and the controller rightly backs off. It runs on its own, with
# `make test-quiet` (and its target is measured by `make bench-bandwidth`).
@pytest.mark.quiet
def test_background_takes_the_link_back(
    path: ShapedPath, hub: Hub, client: Client, iperf3_port: int, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "background.bin", 64 * 1024 * 1024)
    result = background_run(path, hub, client, src, iperf3_port)
    took = result.seconds_to(0.9)
    assert took is not None and took <= 10, result
