"""Loopback benchmark: `freight push` / `freight pull` against scp, rsync, tus, iperf3.

Run through bench/bench.sh (installs the peers first), e.g.

    bash bench/bench.sh                       # 1 GiB files, 3 rounds
    bash bench/bench.sh --size 256M --rounds 1 --only scp,tus,push
    bash bench/bench.sh --markdown docs/benchmarks.md

Each round runs every selected row once, freight rows interleaved with the peers,
and alternate rounds run in reverse order, so the machine's drift (shared, noisy
host) hits every row alike. Reported figures are medians over rounds. MB/s is
10^6 bytes per second of *logical* file size (for compressed rows too).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import peers
from peers import PeerError, Transfer

REPO_DIR = peers.REPO_DIR
DEFAULT_TMP = REPO_DIR / ".bench-tmp"  # gitignored at the repo root


# ------------------------------------------------------------------- test data


def parse_size(text: str) -> int:
    """'256M', '1G', '1GiB', '1048576' -> bytes (binary multiples)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    return int(float(t.rstrip("KMGT")) * mult)


def human(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def write_random(path: Path, size: int) -> None:
    chunk = 16 << 20
    with open(path, "wb") as f:
        for off in range(0, size, chunk):
            f.write(os.urandom(min(chunk, size - off)))


_VOCAB = (
    "alpha beta gamma delta request response user session cache miss hit upload download "
    "worker queue retry timeout connect accept close open read write flush sync commit "
    "rollback error warning info debug trace payload chunk manifest artifact hub agent relay "
    "token"
)
_WORDS = _VOCAB.split()
_LEVELS = ["INFO"] * 8 + ["DEBUG"] * 4 + ["WARN", "ERROR"]


def _log_line(rng: random.Random) -> str:
    words = " ".join(rng.choices(_WORDS, k=rng.randint(3, 9)))
    return (
        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z "
        f"{rng.choice(_LEVELS)} worker-{rng.randint(1, 64)} req={rng.getrandbits(32):08x} "
        f"user=u{rng.randint(1, 5000)} bytes={rng.randint(0, 10**6)} "
        f'dur_ms={rng.random() * 500:.1f} msg="{words}"\n'
    )


def write_text(path: Path, size: int) -> None:
    """Log-like text that zstd -1 compresses ~3x (measured 3.3x).

    Generating every line in Python would take minutes per GiB, so build a pool
    of 200k distinct lines (~25 MB, larger than any fast-compressor window, so
    repeats do not make it unrealistically compressible) and sample from it.
    """
    rng = random.Random(20240501)
    pool = [_log_line(rng) for _ in range(200_000)]
    written = 0
    with open(path, "wb") as f:
        while written < size:
            block = "".join(rng.choices(pool, k=100_000)).encode()[: size - written]
            f.write(block)
            written += len(block)


def file_digest(path: Path) -> str:
    """blake3 of the whole file (fast, multithreaded); sha256 if blake3 is missing."""
    try:
        import blake3

        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(path)
        return "blake3:" + h.hexdigest()
    except ImportError:
        s = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                s.update(chunk)
        return "sha256:" + s.hexdigest()


@dataclass
class Dataset:
    path: Path
    size: int
    digest: str = ""


def make_data(data_dir: Path, size: int, need_text: bool) -> dict[str, Dataset]:
    """Create (or reuse, if already the right size) the random and text files."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sets = {"random": Dataset(data_dir / f"random-{size}.bin", size)}
    if need_text:
        sets["text"] = Dataset(data_dir / f"text-{size}.log", size)
    writers = {"random": write_random, "text": write_text}
    for kind, ds in sets.items():
        if not (ds.path.exists() and ds.path.stat().st_size == size):
            print(f"generating {human(size)} of {kind} data -> {ds.path}", flush=True)
            writers[kind](ds.path, size)
        ds.digest = file_digest(ds.path)
    return sets


def verify(received: Path, ds: Dataset) -> None:
    if received.is_dir():  # a pull may create DEST/<name>
        files = [p for p in received.rglob("*") if p.is_file()]
        if len(files) != 1:
            raise PeerError(f"expected one file under {received}, found {len(files)}")
        received = files[0]
    size = received.stat().st_size
    if size != ds.size:
        raise PeerError(f"received {size} bytes, expected {ds.size}")
    if file_digest(received) != ds.digest:
        raise PeerError("received file differs from the source (hash mismatch)")


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------ rows


@dataclass
class Row:
    key: str
    label: str
    data: str | None  # "random" / "text" / None (iperf3)
    group: str  # which long-running peer it needs: iperf3, ssh, tus, freight
    requires: str | None = None  # row that must run earlier in the same round


# Canonical order: freight rows interleaved with the peers they are compared to.
ROWS = [
    Row("iperf3", "iperf3 TCP limit (1 stream)", None, "iperf3"),
    Row("push", "freight push random", "random", "freight"),
    Row("scp", "scp upload random", "random", "ssh"),
    Row("pull", "freight pull random", "random", "freight", requires="push"),
    Row("rsync", "rsync -a random", "random", "ssh"),
    Row("push-text", "freight push text --compress fast", "text", "freight"),
    Row("rsync-z", "rsync -az text (zstd)", "text", "ssh"),
    Row("tus", "tus upload random (64 MiB chunks)", "random", "tus"),
]
ROW_BY_KEY = {r.key: r for r in ROWS}
RATIOS = [
    ("freight push / scp", "push", "scp"),
    ("freight push / tus", "push", "tus"),
    ("freight pull / freight push", "pull", "push"),
    ("freight push text fast / rsync -az text", "push-text", "rsync-z"),
]


class Round:
    """Peers and scratch space for one round; runs rows and verifies what arrived."""

    def __init__(self, bench: Bench, index: int):
        self.b = bench
        self.dir = Path(tempfile.mkdtemp(prefix=f"round{index}-", dir=bench.run_dir))
        self.hub: peers.FreightHub | None = None
        self.done: set[str] = set()
        self.stack = contextlib.ExitStack()

    def close(self) -> None:
        self.stack.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def freight(self) -> peers.FreightHub:
        # A fresh hub per round keeps its store (2 files) from piling up on disk.
        if self.hub is None:
            self.hub = self.stack.enter_context(peers.running(peers.FreightHub(self.dir)))
        return self.hub

    def run(self, row: Row) -> Transfer:
        ds = self.b.data.get(row.data) if row.data else None
        out = self.dir / f"{row.key}.out"
        try:
            t = self._transfer(row, ds, out)
        finally:
            remove(out)
            os.sync()  # flush writeback now, not during the next timed row
        self.done.add(row.key)
        return t

    def _transfer(self, row: Row, ds: Dataset | None, out: Path) -> Transfer:
        b = self.b
        if row.key == "iperf3":
            return b.iperf().run("1G")
        assert ds is not None
        if row.key == "scp":
            return self._checked(b.ssh().scp_upload(ds.path, out), out, ds)
        if row.key in ("rsync", "rsync-z"):
            t = b.ssh().rsync_upload(ds.path, out, compress=row.key == "rsync-z")
            return self._checked(t, out, ds)
        if row.key == "tus":
            tus = b.tus()
            t, stored = tus.upload(ds.path)
            try:
                return self._checked(t, stored, ds)
            finally:
                tus.forget(stored)
        if row.key == "push":
            t = self.freight().push(ds.path, "bench-random", b.freight_args)
            if "pull" not in b.args.only:  # otherwise the timed pull row verifies it
                self._pull_back("bench-random", ds)
            return t
        if row.key == "pull":
            return self._checked(self.freight().pull("bench-random", out), out, ds)
        if row.key == "push-text":
            t = self.freight().push(ds.path, "bench-text", ["--compress", "fast"])
            self._pull_back("bench-text", ds)  # push-only row: check it round-trips
            return t
        raise AssertionError(row.key)

    def _checked(self, t: Transfer, received: Path, ds: Dataset) -> Transfer:
        verify(received, ds)
        return t

    def _pull_back(self, name: str, ds: Dataset) -> None:
        """Untimed pull to verify a push whose timed pull row does not exist."""
        dest = self.dir / f"{name}.verify"
        try:
            self.freight().pull(name, dest)
            verify(dest, ds)
        finally:
            remove(dest)


@dataclass
class Bench:
    args: argparse.Namespace
    run_dir: Path
    data: dict[str, Dataset] = field(default_factory=dict)
    results: dict[str, list[Transfer]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _peers: dict[str, object] = field(default_factory=dict)

    @property
    def freight_args(self) -> list[str]:
        return shlex.split(self.args.freight_args)

    # Long-running peers are started once, on first use, and stopped at the end.
    def _peer(self, name: str, factory: Callable[[], object]) -> object:
        if name not in self._peers:
            self._peers[name] = self.stack.enter_context(peers.running(factory()))
        return self._peers[name]

    def ssh(self) -> peers.SshPeer:
        cipher = self.args.ssh_cipher
        return self._peer("ssh", lambda: peers.SshPeer(self.run_dir, cipher))  # type: ignore[return-value]

    def tus(self) -> peers.TusPeer:
        return self._peer("tus", lambda: peers.TusPeer(self.run_dir))  # type: ignore[return-value]

    def iperf(self) -> peers.IperfPeer:
        return self._peer("iperf", lambda: peers.IperfPeer(self.run_dir))  # type: ignore[return-value]

    def run_round(self, rows: list[Row], index: int) -> None:
        """Every other round runs in reverse so slow drift averages out across rows;
        a row's prerequisite (pull needs push) is run first when not yet done."""
        rnd = Round(self, index)
        try:
            for row in rows if index % 2 == 0 else rows[::-1]:
                self.run_row(rnd, row, record=True)
        finally:
            rnd.close()

    def run_row(self, rnd: Round, row: Row, record: bool) -> None:
        if row.key in rnd.done or row.key in self.failures:
            return
        if row.requires and row.requires not in rnd.done:
            dep = ROW_BY_KEY[row.requires]
            self.run_row(rnd, dep, record=dep.key in self.args.only)
            if dep.key not in rnd.done:
                self.fail(row, f"needs '{dep.key}', which failed")
                return
        try:
            t = rnd.run(row)
        except (PeerError, OSError, subprocess.SubprocessError) as e:
            self.fail(row, str(e))
            return
        if record:
            self.results.setdefault(row.key, []).append(t)
            print(f"  {row.label:<44} {mbps(t):9.1f} MB/s  {t.seconds:7.2f} s", flush=True)

    def fail(self, row: Row, msg: str) -> None:
        # Skip the row for the remaining rounds: its command is broken, not slow.
        first = msg.strip().splitlines()[-1] if msg.strip() else "failed"
        self.failures[row.key] = first[:300]
        print(f"  {row.label:<44} SKIPPED: {first[:300]}", flush=True)


# --------------------------------------------------------------------- reporting


def mbps(t: Transfer) -> float:
    return t.nbytes / t.seconds / 1e6


def median_mbps(ts: list[Transfer]) -> float:
    return statistics.median(mbps(t) for t in ts)


def table_rows(b: Bench, rows: list[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        ts = b.results.get(row.key)
        if not ts:
            why = b.failures.get(row.key, "not run")
            out.append([row.label, "-", "-", "-", "-", "-", f"skipped: {why[:70]}"])
            continue
        speeds = [mbps(t) for t in ts]
        cpus = [t.cpu_seconds for t in ts if t.cpu_seconds is not None]
        cpu = statistics.median(cpus) if cpus else None
        gb = ts[0].nbytes / 1e9
        out.append(
            [
                row.label,
                f"{statistics.median(speeds):.1f}",
                f"{min(speeds):.0f}-{max(speeds):.0f}",
                f"{statistics.median(t.seconds for t in ts):.2f}",
                f"{cpu:.2f}" if cpu is not None else "-",
                f"{cpu / gb:.2f}" if cpu is not None else "-",
                f"n={len(ts)}",
            ]
        )
    return out


HEADERS = ["test", "MB/s", "MB/s range", "seconds", "CPU s (client+server)", "CPU s/GB", "note"]


def ratio_rows(b: Bench) -> list[list[str]]:
    out = []
    for label, num, den in RATIOS:
        if b.results.get(num) and b.results.get(den):
            value = median_mbps(b.results[num]) / median_mbps(b.results[den])
            out.append([label, f"{value:.2f}x"])
        elif num in b.args.only and den in b.args.only:
            out.append([label, "- (a row was skipped)"])
    return out


def print_tables(title: str, table: list[list[str]], ratios: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}\n" + markdown_table(HEADERS, table) + "\n")
        if ratios:
            print(markdown_table(["ratio of median MB/s", "value"], ratios))
        return
    t = Table(title=title)
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i in (0, 6) else "right")
    for r in table:
        t.add_row(*r)
    console = Console(width=max(140, shutil.get_terminal_size().columns))
    console.print(t)
    if ratios:
        rt = Table(title="ratios (median MB/s)")
        rt.add_column("ratio")
        rt.add_column("value", justify="right")
        for r in ratios:
            rt.add_row(*r)
        console.print(rt)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cmd_version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (res.stdout or res.stderr).strip()
    if res.returncode != 0:  # e.g. freight not installed yet: no traceback in the report
        return f"? (exit {res.returncode})"
    return text.splitlines()[0] if text else "?"


def environment() -> dict[str, str]:
    tus_pkg = peers.BENCH_DIR / ".node" / "node_modules" / "@tus" / "server" / "package.json"
    tus_ver = "?"
    with contextlib.suppress(OSError, ValueError):
        import json

        tus_ver = json.loads(tus_pkg.read_text())["version"]
    try:
        from importlib.metadata import version

        tuspy = version("tuspy")
    except Exception:
        tuspy = "?"
    return {
        "uname -a": _cmd_version(["uname", "-a"]),
        "nproc": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "freight": _cmd_version([str(peers.FREIGHT), "--version"]),
        "openssh": _cmd_version(["ssh", "-V"]),
        "rsync": _cmd_version(["rsync", "--version"]),
        "iperf3": _cmd_version(["iperf3", "--version"]),
        "node": _cmd_version(["node", "--version"]),
        "@tus/server / tuspy": f"{tus_ver} / {tuspy}",
    }


def write_markdown(path: Path, b: Bench, title: str, table: list[list[str]], ratios) -> None:
    env = environment()
    cmd = " ".join(shlex.quote(a) for a in ["bench/bench.py", *sys.argv[1:]])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        f"\n## {title} ({now})\n",
        f"Command: `{cmd}`\n",
        "\n".join(f"- {k}: `{v}`" for k, v in env.items()) + "\n",
        markdown_table(HEADERS, table) + "\n",
    ]
    if ratios:
        parts.append(markdown_table(["ratio of median MB/s", "value"], ratios) + "\n")
    parts.append(
        "MB/s = 10^6 bytes/s of logical file size, median over rounds; loopback "
        "(127.0.0.1) only. CPU = client process tree + server process tree (/proc).\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(parts))
    print(f"appended results to {path}")


# -------------------------------------------------------------------------- main


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding path (from /proc/mounts)."""
    best, kind = "", "?"
    real = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            _, mnt, fstype, *_ = line.split()
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, fstype
    return kind


def check_scratch(tmp: Path, size: int, rows: list[Row]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    if fs_type(tmp) in ("tmpfs", "ramfs"):
        sys.exit(f"{tmp} is on {fs_type(tmp)}: use --tmp on a real disk (RAM would skew it)")
    # sources (1-2 files) + the hub's copy of both + one received copy at a time.
    files = 2 if any(r.data == "text" for r in rows) else 1
    need = size * (2 * files + 1) + (256 << 20)
    free = shutil.disk_usage(tmp).free
    if free < need:
        sys.exit(f"not enough space in {tmp}: need ~{human(need)}, have {free >> 20} MiB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="1G", help="file size, e.g. 256M, 1G (default 1G)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (default 3)")
    p.add_argument(
        "--only",
        default=",".join(r.key for r in ROWS),
        help="comma-separated rows: " + ",".join(r.key for r in ROWS),
    )
    p.add_argument("--markdown", type=Path, help="append results to this markdown file")
    p.add_argument("--tmp", type=Path, default=DEFAULT_TMP, help=f"scratch dir ({DEFAULT_TMP})")
    p.add_argument("--keep-data", action="store_true", help="keep generated files for reuse")
    p.add_argument("--freight-args", default="", help="extra args for `freight push` (random)")
    p.add_argument("--ssh-cipher", help="force an ssh cipher (default: OpenSSH's choice)")
    args = p.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in ROW_BY_KEY]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROW_BY_KEY)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = parse_size(args.size)
    rows = [r for r in ROWS if r.key in args.only]
    check_scratch(args.tmp, size, rows)
    data_dir = args.tmp / "data"
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.tmp))
    bench = Bench(args, run_dir)
    try:
        needed = {r.data for r in rows} | {ROW_BY_KEY[r.requires].data for r in rows if r.requires}
        bench.data = make_data(data_dir, size, need_text="text" in needed)
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            bench.run_round(rows, i)
    finally:
        bench.stack.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            args.tmp.rmdir()  # only if empty
    title = f"Freight loopback benchmark, {human(size)} files, {args.rounds} round(s)"
    table = table_rows(bench, rows)
    ratios = ratio_rows(bench)
    print_tables(title, table, ratios)
    if args.markdown:
        write_markdown(args.markdown, bench, title, table, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
