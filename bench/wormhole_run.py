"""Time magic-wormhole `send`/`receive` on loopback: the peer `freight send/receive` is
compared against. Run it through bench/wormhole.sh, which installs magic-wormhole, its
mailbox server and its transit relay into .bench-tmp/wormhole-venv and starts this
driver inside a fresh network namespace (`unshare -n`, only `lo` up):

    bash bench/wormhole.sh                          # 1 GiB, 3 rounds, both modes
    bash bench/wormhole.sh --size 256M --rounds 1
    bash bench/wormhole.sh --markdown FILE --freight 'CMD using $BENCH_FILE $BENCH_TMP'

Why a namespace: a wormhole client offers every address of the machine as a direct
hint (it parses `ip addr`) and drops 127.0.0.1 when it has any other one. Inside a
namespace whose only interface is `lo`, its only hint is 127.0.0.1, so the direct
mode stays on loopback and the ports below (4000, 4001) are always free.

Two modes, run alternately in every round (the order flips each round, so the
machine's drift hits both alike):

* wormhole-relay:  `--no-listen` on both sides, so neither side offers a direct hint
  and the only way to meet is the transit relay. Checked each round: both clients
  print `Sending/Receiving (->relay:tcp:127.0.0.1:4001)`, and the relay's usage DB
  gains a `happy` row that carried at least the file's size.
* wormhole-direct: the default (both listen). Checked each round: neither client
  names the relay, the connection is to/from 127.0.0.1, and the relay carried
  nothing.

Each round: the sender starts first and is ready (connected to the mailbox, code
set) before the receiver starts; the time counted is from the receiver's start to
its exit (its exit comes after the file is written and its SHA-256 checked, and
after it has sent the ack the sender waits for), with both processes running
concurrently meanwhile. The received file is compared with `cmp`. Reported per
mode: median seconds and median MB/s (10^6 bytes/s) over the rounds.

stdout gets one line per mode: `MODE BYTES SECONDS MB/S`; progress goes to stderr.
Only the standard library is used (it runs with the wormhole venv's Python).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_TMP = REPO_DIR / ".bench-tmp" / "wormhole"  # gitignored at the repo root
BIN = Path(sys.executable).parent  # the wormhole venv's bin/ (wormhole, twist)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Fixed ports are safe: the namespace is ours alone.
MAILBOX_PORT = 4000
RELAY_PORT = 4001
RELAY_URL = f"ws://127.0.0.1:{MAILBOX_PORT}/v1"
TRANSIT_HELPER = f"tcp:127.0.0.1:{RELAY_PORT}"
CODE = "7-crossbow-gazelle"
MODES = {
    # mode name -> extra option for both `wormhole send` and `wormhole receive`
    "wormhole-relay": ["--no-listen"],
    "wormhole-direct": [],
}
HEADERS = ["test", "MB/s", "MB/s range", "seconds", "CPU s (client+server)", "CPU s/GB", "note"]


class BenchError(RuntimeError):
    """A round failed or could not be verified: the run stops with this message."""


def log(msg: str) -> None:
    print(f"[wormhole] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """'256M', '1G', '1GiB', '1048576' -> bytes (binary multiples, as bench.py)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    return int(float(t.rstrip("KMGT")) * mult)


def write_random(path: Path, size: int) -> None:
    """Incompressible data, 16 MiB at a time (os.urandom runs at several 100 MB/s)."""
    chunk = 16 << 20
    with open(path, "wb") as f:
        for off in range(0, size, chunk):
            f.write(os.urandom(min(chunk, size - off)))


# ------------------------------------------------------------------------ servers


