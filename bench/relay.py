"""Benchmarks of the relay (`freight send/receive`, `connect/listen`, the SDK) on
loopback, against the targets of the relay issue. Run all of it through
bench/relay.sh, which runs the transfers inside bench/wormhole.sh's network
namespace (so magic-wormhole and Freight are timed in the same run, under the
same conditions) and the rest on the host's loopback:

    bash bench/relay.sh [--size 1G] [--rounds 3] [--markdown FILE]

or one piece at a time (project venv):

    .venv/bin/python bench/relay.py sendrecv [--size 1G] [--rounds 3]   # (1) + (2)
    .venv/bin/python bench/relay.py datapath [--size 1G] [--rounds 3]   # (2), SDK
    .venv/bin/python bench/relay.py pipes [--pipes 200] [--messages 8]   # (3)
    .venv/bin/python bench/relay.py latency [--samples 101]              # (4)
    .venv/bin/python bench/relay.py report --results DIR [--markdown FILE]

Every piece starts its own `freight hub` (fresh data folder, free port on
127.0.0.1, self-signed certificate pinned at login) and two accounts made by
the admin: `alice` sends / dials, `bob` receives / listens, each logged in
with its own config folder. What is measured:

sendrecv  `freight send FILE --json` as alice, then, once it has printed its
          code (so the sender is attached and waiting), `freight receive CODE
          -o DIR --json` as bob. Time = from starting the receiver until it
          exits, as bench/wormhole_run.py times magic-wormhole; the received
          file is compared with `cmp`. Variants (alternating order each
          round): `auto` (no --transport: the default), `ws` (--transport ws),
          `http` (--transport http: the long-poll attachment). The CLI has no
          --data-path, so all three use the default data path. Under
          bench/wormhole.sh's --freight hook, BENCH_FILE / BENCH_TMP /
          BENCH_SIZE / BENCH_ROUNDS / BENCH_MARKDOWN give the defaults, and
          rows are appended to the wormhole table (same columns).
datapath  The same size through one SDK pipe (1 MiB messages) per transport
          (ws, http) x data path (auto: records on the lane, a direct data
          connection; tls: records inside the attachment), since the CLI
          cannot choose the data path. Same two worker processes as `pipes`.
pipes     One SDK process for bob listens on `bench-0..N-1`; one SDK process
          for alice opens all N connections at once; each sends M messages of
          `--message-size` (default 8 x 1 MiB) and waits for the listener's
          ack, which comes after it has checked every byte. The hub's VmRSS is
          sampled every 0.1 s from /proc and its VmHWM read at the end. Time =
          from the dialer's "go" until its last pipe has closed.
latency   One process, two RelayClients already started (attached, identity
          registered), bob listening. Per sample: t0 before `connect()`, then
          `send(b"x")`; t1 when bob's `recv()` returns. Each connection is
          closed before the next sample. Median and p90 (nearest rank).

Every subcommand prints a table, writes --out JSON (for `report`), and
appends markdown with --markdown. Exit status 1 if a target is missed or a
run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import queue
import re
import resource
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import peers
from peers import FREIGHT, PeerError

from bench import fs_type, human, markdown_table, parse_size, write_random

REPO_DIR = peers.REPO_DIR
DEFAULT_TMP = REPO_DIR / ".bench-tmp" / "relay"  # gitignored
MiB = 1 << 20
SENDER, RECEIVER = "alice", "bob"  # alice sends/dials, bob receives/listens
USER_PASSWORD = "bench-user-password"
# Same columns as bench.py / wormhole_run.py, so rows fit the wormhole table.
HEADERS = ["test", "MB/s", "MB/s range", "seconds", "CPU s (client+server)", "CPU s/GB", "note"]
TARGET_HEADERS = ["target", "measured", "ratio", "verdict"]
VARIANTS = {
    "auto": [],  # the default: WebSocket, falling back to HTTP
    "ws": ["--transport", "ws"],
    "http": ["--transport", "http"],
}


def log(msg: str) -> None:
    print(f"[relay] {msg}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def nearest_rank(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# ------------------------------------------------------------------ processes


class Terminated(Exception):
    """SIGTERM/SIGHUP: unwind so that every hub and client is stopped."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def kill_group(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session (its whole group) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process in bytes ({} once it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def tail(path: Path, n: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


