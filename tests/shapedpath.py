"""A shaped path for bandwidth tests: the client's side in a network
namespace of its own, joined to this one by a veth pair whose two ends
are shaped with ``tc`` (tbf: a rate each way, the queue a token bucket
filter keeps), optionally through a userspace delay line
(:mod:`tests.delayline`) where the kernel has no ``netem``. ``iperf3``
measures the same path for comparison.

Needs root, iproute2's ``ip`` and ``tc``; iperf3 (Debian: ``apt-get install
iperf3``, as ``make test-proxies`` does) for the comparisons. Tests skip
with the reason when any is missing."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import veth_namespace
from tests.support import ADMIN_PASSWORD, PYTHON, Client, Hub, as_from_a_terminal

# The queue tbf keeps: a loss-based flow (iperf3's cubic) fills it, which is
# what a background transfer must notice and yield to.
QUEUE_LATENCY_MS = 200


def tc(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["tc", *args], capture_output=True, timeout=10)


def need_iperf3() -> str:
    found = shutil.which("iperf3")
    if found is None:
        pytest.skip("iperf3 is not installed (Debian: apt-get install iperf3; make test-proxies)")
    return found


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ShapedPath:
    """``inside`` (the namespace ``ns``) reaches ``outside`` (here) at
    ``mbit`` Mbit/s each way."""

    ns: str
    outside: str
    inside: str
    here_dev: str
    there_dev: str
    mbit: float

    def shape(self, mbit: float) -> None:
        """(Re)shape both directions to ``mbit`` Mbit/s."""
        self.mbit = mbit
        burst = max(32 * 1024, int(mbit * 1e6 / 8 / 250))  # at least a timer tick's worth
        spec = [
            "tbf",
            "rate",
            f"{mbit}mbit",
            "burst",
            str(burst),
            "latency",
            f"{QUEUE_LATENCY_MS}ms",
        ]
        for prefix, dev in (([], self.here_dev), (["-n", self.ns], self.there_dev)):
            done = tc(*prefix, "qdisc", "replace", "dev", dev, "root", *spec)
            if done.returncode != 0:
                pytest.skip(f"tc cannot shape {dev}: {done.stderr.decode().strip()}")

    @contextlib.contextmanager
    def delay(self, ms: float) -> Iterator[None]:
        """Add ``ms`` to the round trip: packets from inside to outside go
        through a userspace delay line (tests/delayline.py) before the
        shaped veth, since this kernel may have no netem."""
        tun = "fdl" + self.ns[-6:]
        line = self.popen(PYTHON, str(Path(__file__).with_name("delayline.py")), tun, str(ms))
        try:
            assert line.stdout is not None
            if line.stdout.readline().strip() != "ready":
                line.kill()
                pytest.skip(f"no delay line: {line.communicate(timeout=10)[1].strip()}")
            steps = [
                ("sysctl", "-qw", "net.ipv4.ip_forward=1"),
                ("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"),
                ("sysctl", "-qw", f"net.ipv4.conf.{tun}.rp_filter=0"),
                ("sysctl", "-qw", f"net.ipv4.conf.{tun}.accept_local=1"),
                ("ip", "link", "set", tun, "up"),
                # What comes back out of the line goes on to the veth...
                ("ip", "route", "add", self.outside, "dev", self.there_dev, "table", "100"),
                ("ip", "rule", "add", "iif", tun, "lookup", "100", "pref", "100"),
                # ...and everything else for the far end goes into the line.
                ("ip", "route", "add", self.outside, "dev", tun, "src", self.inside),
            ]
            for step in steps:
                self.run(*step)
            yield
        finally:
            line.terminate()
            line.wait(10)
            subprocess.run(["ip", "-n", self.ns, "rule", "del", "pref", "100"], timeout=10)
            subprocess.run(["ip", "-n", self.ns, "route", "flush", "table", "100"], timeout=10)

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        input: str | None = None,
    ) -> str:
        """Run a command inside the namespace; its standard output."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=as_from_a_terminal,
        )

    def freight(
        self, env: dict[str, str], *args: str, timeout: float = 120, input: str | None = None
    ) -> str:
        return self.run(PYTHON, "-m", "freight", *args, env=env, timeout=timeout, input=input)

    def login(self, client: Client) -> None:
        """Log ``client`` in to its hub from inside the namespace."""
        self.freight(
            client.env,
            "login",
            client.hub.url,
            "--user",
            "admin",
            "--password-stdin",
            "--fingerprint",
            client.hub.fingerprint,
            input=ADMIN_PASSWORD + "\n",
        )

    @contextlib.contextmanager
    def iperf3_server(self) -> Iterator[int]:
        """An iperf3 server here, on the path's outer address; its port."""
        binary = need_iperf3()
        port = free_port(self.outside)
        server = subprocess.Popen(
            [binary, "-s", "-B", self.outside, "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield port
        finally:
            server.terminate()
            server.wait(10)

    def iperf3_args(self, port: int, seconds: float, *, reverse: bool = False) -> list[str]:
        # -O 2: the first two seconds (slow start) are left out, as the probe does.
        args = [
            need_iperf3(),
            "-c",
            self.outside,
            "-p",
            str(port),
            "-t",
            f"{seconds:g}",
            "-O",
            "2",
            "-J",
        ]
        return [*args, "-R"] if reverse else args

    def iperf3(self, port: int, seconds: float = 5.0, *, reverse: bool = False) -> float:
        """iperf3's received rate in bytes/s, from inside: up, or down with
        ``reverse``. An iperf3 server still closing its previous test resets
        the next one's control connection ("unable to receive control
        message"): such a run is tried again, twice at most."""
        for attempt in range(3):
            out = self.run(*self.iperf3_args(port, seconds, reverse=reverse), timeout=seconds + 30)
            error = json.loads(out).get("error")
            if error is None:
                return iperf3_rate(out)
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError(f"iperf3 failed three times: {error}")


def iperf3_rate(out: str) -> float:
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 8


@contextlib.contextmanager
def shaped_path(mbit: float, octet: int = 232) -> Iterator[ShapedPath]:
    if os.geteuid() != 0 or shutil.which("tc") is None:
        pytest.skip("shaped paths need root and iproute2's tc")
    with veth_namespace("fbw", octet) as (ns, outside, inside):
        devs = subprocess.run(
            ["ip", "-o", "addr", "show", "to", outside], capture_output=True, text=True, timeout=10
        ).stdout.split()
        here = devs[1]
        there = subprocess.run(
            ["ip", "-n", ns, "-o", "addr", "show", "to", inside],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()[1]
        path = ShapedPath(ns, outside, inside, here, there, mbit)
        path.shape(mbit)
        yield path


def sample_partials(
    hub: Hub, proc: subprocess.Popen[str], seconds: float, every: float = 0.5
) -> list[tuple[float, int]]:
    """(time, bytes) of the hub's partial uploads every ``every`` seconds,
    from the next byte written until ``seconds`` later or ``proc`` ends."""
    start = time.monotonic()
    before = hub.partial_size()
    while hub.partial_size() <= before:
        if proc.poll() is not None or time.monotonic() - start > 60:
            raise AssertionError(f"the upload never started: {proc.communicate(timeout=10)}")
        time.sleep(0.05)
    samples: list[tuple[float, int]] = []
    first = time.monotonic()
    while time.monotonic() - first <= seconds and proc.poll() is None:
        samples.append((time.monotonic(), hub.partial_size()))
        time.sleep(every)
    return samples


def window_rates(samples: list[tuple[float, int]], window: float) -> list[float]:
    """Bytes/s in consecutive windows of ``window`` seconds."""
    rates = []
    i = 0
    for j in range(len(samples)):
        if samples[j][0] - samples[i][0] >= window - 1e-6:
            rates.append((samples[j][1] - samples[i][1]) / (samples[j][0] - samples[i][0]))
            i = j
    return rates


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def push(path: ShapedPath, client: Client, src: Path, *how: str) -> subprocess.Popen[str]:
    name = f"{src.name}-{time.monotonic_ns()}"
    return path.popen(
        PYTHON, "-m", "freight", "push", str(src), "--as", name, "--quiet", *how, env=client.env
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class BackgroundResult:
    alone: float  # iperf3 alone, bytes/s
    beside: float  # iperf3 beside the background push
    after: list[float]  # the push's rate per second once iperf3 stopped
    link: float

    @property
    def competitor_loss(self) -> float:
        return 1 - self.beside / self.alone

    def seconds_to(self, share: float) -> float | None:
        """Seconds after iperf3 stopped until the push had ``share`` of the
        link, over two seconds (the hub writes in bursts: one second's
        growth of its partial file can be above the link or near zero)."""
        for i in range(1, len(self.after)):
            if (self.after[i - 1] + self.after[i]) / 2 >= share * self.link:
                return float(i + 1)
        return None


def background_run(
    path: ShapedPath,
    hub: Hub,
    client: Client,
    src: Path,
    port: int,
    *,
    seconds: float = 6.0,
    takeback: bool = True,
) -> BackgroundResult:
    """A background push with iperf3 beside it; then (``takeback``) the
    push alone: how fast it takes the link back; then iperf3 alone (its
    rate varies by a few per cent from run to run: both of its runs are as
    long)."""
    proc = push(path, client, src, "--priority", "background")
    try:
        sample_partials(hub, proc, 2.0)  # started, and settled for a moment
        beside = path.iperf3(port, seconds)
        after = sample_partials(hub, proc, 10.0, every=1.0) if takeback else []
    finally:
        stop(proc)
    alone = path.iperf3(port, seconds)
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(after)]
    return BackgroundResult(alone=alone, beside=beside, after=rates, link=alone)