def proc_cpu(pid: int) -> float:
    """utime+stime of one live process, in seconds (twist does not fork workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server on port {port} exited:\n{tail(logfile)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after 30 s:\n{tail(logfile)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


@dataclass
class Servers:
    """The mailbox (rendezvous) server and the transit relay, both on loopback."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def usage_db(self) -> Path:
        return self.tmp / "transit-usage.sqlite"

    def start(self) -> None:
        for name in ("mailbox.sqlite", "transit-usage.sqlite"):
            (self.tmp / name).unlink(missing_ok=True)  # fresh state: no stale nameplate
        plugins = [
            (
                "mailbox",
                MAILBOX_PORT,
                [
                    "wormhole-mailbox",
                    f"--port=tcp:{MAILBOX_PORT}:interface=127.0.0.1",
                    f"--channel-db={self.tmp / 'mailbox.sqlite'}",
                ],
            ),
            (
                "transit",
                RELAY_PORT,
                [
                    "transitrelay",
                    f"--port=tcp:{RELAY_PORT}:interface=127.0.0.1",
                    # One row per relayed connection pair, with the bytes it carried:
                    # how relay mode is verified.
                    f"--usage-db={self.usage_db}",
                ],
            ),
        ]
        for name, port, argv in plugins:
            logfile = self.tmp / f"{name}.log"
            with open(logfile, "wb") as out:
                proc = subprocess.Popen(
                    [str(BIN / "twist"), "--log-format=text", *argv],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # our Ctrl-C handling stops it, not the tty
                )
            self.procs.append(proc)
            wait_port(port, proc, logfile)
            log(f"{name} server up on 127.0.0.1:{port} (pid {proc.pid}, log {logfile})")

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs)

    def relayed(self) -> list[tuple[int, str]]:
        """(total_bytes, result) of every finished relay connection so far."""
        if not self.usage_db.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.usage_db, timeout=5)) as db:
            rows = db.execute("SELECT total_bytes, result FROM usage ORDER BY rowid").fetchall()
        return [(int(b or 0), str(r)) for b, r in rows]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()


# ------------------------------------------------------------------------- rounds


@dataclass
class Result:
    seconds: float
    cpu: float
    relayed_bytes: int


def wormhole(*argv: str) -> list[str]:
    # --relay-url/--transit-helper are options of `wormhole` itself, before the verb.
    return [
        str(BIN / "wormhole"),
        "--relay-url",
        RELAY_URL,
        "--transit-helper",
        TRANSIT_HELPER,
        *argv,
    ]


def describe(errfile: Path) -> str:
    """What a client says it connected over, e.g. '->relay:tcp:127.0.0.1:4001'."""
    m = re.search(r"^(?:Sending|Receiving) \((.*)\)\.\.$", errfile.read_text(), re.M)
    return m.group(1) if m else "?"