class Sampler:
    """Calls probe() every `interval` s in a thread; keeps (monotonic, value)."""

    def __init__(self, probe: Any, interval: float = 0.1) -> None:
        self.probe, self.interval = probe, interval
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), self.probe()))
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class RelayHub(peers.FreightHub):
    """A hub (peers.FreightHub: free port, admin logged in) plus two accounts,
    each logged in with its own config folder."""

    def __init__(self, workdir: Path, hub_args: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.hub_args = hub_args or []
        self.cfgs: dict[str, Path] = {}

    def start(self) -> RelayHub:
        if not FREIGHT.exists():
            raise PeerError(f"{FREIGHT} not found (is the freight package installed?)")
        self.cfg.mkdir()
        cmd = [
            str(FREIGHT), "hub", "--data", str(self.data),
            "--listen", f"127.0.0.1:{self.port}", *self.hub_args,
        ]  # fmt: skip
        env = peers._freight_env(FREIGHT_ADMIN_PASSWORD=self.password)
        self.proc = peers.start_server(cmd, self.dir / "hub.log", env=env)
        peers._wait_health(self.url, self.proc)
        self._login()
        fingerprint = peers.freight_fingerprint(self.data)
        for user in (SENDER, RECEIVER):
            self._run(self.cfg, "users", "add", user, "--password-stdin", stdin=USER_PASSWORD)
            cfg = self.dir / f"client-{user}"
            cfg.mkdir()
            self._run(
                cfg, "login", self.url, "--user", user, "--password-stdin",
                "--fingerprint", fingerprint, stdin=USER_PASSWORD,
            )  # fmt: skip
            self.cfgs[user] = cfg
        return self

    def _run(self, cfg: Path, *args: str, stdin: str = "") -> str:
        res = subprocess.run(
            [str(FREIGHT), *args],
            input=(stdin + "\n").encode(),
            capture_output=True,
            env=peers._freight_env(cfg),
            timeout=120,
        )
        if res.returncode != 0:
            err = (res.stderr or res.stdout).decode(errors="replace").strip()[-800:]
            raise PeerError(f"freight {' '.join(args[:2])} exited {res.returncode}: {err}")
        return res.stdout.decode(errors="replace")

    def env(self, user: str) -> dict[str, str]:
        return peers._freight_env(self.cfgs[user])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# ------------------------------------------------------------------ reporting


@dataclass
class Report:
    """One section: a title, a table, notes, and rows for the targets table."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[list[str]] = field(default_factory=list)
    failed: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        parts = [f"### {self.title}", "", markdown_table(self.headers, self.rows)]
        if self.notes:
            parts += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(parts) + "\n"

    def print(self) -> None:
        print("\n" + self.text(), flush=True)
        if self.targets:
            print(markdown_table(TARGET_HEADERS, self.targets) + "\n", flush=True)

    def save(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Report:
        return cls(**json.loads(path.read_text()))


def _version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if res.returncode == 0 and text else "?"


def environment() -> dict[str, str]:
    return {
        "uname -a": " ".join(platform.uname()),
        "nproc": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "freight": _version([str(FREIGHT), "--version"]),
    }


def append_section(
    path: Path, title: str, command: str, body: list[str], extra_env: dict[str, str] | None = None
) -> None:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    env = {**environment(), **(extra_env or {})}
    parts = [
        f"\n## {title} ({now})\n",
        f"Command: `{command}`\n",
        "\n".join(f"- {k}: `{v}`" for k, v in env.items()) + "\n",
        *body,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(parts))
    log(f"appended results to {path}")


def this_command() -> str:
    argv0 = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        argv0 = argv0.relative_to(REPO_DIR)
    return shlex.join([str(argv0), *sys.argv[1:]])


def append_rows(path: Path, rows: list[list[str]]) -> None:
    """Append rows to the table a file ends with (the wormhole table), or start
    one with HEADERS, as wormhole_run.append_markdown does."""
    text = path.read_text() if path.exists() else ""
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    lines: list[str] = []
    if not last.startswith("|"):
        lines = [
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|" + "|".join("---" for _ in HEADERS) + "|",
        ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    with open(path, "a") as f:
        if text and not text.endswith("\n"):
            f.write("\n")
        f.write("\n".join(lines) + "\n")
    log(f"appended {len(rows)} row(s) to {path}")


# ------------------------------------------------------------- (1)+(2) sendrecv


@dataclass
class Round:
    seconds: float  # receiver start -> receiver exit
    cpu: float  # both CLI processes + the hub
    inner: float  # the receiver's own --json "seconds" (claim done -> verified)


def sendrecv_round(hub: RelayHub, variant: str, src: Path, work: Path, timeout: float) -> Round:
    extra = VARIANTS[variant]
    out_dir = work / "received"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    send_err, recv_out, recv_err = (
        work / f"{variant}-send.err", work / f"{variant}-receive.out", work / f"{variant}-receive.err",
    )  # fmt: skip
    cpu0, hub0 = children_cpu(), peers.tree_cpu(hub.pid)
    procs: list[subprocess.Popen[Any]] = []
    fired = threading.Event()

    def watchdog() -> None:
        fired.set()
        for p in procs:
            kill_group(p, signal.SIGKILL)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    try:
        with open(send_err, "wb") as se:
            sender = subprocess.Popen(
                [str(FREIGHT), "send", str(src), "--json", *extra],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=se,
                env=hub.env(SENDER),
                start_new_session=True,
            )
        procs.append(sender)
        assert sender.stdout is not None
        first = sender.stdout.readline()  # {"event": "code", ...}: attached, offer made
        try:
            code = json.loads(first)["code"]
        except (ValueError, KeyError):
            why = f"killed after {timeout:.0f} s" if fired.is_set() else "printed no code"
            raise PeerError(f"{variant}: freight send {why}: {first!r}\n{tail(send_err)}") from None
        with open(recv_out, "wb") as ro, open(recv_err, "wb") as re_:
            t0 = time.perf_counter()
            receiver = subprocess.Popen(
                [str(FREIGHT), "receive", code, "-o", str(out_dir), "--json", *extra],
                stdin=subprocess.DEVNULL,
                stdout=ro,
                stderr=re_,
                env=hub.env(RECEIVER),
                start_new_session=True,
            )
            procs.append(receiver)
            rc_recv = receiver.wait()
            seconds = time.perf_counter() - t0
        rest = sender.stdout.read()
        rc_send = sender.wait()
    finally:
        timer.cancel()
        for p in procs:
            kill_group(p, signal.SIGKILL)
        if procs and procs[0].stdout is not None:
            procs[0].stdout.close()
    cpu = children_cpu() - cpu0 + peers.tree_cpu(hub.pid) - hub0
    if fired.is_set() or rc_recv or rc_send:
        raise PeerError(
            f"{variant}: receive exit {rc_recv}, send exit {rc_send}"
            f"{' (watchdog)' if fired.is_set() else ''}\n--- send:\n{tail(send_err)}"
            f"\n--- receive:\n{tail(recv_err)}\n--- hub:\n{tail(hub.dir / 'hub.log')}"
        )
    dst = out_dir / src.name
    if subprocess.run(["cmp", "-s", str(src), str(dst)]).returncode != 0:
        raise PeerError(f"{variant}: {dst} differs from {src}")
    try:
        done = json.loads(recv_out.read_text().strip().splitlines()[-1])
        sent = json.loads(rest.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PeerError(
            f"{variant}: no --json summary: {recv_out.read_text()!r} {rest!r}"
        ) from None
    if done.get("bytes") != src.stat().st_size or sent.get("bytes") != src.stat().st_size:
        raise PeerError(f"{variant}: summaries do not add up: {done} / {sent}")
    shutil.rmtree(out_dir, ignore_errors=True)
    size = src.stat().st_size
    log(
        f"{variant}: {seconds:.2f} s, {size / seconds / 1e6:.1f} MB/s "
        f"(transfer alone {done['seconds']:.2f} s), CPU {cpu:.2f} s"
    )
    return Round(seconds, cpu, float(done["seconds"]))


def sendrecv_cmd(args: argparse.Namespace) -> Report:
    size = parse_size(args.size)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise PeerError(f"unknown variant {v!r} (use {', '.join(VARIANTS)})")
    work = Path(tempfile.mkdtemp(prefix="sendrecv-", dir=args.tmp))
    src = Path(args.file) if args.file else work / f"random-{size}.bin"
    made = False
    try:
        if not args.file:
            log(f"writing {human(size)} of random data to {src}")
            write_random(src, size)
            made = True
        size = src.stat().st_size
        results: dict[str, list[Round]] = {v: [] for v in variants}
        timeout = 120 + size / 2e6
        with peers.running(RelayHub(work)) as hub:
            log(f"hub pid {hub.pid} on {hub.url}; sender {SENDER}, receiver {RECEIVER}")
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else list(reversed(variants))
                for v in order:
                    log(f"round {rnd + 1}/{args.rounds}: {v}")
                    results[v].append(sendrecv_round(hub, v, src, work, timeout))
    finally:
        if made:
            src.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    rep = Report(
        f"`freight send` / `freight receive`, {human(size)} random, {args.rounds} round(s)",
        HEADERS,
    )
    speeds: dict[str, float] = {}
    for v, rs in results.items():
        mbps = [size / r.seconds / 1e6 for r in rs]
        speeds[v] = statistics.median(mbps)
        cpu = statistics.median(r.cpu for r in rs)
        flag = " ".join(VARIANTS[v]) or "no --transport"
        rep.rows.append(
            [
                f"freight send/receive {v}",
                f"{speeds[v]:.1f}",
                f"{min(mbps):.0f}-{max(mbps):.0f}",
                f"{statistics.median(r.seconds for r in rs):.2f}",
                f"{cpu:.2f}",
                f"{cpu / (size / 1e9):.2f}",
                f"n={len(rs)}, {size >> 20} MiB; `{flag}`, alice→bob via the hub, e2e "
                f"encrypted; transfer alone (receiver `--json` seconds) "
                f"{statistics.median(r.inner for r in rs):.2f} s",
            ]
        )
    rep.data = {"size": size, "rounds": args.rounds, "mbps": speeds,
                "runs": {v: [asdict(r) for r in rs] for v, rs in results.items()}}  # fmt: skip
    rep.notes.append(
        "Time = receiver start to receiver exit (the sender is already attached and "
        "waiting with its code, as for magic-wormhole); the file is compared with `cmp`. "
        "CPU = both CLI processes + the hub (/proc). `send`/`receive` have no `--data-path`: "
        "with every `--transport` the records go over the client's lane (a direct data "
        "connection to the hub's port) when the network allows it, as it does here, so "
        "`--transport` changes only the control attachment; the SDK rows below compare "
        "the transports with the bytes inside the attachment too."
    )
    if "http" in speeds and ("ws" in speeds or "auto" in speeds):
        base = "ws" if "ws" in speeds else "auto"
        ratio = speeds["http"] / speeds[base]
        ok = ratio >= 0.5
        rep.failed |= not ok
        rep.targets.append(
            [
                f"send/receive `--transport http` ≥ 50 % of `--transport {base}`",
                f"{speeds['http']:.1f} vs {speeds[base]:.1f} MB/s",
                f"**{ratio:.2f}x** ({ratio:.0%})",
                verdict(ok),
            ]
        )
    if args.markdown:
        append_rows(args.markdown, rep.rows)
    return rep


# ------------------------------------------------------------------ (3) pipes

_HEAD = struct.Struct(">II")  # pipe index, message index


def _payload(size: int) -> bytes:
    """The body every message carries after its header (random, fixed seed)."""
    import random

    return random.Random(20261122).randbytes(size - _HEAD.size)


def _emit(event: str, **kw: Any) -> None:
    print(json.dumps({"event": event, **kw}), flush=True)


async def _relay_client(config: str, transport: str, data_path: str = "auto") -> Any:
    from freight.client.config import ClientConfig
    from freight.client.relay import RelayClient
    from freight.client.session import HubSession

    cfg = ClientConfig(Path(config))
    client = RelayClient(HubSession.from_config(cfg), cfg, transport=transport, data_path=data_path)
    await client.start()
    return client


async def _listen_side(a: argparse.Namespace) -> None:
    body = _payload(a.message_size)
    client = await _relay_client(a.config, a.transport, a.data_path)
    try:
        lsts = await asyncio.gather(
            *(client.listen(f"{a.app}-{i}", a.peer) for i in range(a.pipes))
        )
        _emit("ready", transport=client.used_transport, lane=client.lane is not None)

        async def serve(i: int, lst: Any) -> int:
            conn = await lst.accept()
            got = 0
            for j in range(a.messages):
                data = await conn.recv()
                if (
                    len(data) != a.message_size
                    or not data.startswith(_HEAD.pack(i, j))
                    or not data.endswith(body)
                ):
                    raise RuntimeError(f"pipe {i}: message {j} damaged ({len(data)} B)")
                got += len(data)
            await conn.send(b"ok %d" % got)
            if await conn.recv() != b"":
                raise RuntimeError(f"pipe {i}: more data than expected")
            await conn.close()
            return got

        res = await asyncio.gather(
            *(serve(i, lst) for i, lst in enumerate(lsts)), return_exceptions=True
        )
        errors = [repr(r) for r in res if isinstance(r, BaseException)]
        _emit("done", ok=len(res) - len(errors), bytes=sum(r for r in res if isinstance(r, int)),
              errors=errors[:5])  # fmt: skip
    finally:
        await client.aclose()


async def _dial_side(a: argparse.Namespace) -> None:
    body = _payload(a.message_size)
    client = await _relay_client(a.config, a.transport, a.data_path)
    loop = asyncio.get_running_loop()
    try:
        _emit("ready", transport=client.used_transport, lane=client.lane is not None)
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
            return

        async def pipe(i: int) -> tuple[float, float]:
            t = time.perf_counter()
            conn = await client.connect(a.peer, f"{a.app}-{i}", timeout=a.timeout)
            t_conn = time.perf_counter() - t
            for j in range(a.messages):
                await conn.send(_HEAD.pack(i, j) + body)
            reply = await conn.recv()
            if reply != b"ok %d" % (a.messages * a.message_size):
                raise RuntimeError(f"pipe {i}: bad ack {reply[:40]!r}")
            await conn.close()
            return t_conn, time.perf_counter() - t

        t0 = time.perf_counter()
        res = await asyncio.wait_for(
            asyncio.gather(*(pipe(i) for i in range(a.pipes)), return_exceptions=True),
            a.timeout * 5,
        )
        total = time.perf_counter() - t0
        good = [r for r in res if isinstance(r, tuple)]
        errors = [repr(r) for r in res if isinstance(r, BaseException)]
        _emit(
            "done",
            seconds=total,
            ok=len(good),
            errors=errors[:5],
            connect=[c for c, _ in good],
            pipe=[p for _, p in good],
            reconnects=client.reconnects,
        )
    finally:
        await client.aclose()


def worker_cmd(args: argparse.Namespace) -> int:
    """Internal: one side of `pipes`, JSON lines on stdout."""
    try:
        asyncio.run(_listen_side(args) if args.role == "listen" else _dial_side(args))
    except Exception as exc:  # reported to the orchestrator, which fails the run
        _emit("error", error=repr(exc))
        return 1
    return 0


class EventChild:
    """A child process that reports JSON events, one per line, on stdout;
    they arrive on a queue read by a thread. Its stderr goes to ``err``."""

    def __init__(self, cmd: list[str], err: Path, env: dict[str, str], name: str) -> None:
        self.name = name
        self.err = err
        with open(err, "wb") as f:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f,
                text=True, start_new_session=True, env=env,
            )  # fmt: skip
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"{self.name}: no {event!r} after {timeout:.0f} s") from None
        if ev.get("event") != event:
            raise PeerError(f"{self.name}: {ev} instead of {event!r}\n{tail(self.err)}")
        return ev

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


class Worker(EventChild):
    """A `relay.py _worker` child (one side of `pipes`)."""

    def __init__(self, hub: RelayHub, user: str, peer: str, role: str, work: Path,
                 spec: PipeSpec) -> None:  # fmt: skip
        # spec.worker: another checkout's relay.py (bench/ab.py runs each
        # revision's own worker, so its SDK calls match that revision).
        script = spec.worker or str(Path(__file__).resolve())
        cmd = [
            sys.executable, script, "_worker", "--role", role,
            "--config", str(hub.cfgs[user]), "--peer", peer, "--pipes", str(spec.pipes),
            "--messages", str(spec.messages), "--message-size", str(spec.message_size),
            "--transport", spec.transport, "--data-path", spec.data_path,
            "--timeout", str(spec.timeout),
        ]  # fmt: skip
        self.role = role
        super().__init__(cmd, work / f"{role}.err", peers._freight_env(hub.cfgs[user]),
                         f"{role} side")  # fmt: skip

    def go(self) -> None:
        self.say("go")

    def stop(self) -> None:
        kill_group(self.proc)


@dataclass
class PipeSpec:
    pipes: int
    messages: int
    message_size: int
    transport: str = "auto"
    data_path: str = "auto"
    timeout: float = 120.0
    worker: str = ""  # the relay.py to run as `_worker`; "" = this one


@dataclass
class PipeRun:
    ready: dict[str, dict[str, Any]]  # role -> its "ready" event
    done: dict[str, dict[str, Any]]  # role -> its "done" event
    wall: float  # go -> both done, seen from here
    cpu: float  # both workers + the hub, during the run
    status: dict[str, dict[str, int]]  # "before" / "attached" / "after": hub VmRSS, VmHWM
    samples: list[tuple[float, Any]]  # (t, {"hub": rss, "listen": rss, "dial": rss})

    @property
    def ok(self) -> bool:
        n = self.done["dial"].get("expected", -1)
        return all(d["ok"] == n and not d["errors"] for d in self.done.values())


def run_pipes(hub: RelayHub, work: Path, spec: PipeSpec, interval: float = 0.1) -> PipeRun:
    """A listen worker (bob) and a dial worker (alice), both attached before
    "go"; the hub's and the workers' VmRSS sampled every ``interval`` s."""
    st0 = proc_status(hub.pid)
    listen = Worker(hub, RECEIVER, SENDER, "listen", work, spec)
    dial: Worker | None = None
    try:
        ready_l = listen.expect("ready", 120)
        dial = Worker(hub, SENDER, RECEIVER, "dial", work, spec)
        ready_d = dial.expect("ready", 120)
        st1 = proc_status(hub.pid)
        pids = {"hub": hub.pid, "listen": listen.proc.pid, "dial": dial.proc.pid}

        def probe() -> dict[str, int]:
            return {k: proc_status(p).get("VmRSS", 0) for k, p in pids.items()}

        cpu0 = (
            peers.tree_cpu(hub.pid)
            + peers.tree_cpu(listen.proc.pid)
            + peers.tree_cpu(dial.proc.pid)
        )
        with Sampler(probe, interval) as sampler:
            t0 = time.monotonic()
            dial.go()
            done_d = dial.expect("done", spec.timeout * 6)
            done_l = listen.expect("done", 60)
            wall = time.monotonic() - t0
        # The workers are about to exit: read their CPU while they still exist.
        cpu = (
            peers.tree_cpu(hub.pid) + peers.tree_cpu(listen.proc.pid)
            + peers.tree_cpu(dial.proc.pid) - cpu0
        )  # fmt: skip
        st2 = proc_status(hub.pid)
        dial.proc.wait(30)
        listen.proc.wait(30)
    finally:
        listen.stop()
        if dial is not None:
            dial.stop()
    done_d["expected"] = done_l["expected"] = spec.pipes
    return PipeRun(
        ready={"listen": ready_l, "dial": ready_d},
        done={"listen": done_l, "dial": done_d},
        wall=wall,
        cpu=cpu,
        status={"before": st0, "attached": st1, "after": st2},
        samples=sampler.samples,
    )


def _mib(b: float) -> str:
    return f"{b / MiB:.1f} MiB"


def pipes_cmd(args: argparse.Namespace) -> Report:
    spec = PipeSpec(
        args.pipes, args.messages, parse_size(args.message_size), args.transport,
        args.data_path, args.timeout,
    )  # fmt: skip
    target = parse_size(args.target)
    work = Path(tempfile.mkdtemp(prefix="pipes-", dir=args.tmp))
    try:
        with peers.running(RelayHub(work)) as hub:
            run = run_pipes(hub, work, spec, args.interval)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    done_d, done_l = run.done["dial"], run.done["listen"]
    peak = {
        k: max((v.get(k, 0) for _, v in run.samples), default=0) for k in ("hub", "listen", "dial")
    }
    st0, st1, st2 = run.status["before"], run.status["attached"], run.status["after"]
    hwm = st2.get("VmHWM", 0)
    n, msg_size = spec.pipes, spec.message_size
    moved = done_d["ok"] * spec.messages * msg_size
    secs = done_d["seconds"]
    mem_ok = max(peak["hub"], hwm) < target
    conn_t = done_d["connect"] or [float("nan")]
    pipe_t = done_d["pipe"] or [float("nan")]
    rep = Report(
        f"{n} concurrent `connect` pipes through one hub, {spec.messages} x "
        f"{human(msg_size)} each (SDK)",
        ["measure", "value"],
        failed=not (run.ok and mem_ok),
    )
    rep.rows = [
        ["pipes completed (bytes checked, acked)", f"{done_d['ok']}/{n} dial, {done_l['ok']}/{n} listen"],
        ["total time (go → last pipe closed)", f"{secs:.2f} s"],
        ["throughput (payload through the hub)", f"{moved / secs / 1e6:.1f} MB/s ({moved >> 20} MiB)"],
        ["per-pipe connect() median / max", f"{statistics.median(conn_t) * 1e3:.0f} / {max(conn_t) * 1e3:.0f} ms"],
        ["per-pipe total median / max", f"{statistics.median(pipe_t):.2f} / {max(pipe_t):.2f} s"],
        ["hub VmRSS / VmHWM before (after start-up and 3 logins)", f"{_mib(st0.get('VmRSS', 0))} / {_mib(st0.get('VmHWM', 0))}"],
        [f"hub VmRSS with both clients attached, {n} listening", _mib(st1.get("VmRSS", 0))],
        [f"hub peak VmRSS (every {args.interval:g} s, {len(run.samples)} samples)", _mib(peak["hub"])],
        ["hub VmHWM at the end", _mib(hwm)],
        ["CPU during the run (hub + both client processes)", f"{run.cpu:.2f} s"],
        ["client peak VmRSS listen / dial", f"{_mib(peak['listen'])} / {_mib(peak['dial'])}"],
    ]  # fmt: skip
    rl, rd = run.ready["listen"], run.ready["dial"]
    rep.notes.append(
        f"Attachments: listen {rl.get('transport')} (lane {rl.get('lane')}), dial "
        f"{rd.get('transport')} (lane {rd.get('lane')}); one RelayClient per side, in two "
        f"processes; client reconnects during the run: {done_d.get('reconnects')}. The "
        "listener checks every byte of every message before it acks."
    )
    if done_d["errors"] or done_l["errors"]:
        rep.notes.append(f"errors: dial {done_d['errors']}, listen {done_l['errors']}")
    rep.notes.append(f"Orchestrator wall time (go → both done): {run.wall:.2f} s.")
    rep.targets.append(
        [
            f"{n} concurrent `connect` pipes, {spec.messages} x {human(msg_size)} each: all "
            f"complete, hub memory < {human(target)}",
            f"{done_d['ok']}/{n} complete in {secs:.2f} s ({moved / secs / 1e6:.1f} MB/s); "
            f"hub peak VmRSS {_mib(peak['hub'])}, VmHWM {_mib(hwm)}",
            f"**{max(peak['hub'], hwm) / target:.2f}x** of the limit",
            verdict(run.ok and mem_ok),
        ]
    )
    rep.data = {"peak": peak, "hwm": hwm, "seconds": secs, "ok": done_d["ok"], "bytes": moved}
    return rep


# ------------------------------------------------------- (2b) SDK data paths

DATAPATH_COMBOS = [("ws", "auto"), ("http", "auto"), ("ws", "tls"), ("http", "tls")]


def datapath_cmd(args: argparse.Namespace) -> Report:
    """One SDK pipe carrying --size in 1 MiB messages, per transport x data path:
    where the CLI cannot choose the data path, this shows what the HTTP
    attachment costs when the bytes travel inside it (data path "tls")."""
    msg_size = parse_size(args.message_size)
    size = parse_size(args.size)
    messages = max(1, size // msg_size)
    size = messages * msg_size
    work = Path(tempfile.mkdtemp(prefix="datapath-", dir=args.tmp))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in DATAPATH_COMBOS}
    lanes: dict[tuple[str, str], str] = {}
    try:
        with peers.running(RelayHub(work)) as hub:
            for rnd in range(args.rounds):
                order = DATAPATH_COMBOS if rnd % 2 == 0 else list(reversed(DATAPATH_COMBOS))
                for transport, data_path in order:
                    spec = PipeSpec(1, messages, msg_size, transport, data_path, args.timeout)
                    run = run_pipes(hub, work, spec, 0.5)
                    if not run.ok:
                        raise PeerError(f"{transport}/{data_path}: {run.done}")
                    secs = run.done["dial"]["seconds"]
                    results[(transport, data_path)].append((secs, run.cpu))
                    r = run.ready["dial"]
                    lanes[(transport, data_path)] = (
                        f"{r.get('transport')}, lane {'yes' if r.get('lane') else 'no'}"
                    )
                    log(
                        f"round {rnd + 1}/{args.rounds}: SDK {transport}/{data_path}: "
                        f"{secs:.2f} s, {size / secs / 1e6:.1f} MB/s, CPU {run.cpu:.2f} s"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rep = Report(
        f"SDK, one pipe, {human(size)} in {human(msg_size)} messages: transport x data path, "
        f"{args.rounds} round(s)",
        HEADERS,
    )
    speeds: dict[str, float] = {}
    for (transport, data_path), rs in results.items():
        mbps = [size / s / 1e6 for s, _ in rs]
        key = f"{transport}/{data_path}"
        speeds[key] = statistics.median(mbps)
        cpu = statistics.median(c for _, c in rs)
        where = "records on the lane (direct data connection)" if data_path == "auto" else (
            "records inside the attachment (TLS port only)")  # fmt: skip
        rep.rows.append(
            [
                f"SDK pipe transport={transport} data_path={data_path}",
                f"{speeds[key]:.1f}",
                f"{min(mbps):.0f}-{max(mbps):.0f}",
                f"{statistics.median(s for s, _ in rs):.2f}",
                f"{cpu:.2f}",
                f"{cpu / (size / 1e9):.2f}",
                f"n={len(rs)}, {size >> 20} MiB; {where}; attached {lanes[(transport, data_path)]}",
            ]
        )
    rep.notes.append(
        "Two SDK processes (alice dials, bob listens and checks every byte), both attached "
        "before the clock starts; time = first connect() to the dialer's close() after bob's "
        "ack. CPU = both processes + the hub."
    )
    for dp in ("tls", "auto"):
        ratio = speeds[f"http/{dp}"] / speeds[f"ws/{dp}"]
        ok = ratio >= 0.5
        if dp == "tls":
            rep.failed |= not ok
        rep.targets.append(
            [
                f'SDK `transport="http"` ≥ 50 % of `"ws"`, data path `{dp}`'
                + (" (bytes inside the attachment)" if dp == "tls" else " (bytes on the lane)"),
                f"{speeds[f'http/{dp}']:.1f} vs {speeds[f'ws/{dp}']:.1f} MB/s",
                f"**{ratio:.2f}x** ({ratio:.0%})",
                verdict(ok),
            ]
        )
    rep.data = {"size": size, "mbps": speeds}
    if args.markdown:
        append_rows(args.markdown, rep.rows)
    return rep


# ---------------------------------------------------------------- (4) latency


async def _latency(args: argparse.Namespace, hub: RelayHub) -> dict[str, list[Any]]:
    a = await _relay_client(str(hub.cfgs[SENDER]), args.transport)
    b = await _relay_client(str(hub.cfgs[RECEIVER]), args.transport)
    out: dict[str, list[Any]] = {"first_byte": [], "connect": []}
    try:
        lst = await b.listen("bench-latency", SENDER)

        async def first_byte() -> tuple[Any, float]:
            conn = await lst.accept()
            data = await conn.recv()
            t1 = time.perf_counter()
            if data != b"x":
                raise RuntimeError(f"got {data!r}")
            return conn, t1

        async def close_listener(conn: Any) -> None:
            while await conn.recv():
                pass
            await conn.close()

        for k in range(args.warmup + args.samples):
            task = asyncio.create_task(first_byte())
            t0 = time.perf_counter()
            conn = await a.connect(RECEIVER, "bench-latency", timeout=30)
            t_conn = time.perf_counter()
            await conn.send(b"x")
            lconn, t1 = await asyncio.wait_for(task, 30)
            if k >= args.warmup:
                out["first_byte"].append(t1 - t0)
                out["connect"].append(t_conn - t0)
            await conn.shutdown()
            await asyncio.wait_for(asyncio.gather(conn.close(), close_listener(lconn)), 30)
        out["transport"] = [a.used_transport, b.used_transport]
        out["lane"] = [a.lane is not None, b.lane is not None]
    finally:
        await a.aclose()
        await b.aclose()
    return out


def latency_cmd(args: argparse.Namespace) -> Report:
    target = args.target / 1e3
    work = Path(tempfile.mkdtemp(prefix="latency-", dir=args.tmp))
    try:
        with peers.running(RelayHub(work)) as hub:
            res = asyncio.run(_latency(args, hub))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fb, cn = res["first_byte"], res["connect"]
    med, p90 = statistics.median(fb), nearest_rank(fb, 0.9)
    rep = Report(
        f"`connect` → first byte delivered (SDK, listener already listening), {len(fb)} samples",
        ["measure", "median", "p90", "min", "max"],
        failed=med >= target,
    )
    rep.rows = [
        ["connect() → send(b'x') → listener recv() returns", ms(med), ms(p90), ms(min(fb)), ms(max(fb))],
        ["of which connect() (dial, link, handshake)", ms(statistics.median(cn)),
         ms(nearest_rank(cn, 0.9)), ms(min(cn)), ms(max(cn))],
    ]  # fmt: skip
    rep.notes.append(
        f"Two RelayClients in one process, started (attached, identity key registered) before "
        f"the first sample; attachments {res['transport']}, lanes {res['lane']}. Each "
        f"connection is closed before the next sample; {args.warmup} warm-up sample(s) not "
        "counted. p90 = nearest rank."
    )
    rep.targets.append(
        [
            f"`connect` to first byte delivered, after login: median < {args.target:g} ms",
            f"median {ms(med)}, p90 {ms(p90)} ({len(fb)} samples)",
            f"**{med / target:.2f}x** of the limit",
            verdict(med < target),
        ]
    )
    rep.data = {"first_byte": fb, "connect": cn}
    return rep


# ------------------------------------------------------------------- report

_WORMHOLE_LINE = re.compile(r"^(wormhole-relay|wormhole-direct) (\d+) ([\d.]+) ([\d.]+)$", re.M)


def report_cmd(args: argparse.Namespace) -> Report:
    """Combine the pieces bench/relay.sh ran into one section."""
    res = args.results
    targets: list[list[str]] = []
    failed = False
    body: list[str] = []
    wormhole = {m[1]: float(m[4]) for m in _WORMHOLE_LINE.finditer(_read(res / "wormhole.out"))}
    sr = Report.load(res / "sendrecv.json") if (res / "sendrecv.json").exists() else None
    if sr is not None:
        speeds = sr.data["mbps"]
        main = "auto" if "auto" in speeds else next(iter(speeds))
        for mode, factor in (("wormhole-relay", 2.0), ("wormhole-direct", 1.0)):
            if mode not in wormhole:
                targets.append(
                    [f"send/receive ≥ {factor:g}x {mode}", "no wormhole figure", "", "missed"]
                )
                failed = True
                continue
            ratio = speeds[main] / wormhole[mode]
            ok = ratio >= factor
            failed |= not ok
            targets.append(
                [
                    f"send/receive {human(sr.data['size'])} random ≥ {factor:g}x magic-wormhole "
                    f"{mode.split('-')[1]} mode",
                    f"{speeds[main]:.1f} vs {wormhole[mode]:.1f} MB/s",
                    f"**{ratio:.2f}x**",
                    verdict(ok),
                ]
            )
        targets += sr.targets
        failed |= sr.failed
    else:
        targets.append(
            ["send/receive vs magic-wormhole", "did not run (see the log)", "", "missed"]
        )
        failed = True
    dp = Report.load(res / "datapath.json") if (res / "datapath.json").exists() else None
    if dp is not None:
        targets += dp.targets
        failed |= dp.failed
    else:
        targets.append(["SDK transport x data path", "did not run (see the log)", "", "missed"])
        failed = True
    table = _read(res / "transfer.md").strip()
    if table:
        body.append(
            f"### Transfers in one network namespace (`unshare -n`, only `lo`): magic-wormhole, "
            f"then Freight, same file\n\n{table}\n"
        )
        if sr is not None and wormhole:
            ratios = [
                [f"freight send/receive {v} / {mode}", f"{s / w:.2f}x"]
                for v, s in sr.data["mbps"].items()
                for mode, w in wormhole.items()
            ]
            if "http" in sr.data["mbps"]:
                for v in ("auto", "ws"):
                    if v in sr.data["mbps"]:
                        ratios.append(
                            [f"freight send/receive http / {v}",
                             f"{sr.data['mbps']['http'] / sr.data['mbps'][v]:.2f}x"]
                        )  # fmt: skip
            if dp is not None:
                for path in ("auto", "tls"):
                    ratios.append(
                        [f"SDK pipe http / ws, data_path={path}",
                         f"{dp.data['mbps'][f'http/{path}'] / dp.data['mbps'][f'ws/{path}']:.2f}x"]
                    )  # fmt: skip
            body.append(markdown_table(["ratio of median MB/s", "value"], ratios) + "\n")
        notes = [*(sr.notes if sr else []), *(dp.notes if dp else [])]
        if notes:
            body.append("\n".join(f"- {n}" for n in notes) + "\n")
    for name in ("pipes", "latency"):
        path = res / f"{name}.json"
        if not path.exists():
            targets.append([f"{name}", "did not run (see the log)", "", "missed"])
            failed = True
            continue
        r = Report.load(path)
        targets += r.targets
        failed |= r.failed
        body.append(r.text())
    rep = Report("Relay targets", TARGET_HEADERS, rows=targets, failed=failed)
    print("\n" + markdown_table(TARGET_HEADERS, targets) + "\n", flush=True)
    if args.markdown:
        wv = _read(res / "wormhole-version.txt").strip() or "?"
        append_section(
            args.markdown,
            "Relay: send/receive vs magic-wormhole, concurrent pipes, connect latency",
            args.command or this_command(),
            [markdown_table(TARGET_HEADERS, targets) + "\n", *body],
            {"magic-wormhole": wv},
        )
    return rep


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/relay.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser, tmp: str | None = None) -> None:
        sp.add_argument("--tmp", type=Path, default=Path(tmp) if tmp else DEFAULT_TMP,
                        help="scratch folder (not tmpfs)")  # fmt: skip
        sp.add_argument("--out", type=Path, help="write the results as JSON (for `report`)")

    sr = sub.add_parser("sendrecv", help="(1)+(2) freight send/receive through the hub")
    common(sr, env.get("BENCH_TMP"))
    sr.add_argument("--file", default=env.get("BENCH_FILE"), help="file to send ($BENCH_FILE)")
    sr.add_argument("--size", default=env.get("BENCH_SIZE", "1G"), help="without --file (1G)")
    sr.add_argument("--rounds", type=int, default=int(env.get("BENCH_ROUNDS", "3")))
    sr.add_argument("--variants", default="auto,ws,http", help=f"of {', '.join(VARIANTS)}")
    sr.add_argument("--markdown", type=Path, default=Path(env["BENCH_MARKDOWN"])
                    if env.get("BENCH_MARKDOWN") else None,
                    help="append rows to the table this file ends with ($BENCH_MARKDOWN)")  # fmt: skip

    pi = sub.add_parser("pipes", help="(3) N concurrent connect pipes, hub memory")
    common(pi)
    pi.add_argument("--pipes", type=int, default=200)
    pi.add_argument("--messages", type=int, default=8, help="messages per pipe")
    pi.add_argument("--message-size", default="1M")
    pi.add_argument("--target", default="400M", help="hub memory target")
    pi.add_argument("--transport", default="auto")
    pi.add_argument("--data-path", default="auto", help="auto, direct or tls")
    pi.add_argument("--interval", type=float, default=0.1, help="RSS sampling, seconds")
    pi.add_argument("--timeout", type=float, default=120.0, help="connect timeout, seconds")
    pi.add_argument("--markdown", type=Path)

    dp = sub.add_parser("datapath", help="(2b) SDK pipe: ws/http x data path auto/tls")
    common(dp, env.get("BENCH_TMP"))
    dp.add_argument("--size", default=env.get("BENCH_SIZE", "1G"), help="bytes per pipe (1G)")
    dp.add_argument("--rounds", type=int, default=int(env.get("BENCH_ROUNDS", "3")))
    dp.add_argument("--message-size", default="1M")
    dp.add_argument("--timeout", type=float, default=600.0, help="seconds, per transfer / 5")
    dp.add_argument("--markdown", type=Path, default=Path(env["BENCH_MARKDOWN"])
                    if env.get("BENCH_MARKDOWN") else None,
                    help="append rows to the table this file ends with ($BENCH_MARKDOWN)")  # fmt: skip

    la = sub.add_parser("latency", help="(4) connect -> first byte")
    common(la)
    la.add_argument("--samples", type=int, default=101)
    la.add_argument("--warmup", type=int, default=0, help="samples run first and not counted")
    la.add_argument("--target", type=float, default=50.0, help="median target, ms")
    la.add_argument("--transport", default="auto")
    la.add_argument("--markdown", type=Path)

    rp = sub.add_parser("report", help="combine the results of bench/relay.sh")
    rp.add_argument("--results", type=Path, required=True)
    rp.add_argument("--markdown", type=Path)
    rp.add_argument("--command", help="the command line to quote in the markdown")

    wk = sub.add_parser("_worker", help=argparse.SUPPRESS)
    wk.add_argument("--role", choices=["listen", "dial"], required=True)
    wk.add_argument("--config", required=True)
    wk.add_argument("--peer", required=True)
    wk.add_argument("--app", default="bench")
    wk.add_argument("--pipes", type=int, required=True)
    wk.add_argument("--messages", type=int, required=True)
    wk.add_argument("--message-size", type=int, required=True)
    wk.add_argument("--transport", default="auto")
    wk.add_argument("--data-path", default="auto")
    wk.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "_worker":
        return worker_cmd(args)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if args.cmd == "report":
        return 1 if report_cmd(args).failed else 0
    args.tmp = args.tmp.resolve()
    args.tmp.mkdir(parents=True, exist_ok=True)
    if fs_type(args.tmp) in ("tmpfs", "ramfs") and args.cmd == "sendrecv":
        log(f"note: {args.tmp} is on {fs_type(args.tmp)}")
    commands = {
        "sendrecv": sendrecv_cmd,
        "datapath": datapath_cmd,
        "pipes": pipes_cmd,
        "latency": latency_cmd,
    }
    try:
        rep = commands[args.cmd](args)
    except (PeerError, OSError, subprocess.SubprocessError, RuntimeError, TimeoutError) as e:
        log(f"{args.cmd}: FAILED: {e}")
        return 1
    rep.print()
    rep.save(args.out)
    if args.markdown and args.cmd not in ("sendrecv", "datapath"):  # those append rows
        append_section(args.markdown, rep.title, this_command(), [rep.text(), markdown_table(
            TARGET_HEADERS, rep.targets) + "\n"])  # fmt: skip
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
