"""UDP through a tunnel against socat, on loopback (`make bench-udp`):

    .venv/bin/python bench/udp.py [--size 1400] [--seconds 5] [--rounds 3]
                                  [--paths direct,socat,pair] [--markdown FILE]

A sender process sends numbered datagrams of --size bytes to a port for
--seconds; a sink process counts the distinct ones that arrive. Paths:

  direct  sender -> sink, no relay (the loopback ceiling for this sender)
  socat   sender -> `socat UDP4-LISTEN:P UDP4:127.0.0.1:SINK` -> sink
          (a user-space UDP relay, what people use to forward UDP)
  pair    sender -> UdpForwardServer (process 1) -> one loopback TCP
          stream -> serve_udp_target (process 2) -> sink: Freight's datagram
          framing, flow table and both adapters without the hub
  hub     sender -> `freight forward --udp` -> hub -> agent -> sink: the
          whole path through a real hub and agent (when the tunnel
          commands exist in this checkout)

Each round runs every path twice: unpaced (as fast as the sender can;
throughput = distinct bytes received / the sink's receive window) and then
paced at 80 % of that path's unpaced throughput (loss = 1 - received / sent).
Paths alternate within a round and their order is reversed every other
round; medians over rounds are reported. Target (issue 12): >= 30 MB/s,
and < 0.1 % loss at 80 % of that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
SEQ = struct.Struct(">Q")
TARGET_MBPS = 30.0
TARGET_LOSS = 0.001


def log(msg: str) -> None:
    print(f"[udp] {msg}", file=sys.stderr, flush=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def big_buffers(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)


# ------------------------------------------------------------- child roles


def run_sink(port_file: str, idle: float, limit: float) -> None:
    """Count distinct numbered datagrams until `idle` s without one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock)
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    seen: set[int] = set()
    nbytes, first, last = 0, 0.0, 0.0
    sock.settimeout(limit)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        now = time.monotonic()
        if not first:
            first = now
            sock.settimeout(idle)
        last = now
        seq = SEQ.unpack_from(data)[0] if len(data) >= 8 else -1
        if seq not in seen:
            seen.add(seq)
            nbytes += len(data)
    print(json.dumps({"received": len(seen), "bytes": nbytes, "window": last - first}))


