"""Check Freight against its stated targets on loopback: rate limits, hub
memory under parallel pushes, and how much a hub crash costs.

    .venv/bin/python bench/targets.py limits   [--limits 1M,10M,100M] [--seconds 25]
    .venv/bin/python bench/targets.py memory   [--size 1G] [--streams 4]
    .venv/bin/python bench/targets.py crash    [--size 1G] [--limit 200M]
    bash bench/targets.sh limits --markdown docs/targets.md   # same, via the wrapper

Every subcommand prints a short table and, with ``--markdown FILE``, appends it
with the exact command line, the date and ``nproc``. Scratch files live under
``--tmp`` (default: .bench-tmp/ at the repo root, gitignored) and are removed
at the end, as are every hub and client process started here.

What is measured (all timestamps from time.monotonic):

limits  One push per rate with ``--limit RATE`` of a file sized to last
        ``--seconds`` at that rate; the hub's partial file is stat'ed every
        0.25 s. Over every 10 s sliding window that starts at least 2 s after
        the first byte arrived and ends before the file is complete, the rate
        is (size delta / time delta); reported as deviation from the limit in
        percent (min / median / max). Target: every window within +-5 %.
        Then the same with the limit on the hub (``freight hub --bandwidth``),
        and a push during which an admin runs ``freight admin bandwidth`` to
        raise the hub budget (rate before / after the change).
memory  ``--streams`` concurrent ``freight push`` processes of ``--size``
        random files each; the hub's VmRSS (its process tree) sampled every
        0.1 s, plus VmHWM at the end. Target: peak < 200 MiB.
crash   A ``--limit``-ed push, the hub SIGKILLed once its partial file passes
        ``--kill-at`` of the size, restarted on the same port and data folder
        while the client (FREIGHT_RETRY_INTERVAL=0.5) retries. "Bytes sent
        again" = partial size at the kill - checkpoint the hub resumed from
        (its stream_resume log event). Target: at most one checkpoint interval
        (8 MiB). The result is pulled back and compared.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peers
from peers import FREIGHT, PeerError

from bench import file_digest, fs_type, human, markdown_table, parse_size, write_random

REPO_DIR = peers.REPO_DIR
DEFAULT_TMP = REPO_DIR / ".bench-tmp"  # gitignored
MiB = 1 << 20
CHECKPOINT_INTERVAL = 8 * MiB  # the hub's default (--checkpoint-interval 8M)


# --------------------------------------------------------------------- processes


class Terminated(Exception):
    """SIGTERM/SIGHUP received: unwind so every finally block cleans up."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def stop_group(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session (and its group), then reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Hub(peers.FreightHub):
    """peers.FreightHub plus extra hub options, SIGKILL and restart in place.

    Each start logs to its own file (hub-1.log, hub-2.log, ...); the JSON lines
    among them are the hub's structured log.
    """

    def __init__(self, workdir: Path, hub_args: Sequence[str] = ()):
        super().__init__(workdir)
        self.hub_args = list(hub_args)
        self.starts = 0

    def start(self) -> Hub:
        if not FREIGHT.exists():
            raise PeerError(f"{FREIGHT} not found (is the freight package installed?)")
        self.cfg.mkdir(exist_ok=True)
        self.starts += 1
        cmd = [
            str(FREIGHT), "hub", "--data", str(self.data),
            "--listen", f"127.0.0.1:{self.port}", *self.hub_args,
        ]  # fmt: skip
        env = peers._freight_env(FREIGHT_ADMIN_PASSWORD=self.password)
        self.proc = peers.start_server(cmd, self.dir / f"hub-{self.starts}.log", env=env)
        peers._wait_health(self.url, self.proc)
        if self.starts == 1:
            self._login()
        return self

    keep = False  # --keep: leave the data and logs behind for a look

    def stop(self) -> None:
        if self.keep:
            peers.stop_server(self.proc)
        else:
            super().stop()

    def kill(self) -> None:
        """SIGKILL, no chance to flush or checkpoint anything."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log_events(self, start: int | None = None) -> list[dict[str, Any]]:
        """JSON log lines of one start (1-based) or of all of them."""
        out: list[dict[str, Any]] = []
        for n in [start] if start else range(1, self.starts + 1):
            path = self.dir / f"hub-{n}.log"
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def partial(self) -> Path | None:
        """The (single) partial upload in progress, if any."""
        found = sorted(self.data.glob("partial/*/*.part"))
        return found[0] if found else None

    def stored(self, name: str) -> Path:
        found = sorted(self.data.glob(f"files/*/{name}"))
        if not found:
            raise PeerError(f"{name} not published on the hub")
        return found[0]

    def db_checkpoint(self, sid: str) -> int | None:
        """The durable checkpoint of a stream, read-only from the SQLite db."""
        uri = f"file:{self.data / 'freight.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            row = db.execute("SELECT checkpoint FROM streams WHERE sid = ?", (sid,)).fetchone()
        return int(row[0]) if row else None

    def cli(self, *args: str, timeout: float = 60) -> str:
        """Run a short freight command as the logged-in admin; stdout."""
        res = subprocess.run(
            [str(FREIGHT), *args],
            env=peers._freight_env(self.cfg),
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            err = (res.stderr or res.stdout).decode(errors="replace").strip()[-800:]
            raise PeerError(f"freight {args[0]} exited {res.returncode}: {err}")
        return res.stdout.decode(errors="replace")

    def rm(self, name: str) -> None:
        with contextlib.suppress(PeerError, subprocess.SubprocessError):
            self.cli("rm", name)


class Push:
    """A `freight push` running in the background (own session, output to files)."""

    def __init__(
        self, hub: Hub, src: Path, name: str, args: Sequence[str] = (), **env: str
    ) -> None:
        self.cmd = [
            str(FREIGHT), "push", str(src), "--as", name, "--json", "--quiet", *args,
        ]  # fmt: skip
        self.out = hub.dir / f"push-{name}.out"
        self.err = hub.dir / f"push-{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=peers._freight_env(hub.cfg, **env),
                start_new_session=True,
            )
        self.t1: float | None = None

    def poll(self) -> bool:
        """True once finished (records the end time)."""
        if self.proc.poll() is None:
            return False
        if self.t1 is None:
            self.t1 = time.monotonic()
        return True

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for success; the parsed --json output."""
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                self.stop()
                raise PeerError(f"freight push did not finish within {timeout:.0f} s")
            time.sleep(0.05)
        if self.proc.returncode != 0:
            err = self.err.read_text(errors="replace").strip()[-800:]
            raise PeerError(f"freight push exited {self.proc.returncode}: {err}")
        try:
            return dict(json.loads(self.out.read_text()))
        except ValueError:
            return {}

    @property
    def seconds(self) -> float:
        assert self.t1 is not None
        return self.t1 - self.t0

    def stop(self) -> None:
        stop_group(self.proc)


