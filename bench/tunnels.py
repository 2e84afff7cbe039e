"""Tunnels (`freight forward`) against `ssh -L` through a local sshd, on
loopback, rounds alternating Freight and ssh (docs/benchmarks.md "Tunnels"):

    .venv/bin/python bench/tunnels.py [--size 1G] [--rounds 3] [--samples 200]
        [--conns 1000] [--no-spare] [--markdown FILE]

Set-up: one `freight hub` (admin logged in; `--max-relay-connections`
raised for the 1,000-connection case), one `freight agent run` enrolled with
`--allow-forward 127.0.0.1:PORT` for a target server (this file, `serve`,
run as its own process), and `freight forward 0 lab:127.0.0.1:PORT` as the
admin; beside it bench/peers.py's private sshd and `ssh -N -L
PORT:127.0.0.1:PORT` (OpenSSH's default cipher). The target server speaks
one byte first: `S` + size (8 bytes): it sends that many bytes and closes;
`E`: it echoes until EOF.

Measured, per tunnel (Freight, ssh), alternating each round:

stream    one connection downloads --size bytes (`S`), MB/s = size / time
          from connect to EOF; median of the rounds.
connect   per sample: connect, send `E` + one byte, read it back; time from
          connect() to that byte; median and p90 over --samples (a new
          connection each; the previous one closed first).
interact  while one connection downloads --size bytes, a second one in the
          same tunnel sends one byte every 10 ms and reads it back; p99 of
          those round trips.
conns     (Freight) --conns connections opened through the forward at once,
          each echoes one byte and stays open; the hub's VmRSS then (and its
          VmHWM); all echo once more before they close.

Targets (issue 12): stream >= 1.0x ssh -L and >= 450 MB/s; connect median
<= 5 ms; interact p99 <= 20 ms; 1,000 connections: hub RSS < 300 MiB.
Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

FREIGHT = peers.FREIGHT
AGENT = "lab"
CHUNK = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise SystemExit(f"bad size {text!r}")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


# --- the target server ------------------------------------------------------------------


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == b"S":
            size = struct.unpack(">Q", _exactly(conn, 8))[0]
            block = os.urandom(CHUNK)
            left = size
            while left:
                n = min(left, CHUNK)
                conn.sendall(block[:n])
                left -= n
        elif mode == b"E":
            while data := conn.recv(1 << 16):
                conn.sendall(data)


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise ConnectionError("closed")
        buf += got
    return buf


def serve_cmd(args: argparse.Namespace) -> int:
    srv = socket.create_server(("127.0.0.1", args.port), backlog=4096)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


# --- the set-up ---------------------------------------------------------------------------


def freight_cli(cfg: Path, *args: str, timeout: float = 120) -> str:
    res = subprocess.run(
        [str(FREIGHT), *args], capture_output=True, env=peers._freight_env(cfg), timeout=timeout
    )
    if res.returncode != 0:
        raise peers.PeerError(f"freight {' '.join(args[:2])}: {res.stderr.decode()[-800:]}")
    return res.stdout.decode()


class Setup:
    def __init__(self, work: Path, spare: bool) -> None:
        self.work = work
        self.spare = spare
        self.target_port = peers.free_port()
        self.hub = peers.FreightHub(work, ["--max-relay-connections", "4096"])
        self.ssh = peers.SshPeer(work)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fwd_port = 0
        self.ssh_port = peers.free_port()

    def start(self) -> Setup:
        self.procs.append(
            peers.start_server(
                [sys.executable, __file__, "serve", "--port", str(self.target_port)],
                self.work / "target.log",
            )
        )
        peers.wait_port(self.target_port, self.procs[-1])
        hub = self.hub.start()
        token = json.loads(freight_cli(hub.cfg, "agents", "token", "--name", AGENT, "--json"))
        cfg = hub.dir / "agent"
        (hub.dir / "root").mkdir()
        cfg.mkdir()
        freight_cli(
            cfg, "agent", "enroll", hub.url, token["token"], "--root", str(hub.dir / "root"),
            "--fingerprint", peers.freight_fingerprint(hub.data),
            "--allow-forward", f"127.0.0.1:{self.target_port}",
        )  # fmt: skip
        self.agent = peers.start_server(
            [str(FREIGHT), "agent", "run"], hub.dir / "agent.log", env=peers._freight_env(cfg)
        )
        self.procs.append(self.agent)
        deadline = time.monotonic() + 60
        while not any(
            r["name"] == AGENT and r["online"]
            for r in json.loads(freight_cli(hub.cfg, "agents", "ls", "--json"))
        ):
            if time.monotonic() > deadline or self.agent.poll() is not None:
                raise peers.PeerError("the agent did not come online")
            time.sleep(0.3)
        fwd = [
            str(FREIGHT), "forward", "0", f"{AGENT}:127.0.0.1:{self.target_port}", "--json",
            "--max-conns", "4096", *([] if self.spare else ["--no-spare"]),
        ]  # fmt: skip
        out = hub.dir / "forward.out"
        with open(out, "wb") as f:
            self.forward = subprocess.Popen(
                fwd, stdout=f, stderr=subprocess.STDOUT, env=peers._freight_env(hub.cfg),
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(self.forward)
        deadline = time.monotonic() + 60
        while not self.fwd_port:
            text = out.read_text()
            if m := re.search(r'"port": (\d+)', text):
                self.fwd_port = int(m.group(1))
            elif time.monotonic() > deadline or self.forward.poll() is not None:
                raise peers.PeerError(f"freight forward did not start: {text[-800:]}")
            time.sleep(0.05)
        self.ssh.start()
        cmd = [
            "ssh", "-N", *self.ssh.ssh_opts(), "-p", str(self.ssh.port),
            "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{self.ssh_port}:127.0.0.1:{self.target_port}",
            f"{self.ssh.user}@127.0.0.1",
        ]  # fmt: skip
        self.procs.append(peers.start_server(cmd, self.work / "ssh.log"))
        peers.wait_port(self.ssh_port, self.procs[-1])
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            peers.stop_server(p)
        self.ssh.stop()
        self.hub.stop()

    @property
    def hub_pid(self) -> int:
        assert self.hub.proc is not None
        return self.hub.proc.pid


def rss(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


# --- the measurements -----------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def download(port: int, size: int) -> float:
    t0 = time.perf_counter()
    with connect(port) as s:
        s.sendall(b"S" + struct.pack(">Q", size))
        got = 0
        buf = bytearray(4 << 20)
        view = memoryview(buf)
        while n := s.recv_into(view):
            got += n
    if got != size:
        raise peers.PeerError(f"received {got} of {size} bytes")
    return time.perf_counter() - t0


GAP = 0.005


def connect_samples(port: int, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        with connect(port) as s:
            s.sendall(b"Ex")
            if s.recv(1) != b"x":
                raise peers.PeerError("no echo")
            out.append(time.perf_counter() - t0)
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
        time.sleep(GAP)  # let the previous connection's close settle
    return out


def interactive(port: int, size: int) -> list[float]:
    done = threading.Event()
    error: list[BaseException] = []

    def bulk() -> None:
        try:
            download(port, size)
        except BaseException as exc:  # reported below
            error.append(exc)
        finally:
            done.set()

    with connect(port) as s:
        s.sendall(b"E")
        th = threading.Thread(target=bulk, daemon=True)
        th.start()
        rtts = []
        while not done.is_set():
            t0 = time.perf_counter()
            s.sendall(b"i")
            if s.recv(1) != b"i":
                raise peers.PeerError("no echo")
            rtts.append(time.perf_counter() - t0)
            time.sleep(0.01)
        th.join(60)
    if error:
        raise peers.PeerError(f"bulk copy failed: {error[0]}")
    return rtts


def many(port: int, n: int, hub_pid: int) -> dict[str, Any]:
    socks: list[socket.socket] = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            s = connect(port)
            s.sendall(b"Ex")
            socks.append(s)
        for s in socks:
            if s.recv(1) != b"x":
                raise peers.PeerError("no echo")
        opened = time.perf_counter() - t0
        mem = rss(hub_pid)
        for s in socks:
            s.sendall(b"y")
        for s in socks:
            if s.recv(1) != b"y":
                raise peers.PeerError("no second echo")
    finally:
        for s in socks:
            s.close()
    return {"conns": n, "open_s": round(opened, 2), **mem}


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.conns + 512)), hard))
    work = Path(tempfile.mkdtemp(prefix="bench-tunnels-"))
    setup = Setup(work, spare=not args.no_spare).start()
    ports = {"freight": setup.fwd_port, "ssh -L": setup.ssh_port}
    res: dict[str, dict[str, list[float]]] = {
        k: {"stream": [], "connect": [], "interact": []} for k in ports
    }
    try:
        for port in ports.values():  # warm up: keys, the spare, caches
            download(port, 16 << 20)
            connect_samples(port, 5)
        for rnd in range(args.rounds):
            order = list(ports.items()) if rnd % 2 == 0 else list(reversed(ports.items()))
            for name, port in order:
                secs = download(port, args.size)
                res[name]["stream"].append(args.size / secs / 1e6)
                res[name]["connect"] += connect_samples(port, args.samples // args.rounds)
                res[name]["interact"] += interactive(port, args.size // 2)
                log(f"round {rnd + 1} {name}: {args.size / secs / 1e6:.0f} MB/s")
        conns = many(setup.fwd_port, args.conns, setup.hub_pid)
    finally:
        setup.stop()
    f, s = res["freight"], res["ssh -L"]
    fs, ss = statistics.median(f["stream"]), statistics.median(s["stream"])
    rows = []
    for name, r in res.items():
        rows.append(
            [
                name,
                f"{statistics.median(r['stream']):.0f}",
                f"{statistics.median(r['connect']) * 1e3:.2f}",
                f"{nearest_rank(r['connect'], 0.9) * 1e3:.2f}",
                f"{nearest_rank(r['interact'], 0.99) * 1e3:.1f}",
            ]
        )
    targets = [
        ("one stream vs ssh -L", fs / ss >= 1.0, f"{fs / ss:.2f}x (>= 1.0x)"),
        ("one stream MB/s", fs >= 450, f"{fs:.0f} MB/s (>= 450)"),
        (
            "connect -> first byte median",
            statistics.median(f["connect"]) <= 0.005,
            f"{statistics.median(f['connect']) * 1e3:.2f} ms (<= 5 ms)",
        ),
        (
            "interactive p99 beside a bulk copy",
            nearest_rank(f["interact"], 0.99) <= 0.020,
            f"{nearest_rank(f['interact'], 0.99) * 1e3:.1f} ms (<= 20 ms)",
        ),
        (
            f"{conns['conns']} concurrent connections: hub RSS",
            conns["VmRSS"] < 300 << 20,
            f"{conns['VmRSS'] / 2**20:.0f} MiB (HWM {conns['VmHWM'] / 2**20:.0f} MiB; < 300 MiB)",
        ),
    ]
    header = (
        "| tunnel | one stream MB/s | connect median ms | connect p90 ms | interactive p99 ms |"
    )
    lines = [header, "| --- | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| target | figure | met |", "| --- | --- | --- |"]
    lines += [f"| {t} | {fig} | {'yes' if ok else '**no**'} |" for t, ok, fig in targets]
    cmd = "python bench/tunnels.py " + shlex.join(sys.argv[1:])
    info = (
        f"`{cmd}`; {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {peers_ssh_version()}; size {args.size >> 20} MiB, "
        f"{args.rounds} rounds alternating, {args.samples} connect samples, "
        f"{conns['conns']} connections opened in {conns['open_s']} s; spare "
        f"{'off' if args.no_spare else 'on'}."
    )
    text = "\n".join([info, "", *lines]) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as out:
            out.write(text + "\n")
    return 0 if all(ok for _, ok, _ in targets) else 1


def peers_ssh_version() -> str:
    res = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    return (res.stderr or res.stdout).strip().split(",")[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=201)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--no-spare", action="store_true")
    p.add_argument("--markdown")
    p.add_argument("--gap", type=float, default=0.02, help="seconds between connect samples")
    args = p.parse_args(argv)
    global GAP
    GAP = args.gap
    if args.cmd == "serve":
        return serve_cmd(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