def run_send(port: int, size: int, rate: float, seconds: float) -> None:
    """Numbered datagrams to 127.0.0.1:port, at `rate` bytes/s (0: flat out)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock)
    sock.connect(("127.0.0.1", port))
    pad = os.urandom(max(0, size - 8))
    sent = 0
    start = time.monotonic()
    end = start + seconds
    per = size / rate if rate else 0.0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if per:
            due = start + sent * per
            if due > now:
                time.sleep(min(due - now, 0.001))
                continue
        for _ in range(16):
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.send(SEQ.pack(sent) + pad)
            sent += 1
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))


async def _pair_near(port_file: str, tcp_port: int) -> None:
    from freight.client.udptunnel import UdpForwardServer

    async def open_stream() -> Any:
        return await asyncio.open_connection("127.0.0.1", tcp_port)

    async with UdpForwardServer(open_stream) as fwd:
        Path(port_file).write_text(str(fwd.port))
        await fwd.wait_closed()


async def _pair_far(port_file: str, sink_port: int) -> None:
    from freight.client.udptunnel import serve_udp_target

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_udp_target(reader, writer, "127.0.0.1", sink_port)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


def run_async(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


# ------------------------------------------------------------- orchestration

AGENT = "udp-bench"


class HubAgent:
    """A hub (admin logged in) and a real agent allowed to forward UDP to
    every port of 127.0.0.1 (``udp/127.0.0.1:*``)."""

    def __init__(self, work: Path) -> None:
        sys.path.insert(0, str(HERE))
        import peers

        self.peers = peers
        self.hub = peers.FreightHub(work)
        self.cfg = self.hub.dir / "agent"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, cfg: Path, *args: str) -> str:
        res = subprocess.run(
            [str(self.peers.FREIGHT), *args],
            capture_output=True,
            text=True,
            env=self.peers._freight_env(cfg),
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"freight {args[:2]} exited {res.returncode}: {res.stderr[-800:]}")
        return res.stdout

    def start(self) -> HubAgent:
        hub = self.hub.start()
        token = json.loads(self.cli(hub.cfg, "agents", "token", "--name", AGENT, "--json"))
        self.cfg.mkdir()
        root = self.hub.dir / "root"
        root.mkdir()
        self.cli(
            self.cfg, "agent", "enroll", hub.url, token["token"], "--root", str(root),
            "--fingerprint", self.peers.freight_fingerprint(hub.data),
            "--allow-forward", "udp/127.0.0.1:*",
        )  # fmt: skip
        self.proc = self.peers.start_server(
            [str(self.peers.FREIGHT), "agent", "run"],
            hub.dir / "agent.log",
            env=self.peers._freight_env(self.cfg),
        )
        end = time.monotonic() + 60
        while time.monotonic() < end:
            rows = json.loads(self.cli(hub.cfg, "agents", "ls", "--json"))
            if any(r["name"] == AGENT and r["online"] for r in rows):
                return self
            time.sleep(0.3)
        raise RuntimeError("the agent is not online after 60 s")

    def stop(self) -> None:
        self.peers.stop_server(self.proc)
        self.hub.stop()

    def forward(self, sink_port: int) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            [
                str(self.peers.FREIGHT),
                "forward",
                "--udp",
                "0",
                f"{AGENT}:127.0.0.1:{sink_port}",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.peers._freight_env(self.hub.cfg),
            start_new_session=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the "listening" event (or EOF if it failed)
        if not line:
            raise RuntimeError(f"freight forward --udp exited {proc.wait(10)}")
        return proc, int(json.loads(line)["port"])


def wait_file(path: Path, proc: subprocess.Popen[Any], timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode} before it was ready")
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args} not ready within {timeout} s")


def spawn(args: list[str], **kw: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(args, start_new_session=True, **kw)


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def me(*args: str) -> list[str]:
    return [PY, str(Path(__file__).resolve()), *args]


@contextlib.contextmanager
def relay(path: str, sink_port: int, work: Path, hub: HubAgent | None) -> Iterator[int]:
    """Start the relay of `path` towards the sink; yields the port to send to."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        if path == "direct":
            yield sink_port
        elif path == "socat":
            port = free_udp_port()
            procs.append(
                spawn(
                    [
                        "socat",
                        "-b",
                        "65536",
                        f"UDP4-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                        f"UDP4:127.0.0.1:{sink_port}",
                    ]
                )
            )
            time.sleep(0.3)  # socat prints nothing when it is listening
            yield port
        elif path == "pair":
            far_file, near_file = work / "far.port", work / "near.port"
            for f in (far_file, near_file):
                f.unlink(missing_ok=True)
            far = spawn(me("_far", str(far_file), str(sink_port)))
            procs.append(far)
            tcp = int(wait_file(far_file, far))
            near = spawn(me("_near", str(near_file), str(tcp)))
            procs.append(near)
            yield int(wait_file(near_file, near))
        elif path == "hub":
            assert hub is not None
            proc, port = hub.forward(sink_port)
            procs.append(proc)
            yield port
        else:
            raise SystemExit(f"unknown path {path!r}")
    finally:
        for p in reversed(procs):
            stop(p)


def one_run(
    path: str, size: int, rate: float, seconds: float, work: Path, hub: HubAgent | None = None
) -> dict[str, float]:
    port_file = work / "sink.port"
    port_file.unlink(missing_ok=True)
    sink = spawn(
        me("_sink", str(port_file), "--idle", "1.0", "--limit", str(seconds + 30)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        sink_port = int(wait_file(port_file, sink))
        with relay(path, sink_port, work, hub) as port:
            res = subprocess.run(
                me(
                    "_send",
                    str(port),
                    "--size",
                    str(size),
                    "--rate",
                    str(rate),
                    "--seconds",
                    str(seconds),
                ),
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                check=True,
            )
            sent = json.loads(res.stdout)
            out, _ = sink.communicate(timeout=seconds + 40)
    finally:
        stop(sink)
    got = json.loads(out)
    window = got["window"] or sent["seconds"]
    return {
        "sent": sent["sent"],
        "received": got["received"],
        "mbps": got["bytes"] / window / 1e6 if window else 0.0,
        "offered": sent["sent"] * size / sent["seconds"] / 1e6,
        "loss": 1 - got["received"] / sent["sent"] if sent["sent"] else 1.0,
    }


def pct(x: float) -> str:
    return f"{x * 100:.3f} %"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1400, help="datagram payload bytes (default 1400)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paths", default="direct,socat,pair,hub")
    ap.add_argument("--markdown", type=Path, help="append the results to this file")
    a = ap.parse_args()
    paths = a.paths.split(",")
    runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {p: [] for p in paths}
    with tempfile.TemporaryDirectory(prefix="bench-udp-") as tmp:
        work = Path(tmp)
        hub = HubAgent(work).start() if "hub" in paths else None
        try:
            measure(a, paths, runs, work, hub)
        finally:
            if hub is not None:
                hub.stop()
    report(a, runs)
    return 0 if all_met(runs) else 1


def measure(
    a: argparse.Namespace,
    paths: list[str],
    runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]],
    work: Path,
    hub: HubAgent | None,
) -> None:
    for r in range(a.rounds):
        for path in paths if r % 2 == 0 else list(reversed(paths)):
            flat = one_run(path, a.size, 0, a.seconds, work, hub)
            paced = one_run(path, a.size, flat["mbps"] * 0.8e6, a.seconds, work, hub)
            runs[path].append((flat, paced))
            log(
                f"round {r + 1} {path}: {flat['mbps']:.1f} MB/s "
                f"(offered {flat['offered']:.1f}, loss {pct(flat['loss'])}); "
                f"at 80 %: {paced['mbps']:.1f} MB/s, loss {pct(paced['loss'])}"
            )