class Sampler:
    """Call ``probe()`` every ``interval`` seconds in a thread: [(monotonic, value)]."""

    def __init__(self, probe: Callable[[], Any], interval: float):
        self.probe = probe
        self.interval = interval
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                value = self.probe()
            except Exception:  # a probe must never kill the sampler
                value = None
            self.samples.append((t, value))
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def file_size(path_fn: Callable[[], Path | None]) -> Callable[[], int | None]:
    """A probe for the size of a file that appears, grows and then is renamed away."""
    cached: list[Path] = []

    def probe() -> int | None:
        if not cached:
            p = path_fn()
            if p is None:
                return None
            cached.append(p)
        try:
            return cached[0].stat().st_size
        except FileNotFoundError:
            return None

    return probe


# ---------------------------------------------------------------------- analysis


def to_mib(n: float) -> str:
    return f"{n / MiB:.2f}"


def pct(x: float) -> str:
    return f"{x:+.2f}%"


def series(samples: list[tuple[float, Any]], total: int) -> tuple[list[tuple[float, int]], float]:
    """Growth samples of a partial file and the time it was complete.

    Samples before the first byte are dropped. The end is the first sample at
    which the file reached its full size or had already been published (gone).
    """
    out: list[tuple[float, int]] = []
    end: float | None = None
    for t, size in samples:
        if size is None:
            if out:  # renamed away after the end
                end = t
                break
            continue
        if size == 0 and not out:
            continue
        out.append((t, size))
        if size >= total:
            end = t
            break
    if not out:
        raise PeerError("the hub's partial file never grew (sampling missed the transfer?)")
    return out, end if end is not None else out[-1][0]