class Watchdog:
    """Kills the clients after `timeout` s, so the main thread can block in wait()
    (an exact exit time, where wait(timeout) would poll) and a hung round still ends."""

    def __init__(self, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
        self.timeout, self.procs, self.fired = timeout, procs, False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

    def cancel(self) -> None:
        self._timer.cancel()


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_round(mode: str, src: Path, tmp: Path, servers: Servers, timeout: float) -> Result:
    size = src.stat().st_size
    extra = MODES[mode]
    recv_dir = tmp / "received"
    shutil.rmtree(recv_dir, ignore_errors=True)
    recv_dir.mkdir(parents=True)
    dst = recv_dir / src.name
    send_err, recv_err = tmp / f"{mode}-send.log", tmp / f"{mode}-receive.log"
    rows_before = len(servers.relayed())
    cpu0, srv0 = children_cpu(), servers.cpu()

    with open(send_err, "wb") as se:
        sender = subprocess.Popen(
            wormhole("send", "--no-qr", "--hide-progress", *extra, "--code", CODE, str(src)),
            stdout=se,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, for the watchdog's killpg
        )
    procs = [sender]
    watchdog = Watchdog(timeout, procs)
    try:
        # Ready = connected to the mailbox and code set (it prints the code after
        # the mailbox's welcome), so the receiver's time excludes the sender's
        # start-up but still includes the receiver's own.
        deadline = time.monotonic() + 60
        while "On the other computer" not in send_err.read_text(errors="replace"):
            if sender.poll() is not None or time.monotonic() > deadline:
                why = f"killed after {timeout:.0f} s" if watchdog.fired else "did not get ready"
                raise BenchError(f"{mode}: wormhole send {why}:\n{tail(send_err)}")
            time.sleep(0.01)
        with open(recv_err, "wb") as re_:
            t0 = time.perf_counter()
            receiver = subprocess.Popen(
                wormhole(
                    "receive", "--hide-progress", "--accept-file", *extra, "-o", str(dst), CODE
                ),
                stdout=re_,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(receiver)
            rc_recv = receiver.wait()
            seconds = time.perf_counter() - t0
        rc_send = sender.wait()
        lag = time.perf_counter() - t0 - seconds
    finally:
        watchdog.cancel()
        for p in procs:  # only after a failure: a watchdog kill or an exception
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    cpu = children_cpu() - cpu0 + servers.cpu() - srv0
    if watchdog.fired:
        raise BenchError(
            f"{mode}: killed after {timeout:.0f} s\n{tail(send_err)}\n{tail(recv_err)}"
        )
    if rc_recv or rc_send:
        raise BenchError(
            f"{mode}: wormhole receive exit {rc_recv}, send exit {rc_send}"
            f"\n--- send:\n{tail(send_err)}\n--- receive:\n{tail(recv_err)}"
        )

    # The file must be identical.
    if subprocess.run(["cmp", "-s", str(src), str(dst)]).returncode != 0:
        raise BenchError(f"{mode}: {dst} differs from {src}")

    # The transport must be the one the mode claims.
    how = {"send": describe(send_err), "receive": describe(recv_err)}
    new_rows = servers.relayed()[rows_before:]
    if mode == "wormhole-relay":
        # The relay writes its row when the connection pair closes, which can
        # trail the clients' exit by a moment.
        deadline = time.monotonic() + 5
        while not any(b >= size and r == "happy" for b, r in new_rows):
            if time.monotonic() > deadline:
                raise BenchError(f"{mode}: the relay did not record {size} B: {new_rows} {how}")
            time.sleep(0.05)
            new_rows = servers.relayed()[rows_before:]
        if not all(h.startswith(f"->relay:{TRANSIT_HELPER}") for h in how.values()):
            raise BenchError(f"{mode}: a client did not connect through the relay: {how}")
    else:
        time.sleep(0.2)  # same grace for a (wrong) relay row to show up
        new_rows = servers.relayed()[rows_before:]
        if (
            any("relay" in h or "127.0.0.1" not in h for h in how.values())
            or sum(b for b, _ in new_rows) >= size // 100
        ):
            raise BenchError(f"{mode}: not a direct loopback connection: {how}, relay {new_rows}")
    relayed = sum(b for b, _ in new_rows)
    shutil.rmtree(recv_dir, ignore_errors=True)
    log(
        f"{mode}: {seconds:.2f} s, {size / seconds / 1e6:.1f} MB/s, CPU {cpu:.2f} s, "
        f"send {how['send']} / receive {how['receive']}, relay carried {relayed} B, "
        f"sender reaped {lag:.3f} s after the receiver"
    )
    return Result(seconds, cpu, relayed)


# ---------------------------------------------------------------------- reporting


def markdown_rows(results: dict[str, list[Result]], size: int) -> list[list[str]]:
    ver = version_of("magic-wormhole")
    notes = {
        "wormhole-relay": "both `--no-listen`; via transit relay (checked each round)",
        "wormhole-direct": "both listen; direct 127.0.0.1 (checked each round)",
    }
    rows = []
    for mode, rs in results.items():
        speeds = [size / r.seconds / 1e6 for r in rs]
        cpu = statistics.median(r.cpu for r in rs)
        rows.append(
            [
                f"{mode} (magic-wormhole {ver})",
                f"{statistics.median(speeds):.1f}",
                f"{min(speeds):.0f}-{max(speeds):.0f}",
                f"{statistics.median(r.seconds for r in rs):.2f}",
                f"{cpu:.2f}",
                f"{cpu / (size / 1e9):.2f}",
                f"n={len(rs)}, {size >> 20} MiB; {notes[mode]}",
            ]
        )
    return rows


def append_markdown(path: Path, rows: list[list[str]]) -> None:
    """Append rows to the table the file ends with, or start a table if it ends
    with anything else (the columns are bench.py's, so rows fit its tables)."""
    text = path.read_text() if path.exists() else ""
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    lines = [] if last.startswith("|") else ["", "| " + " | ".join(HEADERS) + " |"]
    if not last.startswith("|"):
        lines.append("|" + "|".join("---" for _ in HEADERS) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if text and not text.endswith("\n"):
            f.write("\n")
        f.write("\n".join(lines) + "\n")
    log(f"appended {len(rows)} row(s) to {path}")


def version_of(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/wormhole.sh", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--size", default="1G", help="test file size, e.g. 256M, 1G (default 1G)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (default 3)")
    p.add_argument("--markdown", type=Path, help="append one table row per mode to this file")
    p.add_argument(
        "--freight",
        metavar="CMD",
        help="shell snippet run in the same namespace after the wormhole rounds, with\n"
        "BENCH_FILE (the test file), BENCH_TMP (an empty scratch dir), BENCH_SIZE,\n"
        "BENCH_ROUNDS and BENCH_MARKDOWN (absolute, or empty) in its environment",
    )
    p.add_argument("--tmp", type=Path, default=DEFAULT_TMP, help=f"scratch dir ({DEFAULT_TMP})")
    args = p.parse_args(argv)
    try:
        args.size = parse_size(args.size)
    except ValueError:
        p.error(f"bad --size {args.size!r}")
    if args.size <= 0 or args.rounds < 1:
        p.error("--size and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so servers get stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.environ.get("FREIGHT_WORMHOLE_NETNS") != "1":
        log("warning: not started by bench/wormhole.sh: not in a private network namespace")
    tmp = args.tmp.resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    need = 2 * args.size + (256 << 20)  # the source file and one received copy
    if shutil.disk_usage(tmp).free < need:
        raise SystemExit(f"not enough free space in {tmp}: need {need >> 20} MiB")

    src = tmp / f"random-{args.size}.bin"
    try:
        return run(args, tmp, src)
    finally:
        src.unlink(missing_ok=True)  # 1 GiB is not worth keeping around


def run(args: argparse.Namespace, tmp: Path, src: Path) -> int:
    log(f"writing {args.size} random bytes to {src}")
    write_random(src, args.size)
    timeout = 120 + args.size / 2e6  # a hung round fails instead of hanging (2 MB/s floor)
    servers = Servers(tmp)
    results: dict[str, list[Result]] = {m: [] for m in MODES}
    try:
        servers.start()
        log(
            f"magic-wormhole {version_of('magic-wormhole')}, "
            f"mailbox {version_of('magic-wormhole-mailbox-server')}, "
            f"transit relay {version_of('magic-wormhole-transit-relay')}"
        )
        for rnd in range(args.rounds):
            order = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))
            for mode in order:
                log(f"round {rnd + 1}/{args.rounds}: {mode}")
                results[mode].append(run_round(mode, src, tmp, servers, timeout))
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        servers.stop()

    for mode, rs in results.items():
        secs = statistics.median(r.seconds for r in rs)
        speed = statistics.median(args.size / r.seconds / 1e6 for r in rs)
        print(f"{mode} {args.size} {secs:.2f} {speed:.1f}", flush=True)
    if args.markdown:
        append_markdown(args.markdown, markdown_rows(results, args.size))
    if not args.freight:
        return 0

    # Our own transfer: same namespace, same file. The wormhole servers are
    # stopped by now, so they cannot take CPU from it.
    scratch = tmp / "freight"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    env = dict(
        os.environ,
        BENCH_FILE=str(src),
        BENCH_TMP=str(scratch),
        BENCH_SIZE=str(args.size),
        BENCH_ROUNDS=str(args.rounds),
        BENCH_MARKDOWN=str(args.markdown.resolve()) if args.markdown else "",
    )
    log(f"running --freight snippet: {args.freight}")
    rc = subprocess.run(["bash", "-c", args.freight], env=env).returncode
    if rc:
        log(f"--freight snippet failed with exit status {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