def verdicts(runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]]) -> list[str]:
    med = {path: statistics.median(f["mbps"] for f, _ in rr) for path, rr in runs.items()}
    lines = []
    # The target is the whole path (hub); without it, the pair stands in.
    for path in ("hub",) if "hub" in runs else ("pair",):
        if path in runs:
            loss = max(p["loss"] for _, p in runs[path])
            vs = f", {med[path] / med['socat']:.2f}x socat" if "socat" in med else ""
            lines.append(
                f"- {path}: {med[path]:.1f} MB/s{vs}; worst loss at 80 %: {pct(loss)} "
                f"(target >= {TARGET_MBPS:.0f} MB/s, < 0.1 %): "
                + ("met" if med[path] >= TARGET_MBPS and loss < TARGET_LOSS else "missed")
            )
    return lines


def all_met(runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]]) -> bool:
    return not any(line.endswith("missed") for line in verdicts(runs))


def report(
    a: argparse.Namespace, runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]]
) -> None:
    headers = ["path", "MB/s (median)", "MB/s range", "loss flat out", "MB/s at 80 %",
               "loss at 80 % (median)", "loss at 80 % (worst)"]  # fmt: skip
    rows = []
    for path, rr in runs.items():
        mb = [f["mbps"] for f, _ in rr]
        rows.append(
            [
                path,
                f"{statistics.median(mb):.1f}",
                f"{min(mb):.1f}-{max(mb):.1f}",
                pct(statistics.median(f["loss"] for f, _ in rr)),
                f"{statistics.median(p['mbps'] for _, p in rr):.1f}",
                pct(statistics.median(p["loss"] for _, p in rr)),
                pct(max(p["loss"] for _, p in rr)),
            ]
        )
    table = "\n".join(
        ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    lines = verdicts(runs)
    print(table)
    print("\n".join(lines))
    if a.markdown:
        cmd = shlex.join(["bench/udp.py", *sys.argv[1:]])
        with open(a.markdown, "a") as f:
            f.write(
                f"\n### UDP through a tunnel ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
                f"\n\nCommand: `{cmd}` (datagrams of {a.size} bytes, {a.seconds:g} s per run,"
                f" {a.rounds} rounds, nproc {os.cpu_count()})\n\n{table}\n\n"
                + "\n".join(lines)
                + "\n"
            )


def child() -> None:
    role = sys.argv[1]
    ap = argparse.ArgumentParser()
    if role == "_sink":
        ap.add_argument("port_file")
        ap.add_argument("--idle", type=float, default=1.0)
        ap.add_argument("--limit", type=float, default=60.0)
        a = ap.parse_args(sys.argv[2:])
        run_sink(a.port_file, a.idle, a.limit)
    elif role == "_send":
        ap.add_argument("port", type=int)
        ap.add_argument("--size", type=int)
        ap.add_argument("--rate", type=float)
        ap.add_argument("--seconds", type=float)
        a = ap.parse_args(sys.argv[2:])
        run_send(a.port, a.size, a.rate, a.seconds)
    elif role == "_near":
        run_async(_pair_near(sys.argv[2], int(sys.argv[3])))
    elif role == "_far":
        run_async(_pair_far(sys.argv[2], int(sys.argv[3])))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        child()
    else:
        sys.exit(main())