def rate_between(pts: list[tuple[float, int]], ta: float, tb: float) -> float:
    """Bytes/s between the first sample at/after ta and the last at/before tb."""
    inside = [p for p in pts if ta <= p[0] <= tb]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
        return float("nan")
    (t0, s0), (t1, s1) = inside[0], inside[-1]
    return (s1 - s0) / (t1 - t0)


def sliding_windows(
    pts: list[tuple[float, int]], t_from: float, t_to: float, width: float = 10.0
) -> list[float]:
    """Rates over every window [t_i, t_j] with t_j the first sample >= t_i + width,
    t_i >= t_from and t_j < t_to (windows containing the end are left out)."""
    rates = []
    j = 0
    for i, (ti, si) in enumerate(pts):
        if ti < t_from:
            continue
        j = max(j, i + 1)
        while j < len(pts) and pts[j][0] < ti + width:
            j += 1
        if j >= len(pts) or pts[j][0] >= t_to:
            break
        tj, sj = pts[j]
        rates.append((sj - si) / (tj - ti))
    return rates


@dataclass
class Deviation:
    windows: int
    lo: float
    median: float
    hi: float
    mean_rate: float

    def ok(self, tol: float) -> bool:
        return self.windows > 0 and max(abs(self.lo), abs(self.hi)) <= tol


def deviation(rates: list[float], target: int, mean_rate: float) -> Deviation:
    devs = [(r / target - 1) * 100 for r in rates]
    if not devs:
        return Deviation(0, float("nan"), float("nan"), float("nan"), mean_rate)
    return Deviation(len(devs), min(devs), statistics.median(devs), max(devs), mean_rate)


# ---------------------------------------------------------------------- reporting


@dataclass
class Report:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    def print(self) -> None:
        print(f"\n{self.title}\n" + markdown_table(self.headers, self.rows))
        for n in self.notes:
            print(f"- {n}")
        print(flush=True)


def _version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (res.stdout or res.stderr).strip().splitlines()[0] if res.returncode == 0 else "?"


def write_markdown(path: Path, report: Report, tmp: Path) -> None:
    argv0 = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        argv0 = argv0.relative_to(REPO_DIR)
    cmd = shlex.join([str(argv0), *sys.argv[1:]])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    env = {
        "nproc": str(os.cpu_count()),
        "uname -a": " ".join(platform.uname()),
        "python": sys.version.split()[0],
        "freight": _version([str(FREIGHT), "version"]),
        "scratch filesystem": f"{tmp} ({fs_type(tmp)})",
    }
    parts = [
        f"\n## {report.title} ({now})\n",
        f"Command: `{cmd}`\n",
        "\n".join(f"- {k}: `{v}`" for k, v in env.items()) + "\n",
        markdown_table(report.headers, report.rows) + "\n",
    ]
    if report.notes:
        parts.append("\n".join(f"- {n}" for n in report.notes) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(parts))
    print(f"appended results to {path}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ------------------------------------------------------------------------ limits


@dataclass
class LimitRun:
    label: str
    limit: int
    dev: Deviation
    seconds: float
    note: str = ""


def push_and_sample(
    hub: Hub,
    src: Path,
    name: str,
    args: Sequence[str],
    interval: float,
    timeout: float,
    during: Callable[[float], None] | None = None,
) -> tuple[list[tuple[float, int]], float, Push]:
    """Push src while sampling the partial file; ``during(t_first_byte)`` is called
    from the main thread every 50 ms while the push runs (for mid-push actions)."""
    size = src.stat().st_size
    probe = file_size(hub.partial)
    with Sampler(probe, interval) as sampler:
        push = Push(hub, src, name, args)
        deadline = time.monotonic() + timeout
        while not push.poll():
            if time.monotonic() > deadline:
                push.stop()
                err = push.err.read_text(errors="replace").strip()[-400:]
                log = [json.dumps(e) for e in hub.log_events()[-4:]]
                raise PeerError(
                    f"push {name} did not finish within {timeout:.0f} s; client stderr: "
                    f"{err or '-'}; last hub events: {' '.join(log)}"
                )
            if during is not None:
                first = next((t for t, s in sampler.samples if s), None)
                if first is not None:
                    during(first)
            time.sleep(0.05)
        time.sleep(interval)  # one more sample after the end
    push.wait(1)
    pts, end = series(sampler.samples, size)
    return pts, end, push


def limits_cmd(args: argparse.Namespace, work: Path) -> Report:
    limits = [parse_size(x) for x in args.limits.split(",") if x.strip()]
    secs = args.seconds
    tol = args.tolerance
    rep = Report(
        f"Rate limits: 10 s sliding windows vs the limit, {secs:g} s pushes",
        ["case", "limit", "windows", "min dev", "median dev", "max dev", "mean rate", "target"],
    )
    runs: list[LimitRun] = []

    def add(run: LimitRun) -> None:
        d = run.dev
        ok = d.ok(tol)
        rep.failed |= not ok
        rep.rows.append(
            [
                run.label,
                f"{human_rate(run.limit)}",
                str(d.windows),
                pct(d.lo),
                pct(d.median),
                pct(d.hi),
                f"{to_mib(d.mean_rate)} MiB/s",
                f"{verdict(ok)} (+-{tol:g}%)",
            ]
        )
        print(
            f"  {run.label}: {d.windows} windows, dev {pct(d.lo)} .. {pct(d.hi)} "
            f"(median {pct(d.median)}), push took {run.seconds:.1f} s",
            flush=True,
        )
        runs.append(run)

    def one(hub: Hub, label: str, slug: str, limit: int, push_args: Sequence[str]) -> LimitRun:
        src = work / f"limit-{slug}.bin"
        write_random(src, int(limit * secs))
        try:
            pts, end, push = push_and_sample(
                hub, src, src.stem, push_args, args.interval, timeout=secs * 4 + 120
            )
        finally:
            src.unlink(missing_ok=True)
        hub.rm(src.stem)
        t0 = pts[0][0]
        rates = sliding_windows(pts, t0 + args.ramp, end, args.window)
        mean = rate_between(pts, t0 + args.ramp, end)
        return LimitRun(label, limit, deviation(rates, limit, mean), push.seconds)

    # 1. client-side --limit, hub unlimited
    with peers.running(Hub(work)) as hub:
        for limit in limits:
            label = f"push --limit {human_rate(limit)}"
            add(one(hub, label, f"client-{limit}", limit, ["--limit", str(limit)]))

    # 2. hub-side budget, and 3. an admin raising it mid-push
    hub_rate, new_rate = parse_size(args.hub_limit), parse_size(args.admin_limit)
    with peers.running(Hub(work, ["--bandwidth", str(hub_rate)])) as hub:
        add(one(hub, f"hub --bandwidth {human_rate(hub_rate)}", "hub", hub_rate, []))
        admin_run(hub, args, work, hub_rate, new_rate, rep)

    rep.notes.append(
        f"Deviation = rate over a {args.window:g} s window / limit - 1. Windows start every "
        f"{args.interval:g} s sample from {args.ramp:g} s after the first byte reached the hub "
        "and end before the file was complete. Rate = growth of the hub's partial file "
        f"(DATA/partial/<uid>/<sid>.part) sampled every {args.interval:g} s. "
        "Limits are 1024-based (1M = 1 MiB/s)."
    )
    return rep


def human_rate(rate: int) -> str:
    for unit, div in (("G", 1 << 30), ("M", MiB), ("K", 1 << 10)):
        if rate >= div and rate % div == 0:
            return f"{rate // div}{unit}"
    return str(rate)


def admin_run(
    hub: Hub, args: argparse.Namespace, work: Path, old: int, new: int, rep: Report
) -> None:
    """Push under the hub's budget `old`; halfway, `freight admin bandwidth new`."""
    half = args.seconds / 2
    src = work / "limit-admin.bin"
    write_random(src, int(old * half + new * half))
    changed: dict[str, float] = {}

    def during(t_first: float) -> None:
        if "done" in changed or time.monotonic() < t_first + half:
            return
        changed["issued"] = time.monotonic()
        hub.cli("admin", "bandwidth", human_rate(new))
        changed["done"] = time.monotonic()

    try:
        pts, end, push = push_and_sample(
            hub, src, "limit-admin", [], args.interval, args.seconds * 4 + 120, during
        )
    finally:
        src.unlink(missing_ok=True)
    hub.rm("limit-admin")
    if "done" not in changed:
        rep.failed = True
        rep.notes.append("admin change: the push ended before the change was made")
        return
    t0 = pts[0][0]
    t_issued, t_done = changed["issued"], changed["done"]
    before = rate_between(pts, t0 + args.ramp, t_issued)
    before_dev = deviation(sliding_windows(pts, t0 + args.ramp, t_issued, 5.0), old, before)
    # When did the new rate take hold? First sample after the command whose rate
    # over the previous second is past the midpoint between old and new.
    mid = (old + new) / 2
    t_retuned = next(
        (t for t, _ in pts if t > t_done + 1 and rate_between(pts, t - 1, t) > mid), None
    )
    if t_retuned is None:
        rep.failed = True
        rep.rows.append(
            ["admin bandwidth (after)", human_rate(new), "0", "-", "-", "-", "-", "FAIL"]
        )
        rep.notes.append("admin change: the rate never rose past the midpoint after the change")
        return
    settle = t_retuned + 1.0  # one more second for the token bucket to settle
    after = rate_between(pts, settle, end)
    after_dev = deviation(sliding_windows(pts, settle, end, 5.0), new, after)
    for label, limit, d in (
        (f"admin: before (hub {human_rate(old)})", old, before_dev),
        (f"admin: after `admin bandwidth {human_rate(new)}`", new, after_dev),
    ):
        ok = d.ok(args.tolerance)
        if d.windows:
            rep.failed |= not ok
            devs = [pct(d.lo), pct(d.median), pct(d.hi)]
            mark = f"{verdict(ok)} (+-{args.tolerance:g}%)"
        else:
            devs, mark = ["-", "-", "-"], "n/a (phase < 5 s; raise --seconds)"
        rate = f"{to_mib(d.mean_rate)} MiB/s"
        rep.rows.append([label, human_rate(limit), f"{d.windows} (5 s)", *devs, rate, mark])
    rep.notes.append(
        f"Admin change: `freight admin bandwidth {human_rate(new)}` issued "
        f"{t_issued - t0:.1f} s after the first byte (command took {t_done - t_issued:.2f} s); "
        f"the 1 s rate passed {to_mib(mid)} MiB/s {t_retuned - t_done:.2f} s after it returned "
        f"(the hub retunes at the next checkpoint, every {human(CHECKPOINT_INTERVAL)}). "
        f"Mean rate before: {to_mib(before)} MiB/s; after (from {settle - t0:.1f} s to the end "
        f"at {end - t0:.1f} s): {to_mib(after)} MiB/s. The admin rows use 5 s windows "
        f"(each phase lasts only ~{half:g} s). Push took {push.seconds:.1f} s."
    )
    print(
        f"  admin change: before {to_mib(before)} MiB/s, after {to_mib(after)} MiB/s, "
        f"retuned {t_retuned - t_done:.2f} s after the command",
        flush=True,
    )


# ------------------------------------------------------------------------ memory


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (bytes) of one process, {} if gone."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def tree_pids(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := peers._proc_stat(int(entry))) is not None:
            kids.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def memory_cmd(args: argparse.Namespace, work: Path) -> Report:
    size, n = parse_size(args.size), args.streams
    target = parse_size(args.target)
    srcs = []
    print(f"generating {n} x {human(size)} of random data", flush=True)
    for i in range(n):
        src = work / f"mem-{i}.bin"
        write_random(src, size)
        srcs.append(src)
    digests = [file_digest(s) for s in srcs]
    with peers.running(Hub(work)) as hub:
        assert hub.proc is not None
        pid = hub.proc.pid
        st0 = proc_status(pid)
        idle, hwm0 = st0.get("VmRSS", 0), st0.get("VmHWM", 0)
        tree_seen: set[int] = set()

        def probe() -> tuple[int, int]:
            pids = tree_pids(pid)
            tree_seen.update(pids)
            return proc_status(pid).get("VmRSS", 0), sum(
                proc_status(p).get("VmRSS", 0) for p in pids
            )

        with Sampler(probe, args.interval) as sampler:
            t0 = time.monotonic()
            pushes = [Push(hub, s, s.name) for s in srcs]
            try:
                for p in pushes:
                    p.wait(timeout=max(600.0, size / MiB * 2))
            finally:
                for p in pushes:
                    p.stop()
            wall = time.monotonic() - t0
        hwm = proc_status(pid).get("VmHWM", 0)
        for s, d in zip(srcs, digests, strict=True):
            if file_digest(hub.stored(s.name)) != d:
                raise PeerError(f"{s.name}: the hub's copy differs from the source")
    for s in srcs:
        s.unlink(missing_ok=True)
    vals = [v for _, v in sampler.samples if v]
    peak_main = max((v[0] for v in vals), default=0)
    peak_tree = max((v[1] for v in vals), default=0)
    total = size * n
    ok = max(peak_tree, hwm) < target
    rep = Report(
        f"Hub memory: {n} parallel `freight push` of {human(size)} random files",
        ["measure", "value", "target"],
        failed=not ok,
    )
    rep.rows = [
        [
            "hub VmRSS / VmHWM idle (after start-up and login)",
            f"{to_mib(idle)} / {to_mib(hwm0)} MiB",
            "",
        ],
        [f"hub peak VmRSS (sampled every {args.interval:g} s)", f"{to_mib(peak_main)} MiB", ""],
        [
            f"hub process tree peak RSS ({len(tree_seen)} process(es) seen)",
            f"{to_mib(peak_tree)} MiB",
            "",
        ],
        [
            "hub VmHWM at the end",
            f"{to_mib(hwm)} MiB",
            f"{verdict(ok)} (< {to_mib(target)} MiB)",
        ],
        [
            "aggregate throughput",
            f"{total / wall / 1e6:.1f} MB/s ({total / wall / MiB:.1f} MiB/s)",
            "",
        ],
        ["wall time (first start - last exit)", f"{wall:.2f} s", ""],
        ["per-push seconds", ", ".join(f"{p.seconds:.1f}" for p in pushes), ""],
    ]
    if hwm == hwm0:
        rep.notes.append(
            f"VmHWM was already {to_mib(hwm0)} MiB before the pushes began (hub start-up and "
            "login), so the transfers themselves never pushed it higher."
        )
    rep.notes.append(
        f"{len(vals)} samples. All {n} stored files verified (digest of the hub's copy). "
        "Throughput counts logical bytes over the wall time including client start-up."
    )
    return rep


# ------------------------------------------------------------------------- crash


@dataclass
class CrashTrial:
    part_at_kill: int
    db_ckpt: int | None
    event: str  # stream_resume (or stream_start: started over)
    resumed: int
    identical: bool
    down: float
    client_seconds: float
    after_restart: float
    extra: dict[str, Any]
    events_after: int

    @property
    def again(self) -> int:
        return self.part_at_kill - self.resumed

    @property
    def ok(self) -> bool:
        return self.event == "stream_resume" and 0 <= self.again <= CHECKPOINT_INTERVAL


def crash_trial(
    args: argparse.Namespace, work: Path, src: Path, digest: str, name: str
) -> CrashTrial:
    size, limit = src.stat().st_size, parse_size(args.limit)
    kill_at = int(size * args.kill_at)
    env = {"FREIGHT_RETRY_INTERVAL": str(args.retry_interval)}
    with peers.running(Hub(work)) as hub:
        push = Push(hub, src, name, ["--limit", str(limit)], **env)
        try:
            expected = size / limit
            deadline = time.monotonic() + expected * 3 + 120
            part: Path | None = None
            seen = 0
            while seen < kill_at:
                if push.poll():
                    raise PeerError("the push finished before the kill point")
                if time.monotonic() > deadline:
                    raise PeerError("the partial file never reached the kill point")
                part = part or hub.partial()
                if part is not None:
                    with contextlib.suppress(FileNotFoundError):
                        seen = part.stat().st_size
                time.sleep(0.01)
            assert part is not None
            hub.kill()
            t_kill = time.monotonic()
            sid = part.stem
            part_at_kill = part.stat().st_size
            db_ckpt = hub.db_checkpoint(sid)
            hub.start()  # same port, same data folder
            t_up = time.monotonic()
            result = push.wait(timeout=expected * 3 + 300)
            t_done = time.monotonic()
        finally:
            push.stop()
        after = [
            e
            for e in hub.log_events(2)
            if e.get("event") in ("stream_resume", "stream_start") and e.get("sid") == sid
        ]
        if not after:
            raise PeerError("no stream_resume/stream_start event for the stream after the restart")
        first = after[0]
        resumed = int(first.get("checkpoint", 0)) if first["event"] == "stream_resume" else 0
        out = work / f"{name}.pulled"
        peers.freight_pull(hub.cfg, name, out)
        identical = out.stat().st_size == size and file_digest(out) == digest
        out.unlink(missing_ok=True)
    pushed = (result.get("pushed") or [{}])[0]
    return CrashTrial(
        part_at_kill=part_at_kill,
        db_ckpt=db_ckpt,
        event=first["event"],
        resumed=resumed,
        identical=identical,
        down=t_up - t_kill,
        client_seconds=push.seconds,
        after_restart=t_done - t_up,
        extra={k: pushed[k] for k in ("resumed_from", "attempts", "restarted") if k in pushed},
        events_after=len(after),
    )


def crash_cmd(args: argparse.Namespace, work: Path) -> Report:
    size = parse_size(args.size)
    limit = parse_size(args.limit)
    src = work / "crash.bin"
    print(f"generating {human(size)} of random data", flush=True)
    write_random(src, size)
    digest = file_digest(src)
    rep = Report(
        f"Hub crash: SIGKILL at ~{args.kill_at:.0%} of a {human(size)} push "
        f"(--limit {human_rate(limit)}), restart on the same port, resume; "
        f"{args.repeat} trial(s)",
        [
            "trial",
            "received at kill (partial)",
            "DB checkpoint at kill",
            "resumed from (hub log)",
            "bytes sent again",
            "target",
            "pulled back identical",
            "hub down",
            "client total / after restart",
        ],
    )

    def mib(n: int | None) -> str:
        return "no row" if n is None else f"{n} ({to_mib(n)} MiB)"

    trials = []
    for i in range(args.repeat):
        t = crash_trial(args, work, src, digest, f"crash-{i + 1}")
        trials.append(t)
        rep.failed |= not (t.ok and t.identical)
        resumed = mib(t.resumed) + ("" if t.event == "stream_resume" else " (started over!)")
        if t.db_ckpt != t.resumed:
            resumed += " (differs from DB)"
        rep.rows.append(
            [
                str(i + 1),
                f"{mib(t.part_at_kill)}, {t.part_at_kill / size:.1%}",
                mib(t.db_ckpt),
                resumed,
                mib(t.again),
                f"{verdict(t.ok)} (<= {human(CHECKPOINT_INTERVAL)})",
                "yes" if t.identical else "NO",
                f"{t.down:.2f} s",
                f"{t.client_seconds:.1f} s / {t.after_restart:.1f} s",
            ]
        )
        print(f"  trial {i + 1}: bytes sent again {to_mib(t.again)} MiB", flush=True)
    src.unlink(missing_ok=True)
    if len(trials) > 1:
        agains = [t.again for t in trials]
        rep.notes.append(
            f"bytes sent again over {len(trials)} trials: min {to_mib(min(agains))}, median "
            f"{to_mib(statistics.median(agains))}, max {to_mib(max(agains))} MiB"
        )
    for i, t in enumerate(trials, 1):
        if t.extra:
            rep.notes.append(f"trial {i}: client --json {json.dumps(t.extra)}")
        if t.events_after > 1:
            rep.notes.append(f"trial {i}: {t.events_after} start/resume events after the restart")
    rep.notes.append(
        f"Client env FREIGHT_RETRY_INTERVAL={args.retry_interval:g}. The partial size is "
        "stat'ed right after SIGKILL returned; the DB is read read-only before the restart. "
        "'hub down' = SIGKILL to the restarted hub answering /v1/health. A fresh hub per trial."
    )
    return rep


# -------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tmp", type=Path, default=DEFAULT_TMP, help="scratch folder (not tmpfs)")
    p.add_argument("--markdown", type=Path, help="append the results to this markdown file")
    p.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (logs) for debugging"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    lim = sub.add_parser("limits", help="rate-limit accuracy (client, hub, admin change)")
    lim.add_argument("--limits", default="1M,10M,100M", help="comma-separated --limit rates")
    lim.add_argument("--seconds", type=float, default=25, help="intended push duration")
    lim.add_argument("--window", type=float, default=10, help="sliding window, seconds")
    lim.add_argument("--ramp", type=float, default=2, help="ramp-up ignored, seconds")
    lim.add_argument("--interval", type=float, default=0.25, help="sampling interval, seconds")
    lim.add_argument("--tolerance", type=float, default=5, help="target, +- percent")
    lim.add_argument("--hub-limit", default="10M", help="freight hub --bandwidth RATE")
    lim.add_argument("--admin-limit", default="20M", help="freight admin bandwidth RATE mid-push")

    mem = sub.add_parser("memory", help="hub RSS under parallel pushes")
    mem.add_argument("--size", default="1G", help="size of each file")
    mem.add_argument("--streams", type=int, default=4, help="parallel push processes")
    mem.add_argument("--interval", type=float, default=0.1, help="sampling interval, seconds")
    mem.add_argument("--target", default="200M", help="peak RSS target")

    cr = sub.add_parser("crash", help="bytes re-sent after a hub SIGKILL")
    cr.add_argument("--size", default="1G", help="file size")
    cr.add_argument("--limit", default="200M", help="push --limit, keeps the timing controllable")
    cr.add_argument("--kill-at", type=float, default=0.4, help="fraction of the size")
    cr.add_argument("--retry-interval", type=float, default=0.5, help="FREIGHT_RETRY_INTERVAL")
    cr.add_argument("--repeat", type=int, default=1, help="trials (the kill point varies)")
    return p.parse_args(argv)


def needed_space(args: argparse.Namespace) -> int:
    if args.cmd == "limits":
        biggest = max(parse_size(x) for x in args.limits.split(",") if x.strip())
        return int(biggest * args.seconds * 2)  # source + hub copy
    if args.cmd == "memory":
        return parse_size(args.size) * args.streams * 2
    return parse_size(args.size) * 4  # source + hub copy (+ partial) + pulled copy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    args.tmp = args.tmp.resolve()
    args.tmp.mkdir(parents=True, exist_ok=True)
    fs = fs_type(args.tmp)
    if fs == "tmpfs":
        print(f"{args.tmp} is on tmpfs (RAM); use --tmp on a disk", file=sys.stderr)
        return 2
    need, free = needed_space(args), shutil.disk_usage(args.tmp).free
    if need + (1 << 30) > free:
        print(f"need ~{human(need)} free under {args.tmp}, have {free >> 20} MiB", file=sys.stderr)
        return 2
    Hub.keep = args.keep
    work = Path(tempfile.mkdtemp(prefix=f"targets-{args.cmd}-", dir=args.tmp))
    commands = {"limits": limits_cmd, "memory": memory_cmd, "crash": crash_cmd}
    try:
        report = commands[args.cmd](args, work)
    except (PeerError, OSError, subprocess.SubprocessError) as e:
        print(f"{args.cmd}: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                args.tmp.rmdir()  # only if empty
    report.print()
    if args.markdown:
        write_markdown(args.markdown, report, args.tmp)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
