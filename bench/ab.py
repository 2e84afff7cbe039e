"""A/B benchmark of two commits of Freight, in one run, rounds alternating A and B.

    make bench-ab A=068d6a4 B=HEAD               # defaults: A=HEAD~1, B=HEAD
    .venv/bin/python bench/ab.py A B [--size 1G] [--rounds 3] [--only push,pull]
                                     [--markdown FILE]

Both revisions are checked out into temporary git worktrees (`git worktree add
--detach`) and every Freight process of a revision -- hub, agent, CLI, SDK
workers -- runs with the repository's venv python and PYTHONPATH=<its worktree>
(checked: `import freight` resolves there). The dependencies are the venv's,
the same for both. Within a round every path runs once for each revision,
back to back, A first in even rounds and B first in odd ones (A B, B A, A B...),
so the machine's drift (±30 % over minutes here) hits both alike. Paths:

  push        `freight push` of a --size random file (MB/s, wall clock)
  pull        `freight pull` of it back (MB/s; the copy is checked)
  push-text   `freight push --compress fast` of --size log-like text (MB/s;
              pulled back untimed and checked)
  push-dir    `freight push DIR` of --files x --file-size random files (files/s;
              pulled back untimed and checked in the first round)
  sendrecv    `freight send` / `freight receive` of the random file through the
              hub (MB/s, receiver start to exit; bench/relay.py sendrecv_round)
  sdk-pipe    one SDK pipe, ws attachment, records on the lane, --size in 1 MiB
              messages (MB/s; bench/relay.py run_pipes, each revision's own
              relay.py as the worker)
  connect     SDK `connect` -> first byte delivered, median of --samples
              (ms; bench/relay.py _latency, run by the revision's own relay.py)
  cp-r        `freight cp -r AGENT:/tree DEST/` of the same small files from a
              real agent (files/s; bench/agents.py TreeAgent; copy checked)
  startup     `freight --version`, median of --starts runs (ms)

Each round starts a fresh hub per revision (the agent's hub lives for the run).
Reported: median over rounds for A and B, B/A, and a flag on every path where
B costs more than 5 % more time than A (throughput A/B > 1.05, or latency B/A >
1.05). Exit status 1 when a path is flagged or failed. Every wait has a
deadline; hubs, agents and worktrees are removed on exit, Ctrl-C or SIGTERM.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agents
import peers
import relay
from peers import FREIGHT, PeerError

from bench import Dataset, fs_type, human, make_data, markdown_table, parse_size, remove, verify

BENCH_DIR = peers.BENCH_DIR
REPO_DIR = peers.REPO_DIR
DEFAULT_TMP = REPO_DIR / ".bench-tmp" / "ab"  # gitignored
WORSE = 0.05  # a path costing B more than 5 % more time than A is flagged
Sample = tuple[float, float | None]  # the path's figure, CPU seconds (None: not measured)
FAILURES = (PeerError, OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError)
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[ab {time.monotonic() - T0:5.0f}s] {msg}", file=sys.stderr, flush=True)


def git(*args: str, timeout: float = 120) -> str:
    res = subprocess.run(
        ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=timeout
    )
    if res.returncode != 0:
        raise PeerError(f"git {' '.join(args)}: {res.stderr.strip()[-400:]}")
    return res.stdout.strip()


# ---------------------------------------------------------------- revisions


@dataclass
class Revision:
    """One side of the comparison: a commit checked out in its own worktree."""

    label: str  # "A" / "B"
    spec: str  # as given on the command line
    sha: str
    subject: str
    path: Path  # the worktree

    @property
    def short(self) -> str:
        return self.sha[:7]

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path), "VENV": str(peers.VENV)}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Every process started meanwhile runs this revision's freight: the
        bench helpers copy os.environ into their children's environment."""
        saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "VENV")}
        os.environ.update(self.env())
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def script(self, name: str) -> Path:
        """The revision's own bench script (its SDK calls match its code);
        this checkout's when the revision has none."""
        own = self.path / "bench" / name
        return own if own.exists() else BENCH_DIR / name


@contextlib.contextmanager
def checked_out(label: str, spec: str, dest: Path) -> Iterator[Revision]:
    """`git worktree add --detach`, byte-compiled and checked; always removed."""
    sha = git("rev-parse", "--verify", f"{spec}^{{commit}}")
    subject = git("log", "-1", "--format=%s", sha)[:100]
    try:
        git("worktree", "add", "--detach", str(dest), sha, timeout=300)
        rev = Revision(label, spec, sha, subject, dest)
        py = str(peers.VENV / "bin" / "python")
        env = dict(os.environ, **rev.env())
        # Compile once here, not during the first timed command.
        subprocess.run([py, "-P", "-m", "compileall", "-q", str(dest / "freight")],
                       env=env, timeout=300, check=True, capture_output=True)  # fmt: skip
        res = subprocess.run(
            [py, "-P", "-c", "import freight; print(freight.__file__)"],
            env=env, cwd=dest.parent, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if not res.stdout.strip().startswith(str(dest) + os.sep):
            raise PeerError(f"{label}: freight imported from {res.stdout.strip()!r}, not {dest}")
        log(f"{label} = {spec} = {rev.short} {subject}  ({dest})")
        yield rev
    finally:
        with contextlib.suppress(PeerError, subprocess.SubprocessError):
            git("worktree", "remove", "--force", str(dest))
        shutil.rmtree(dest, ignore_errors=True)
        with contextlib.suppress(PeerError, subprocess.SubprocessError):
            git("worktree", "prune")


# -------------------------------------------------------------------- paths


@dataclass(frozen=True)
class BenchPath:
    key: str
    label: str
    unit: str
    higher_is_better: bool


PATHS = [
    BenchPath("push", "`freight push` random", "MB/s", True),
    BenchPath("pull", "`freight pull` random", "MB/s", True),
    BenchPath("push-text", "`freight push --compress fast` text", "MB/s", True),
    BenchPath("push-dir", "`freight push DIR`, small files", "files/s", True),
    BenchPath("sendrecv", "`freight send` / `receive` random", "MB/s", True),
    BenchPath("sdk-pipe", "SDK pipe (ws, lane), 1 MiB messages", "MB/s", True),
    BenchPath("connect", "SDK `connect` → first byte, median", "ms", False),
    BenchPath("cp-r", "`freight cp -r` from an agent, small files", "files/s", True),
    BenchPath("startup", "`freight --version`, median", "ms", False),
]
PATH_BY_KEY = {p.key: p for p in PATHS}
HUB_PATHS = {"push", "pull", "push-text", "push-dir", "sendrecv", "sdk-pipe", "connect"}

# Runs in a child with the revision's PYTHONPATH; argv: bench dir, configs, samples.
_LATENCY_CHILD = """
import argparse, asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import relay
hub = argparse.Namespace(cfgs=json.loads(sys.argv[2]))
args = argparse.Namespace(samples=int(sys.argv[3]), warmup=1, transport="auto")
print(json.dumps(asyncio.run(relay._latency(args, hub))))
"""


@dataclass
class Side:
    """What one revision has running: a hub for the round, an agent for the run."""

    rev: Revision
    run: Run
    hub_: relay.RelayHub | None = None
    agent_: agents.TreeAgent | None = None
    done: set[str] = field(default_factory=set)  # paths done this round

    def hub(self) -> relay.RelayHub:
        if self.hub_ is None:
            work = Path(tempfile.mkdtemp(prefix=f"hub-{self.rev.label}-", dir=self.run.dir))
            self.hub_ = self.run.round_stack.enter_context(peers.running(relay.RelayHub(work)))
        return self.hub_

    def agent(self) -> agents.TreeAgent:
        if self.agent_ is None:
            work = Path(tempfile.mkdtemp(prefix=f"agent-{self.rev.label}-", dir=self.run.dir))
            agent = agents.TreeAgent(work, self.run.tree_base)
            self.agent_ = self.run.stack.enter_context(peers.running(agent))
        return self.agent_

    # Each returns the path's figure for one round, in the path's unit, and
    # the CPU seconds of every process involved (client(s) + hub/agent).

    def push(self) -> Sample:
        ds = self.run.data["random"]
        t = self.hub().push(ds.path, "bench-random", timeout=self.run.deadline)
        if "pull" not in self.run.args.only:  # otherwise the timed pull checks it
            self.pull_back("bench-random", ds)
        return t.nbytes / t.seconds / 1e6, t.cpu_seconds

    def pull(self) -> Sample:
        if "push" not in self.done:
            raise PeerError("needs push, which did not run")
        out = self.run.dir / f"pull-{self.rev.label}.out"
        try:
            t = self.hub().pull("bench-random", out, timeout=self.run.deadline)
            verify(out, self.run.data["random"])
        finally:
            remove(out)
        return t.nbytes / t.seconds / 1e6, t.cpu_seconds

    def push_text(self) -> Sample:
        ds = self.run.data["text"]
        t = self.hub().push(ds.path, "bench-text", ["--compress", "fast"], self.run.deadline)
        self.pull_back("bench-text", ds)
        return t.nbytes / t.seconds / 1e6, t.cpu_seconds

    def pull_back(self, name: str, ds: Dataset) -> None:
        dest = self.run.dir / f"{name}-{self.rev.label}.verify"
        try:
            self.hub().pull(name, dest, timeout=self.run.deadline)
            verify(dest, ds)
        finally:
            remove(dest)

    def push_dir(self) -> Sample:
        hub, tree = self.hub(), self.run.tree
        cmd = [str(FREIGHT), "push", str(tree), "--json", "--quiet"]
        secs, cpu, _ = peers.timed_against_server(
            hub.pid, cmd, env=peers._freight_env(hub.cfg), timeout=self.run.tree_deadline
        )
        if self.run.first_round:  # untimed: the folder comes back identical
            dest = self.run.dir / f"tree-{self.rev.label}.verify"
            try:  # (once: the pull of 2,000 files costs half the push again)
                hub.pull(f"{tree.name}/", dest, timeout=self.run.tree_deadline)
                self.run.check_tree(dest)
            finally:
                remove(dest)
        return self.run.tree_files / secs, cpu

    def sendrecv(self) -> Sample:
        src = self.run.data["random"].path
        work = Path(tempfile.mkdtemp(prefix="sendrecv-", dir=self.run.dir))
        try:
            r = relay.sendrecv_round(self.hub(), "auto", src, work, self.run.deadline)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return src.stat().st_size / r.seconds / 1e6, r.cpu

    def sdk_pipe(self) -> Sample:
        msg = 1 << 20
        messages = max(1, self.run.size // msg)
        spec = relay.PipeSpec(
            1, messages, msg, "ws", "auto", timeout=60 + self.run.size / 30e6,
            worker=str(self.rev.script("relay.py")),
        )  # fmt: skip
        work = Path(tempfile.mkdtemp(prefix="pipe-", dir=self.run.dir))
        try:
            run = relay.run_pipes(self.hub(), work, spec, 0.5)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not run.ok:
            raise PeerError(f"SDK pipe: {run.done}")
        return messages * msg / float(run.done["dial"]["seconds"]) / 1e6, run.cpu

    def connect(self) -> Sample:
        hub, samples = self.hub(), self.run.args.samples
        cfgs = json.dumps({u: str(p) for u, p in hub.cfgs.items()})
        bench_dir = str(self.rev.script("relay.py").parent)
        cmd = [str(peers.VENV / "bin" / "python"), "-P", "-c", _LATENCY_CHILD, bench_dir, cfgs]
        res = subprocess.run(
            [*cmd, str(samples)], capture_output=True, text=True, cwd=self.run.dir,
            stdin=subprocess.DEVNULL, timeout=60 + samples,
        )  # fmt: skip
        if res.returncode != 0:
            raise PeerError(f"connect latency: exit {res.returncode}: {res.stderr[-800:]}")
        first_byte = json.loads(res.stdout.strip().splitlines()[-1])["first_byte"]
        return statistics.median(first_byte) * 1e3, None

    def cp_r(self) -> Sample:
        agent, src = self.agent(), self.run.tree
        dest = Path(tempfile.mkdtemp(prefix=f"cp-{self.rev.label}-", dir=self.run.dir))
        cmd = [str(FREIGHT), "cp", "-r", f"{agents.AGENT}:{src}", f"{dest}/", "--json", "--quiet"]
        try:
            agents.tree_digest(src)  # page cache warm, the same for both
            os.sync()
            secs, cpu, _ = agents._timed(
                cmd, agent.pids, env=peers._freight_env(agent.hub.cfg),
                timeout=self.run.tree_deadline,
            )  # fmt: skip
            self.run.check_tree(dest / src.name)
        finally:
            remove(dest)
        return self.run.tree_files / secs, cpu

    def startup(self) -> Sample:
        runs = [
            peers.run_client([str(FREIGHT), "--version"], timeout=60)
            for _ in range(self.run.args.starts)
        ]
        return statistics.median(r[0] for r in runs) * 1e3, statistics.median(r[1] for r in runs)

    def measure(self, key: str) -> Sample:
        fn: Callable[[], Sample] = getattr(self, key.replace("-", "_"))
        try:
            return fn()
        finally:
            os.sync()  # flush writeback now, not during the next timed command


@dataclass
class Run:
    args: argparse.Namespace
    dir: Path
    size: int
    stack: contextlib.ExitStack
    round_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    data: dict[str, Dataset] = field(default_factory=dict)
    tree_base: Path = Path()
    tree_want: tuple[int, int, str] = (0, 0, "")
    first_round: bool = True
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def deadline(self) -> float:
        """Seconds allowed to one command moving --size (5 MB/s at worst)."""
        return 120 + self.size / 5e6

    @property
    def tree_deadline(self) -> float:
        """Seconds allowed to one command moving the small files (2 files/s)."""
        return 120 + self.tree_files / 2

    @property
    def tree(self) -> Path:
        return self.tree_base / "tree"

    @property
    def tree_files(self) -> int:
        return self.tree_want[0]

    def fail(self, keys: list[str], label: str, error: str) -> None:
        """A path that failed is skipped from then on: its command is broken, not slow."""
        # The last line that says something (not a frame of typer's error box).
        lines = [ln.strip(" │╭╮╰╯─") for ln in error.splitlines()]
        why = ([ln for ln in lines if any(c.isalnum() for c in ln)] or ["failed"])[-1][:300]
        for key in keys:
            self.failures.setdefault(key, f"{label}: {why}")
        log(f"  {', '.join(keys)} {label}: FAILED, skipped from now on: {error}")

    def check_tree(self, copy: Path) -> None:
        got = agents.tree_digest(copy)
        if got != self.tree_want:
            raise PeerError(f"the copy of the tree differs: {got} vs {self.tree_want}")


def run_rounds(run: Run, sides: list[Side], paths: list[BenchPath]) -> None:
    for rnd in range(run.args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        log(f"round {rnd + 1}/{run.args.rounds}: {' then '.join(s.rev.label for s in order)}")
        run.first_round = rnd == 0
        run.round_stack = contextlib.ExitStack()
        with run.round_stack:
            for side in order:  # both hubs up before the first timed command
                side.hub_, side.done = None, set()
                wanted = [p.key for p in paths if p.key in HUB_PATHS - run.failures.keys()]
                try:
                    if wanted:
                        with side.rev.active():
                            side.hub()
                except FAILURES as e:
                    run.fail(wanted, side.rev.label, f"hub: {e}")
            for path in paths:
                if path.key in run.failures:
                    continue
                for side in order:
                    t0 = time.monotonic()
                    try:
                        with side.rev.active():
                            value, cpu = side.measure(path.key)
                    except FAILURES as e:
                        run.fail([path.key], side.rev.label, str(e))
                        break
                    side.done.add(path.key)
                    run.results.setdefault(path.key, {}).setdefault(side.rev.label, []).append(
                        value
                    )
                    if cpu is not None:
                        run.cpu.setdefault(path.key, {}).setdefault(side.rev.label, []).append(cpu)
                    took = time.monotonic() - t0
                    cpu_s = "-" if cpu is None else f"{cpu:.2f}"
                    log(f"  {path.key:<10} {side.rev.label}: {value:10.1f} {path.unit:<7} "
                        f"CPU {cpu_s} s ({took:.1f} s with set-up and checks)")  # fmt: skip


# ---------------------------------------------------------------- reporting

HEADERS = ["path", "unit", "A median", "B median", "B/A", "A runs", "B runs", "CPU s A / B",
           "verdict"]  # fmt: skip


def slowdown(path: BenchPath, a: float, b: float) -> float:
    """How much more time B takes than A (0.07 = 7 % more)."""
    return (a / b if path.higher_is_better else b / a) - 1


def fmt(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def table(run: Run, paths: list[BenchPath]) -> tuple[list[list[str]], bool]:
    rows, bad = [], False
    for p in paths:
        got = run.results.get(p.key, {})
        a, b = got.get("A", []), got.get("B", [])
        if p.key in run.failures or not a or not b:
            bad = True
            why = run.failures.get(p.key, "not run")
            rows.append([p.label, p.unit, "-", "-", "-", "-", "-", "-", f"**failed** ({why})"])
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        worse = slowdown(p, ma, mb)
        flagged = worse > WORSE
        bad |= flagged
        verdict = f"**{worse:+.1%} time: worse**" if flagged else f"ok ({worse:+.1%} time)"
        cpu = run.cpu.get(p.key, {})
        ca, cb = cpu.get("A"), cpu.get("B")
        cpus = f"{statistics.median(ca):.2f} / {statistics.median(cb):.2f}" if ca and cb else "-"
        rows.append([p.label, p.unit, fmt(ma), fmt(mb), f"{mb / ma:.3f}",
                     ", ".join(fmt(v) for v in a), ", ".join(fmt(v) for v in b), cpus,
                     verdict])  # fmt: skip
    return rows, bad


def write_markdown(path: Path, title: str, env: dict[str, str], text: str, notes: str) -> None:
    cmd = shlex.join(["bench/ab.py", *sys.argv[1:]])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        f"\n## {title} ({now})\n",
        f"Command: `{cmd}`\n",
        "\n".join(f"- {k}: `{v}`" for k, v in env.items()) + "\n",
        text + "\n",
        notes + "\n",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(parts))
    log(f"appended results to {path}")


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/ab.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", metavar="A", help="the revision before (e.g. HEAD~1, a sha, a branch)")
    p.add_argument("b", metavar="B", help="the revision after (e.g. HEAD)")
    p.add_argument("--size", default="1G", help="random and text file size (default 1G)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (default 3)")
    p.add_argument("--files", type=int, default=2000, help="small files for push-dir, cp-r")
    p.add_argument("--file-size", default="4K", help="size of each small file (default 4K)")
    p.add_argument("--samples", type=int, default=101, help="connect latency samples (101)")
    p.add_argument("--starts", type=int, default=5, help="`freight --version` runs a round (5)")
    p.add_argument("--only", default=",".join(PATH_BY_KEY), help="comma-separated paths")
    p.add_argument("--markdown", type=Path, help="append the results to this markdown file")
    p.add_argument("--tmp", type=Path, default=DEFAULT_TMP, help=f"scratch ({DEFAULT_TMP})")
    p.add_argument("--keep-data", action="store_true", help="keep generated files (TMP/data)")
    args = p.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in PATH_BY_KEY]
    if unknown:
        p.error(f"unknown paths {unknown}; choose from {', '.join(PATH_BY_KEY)}")
    if args.rounds < 1 or args.files < 1 or args.samples < 1 or args.starts < 1:
        p.error("--rounds, --files, --samples and --starts must be at least 1")
    return args


def _on_signal(signum: int, _frame: Any) -> None:
    raise relay.Terminated(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if Path(sys.prefix).resolve() != peers.VENV.resolve():
        sys.exit(f"run this with {peers.VENV}/bin/python (or set VENV to the venv you use)")
    size = parse_size(args.size)
    paths = [p for p in PATHS if p.key in args.only]
    args.tmp = args.tmp.resolve()
    args.tmp.mkdir(parents=True, exist_ok=True)
    if fs_type(args.tmp) in ("tmpfs", "ramfs"):
        sys.exit(f"{args.tmp} is on {fs_type(args.tmp)}: use --tmp on a real disk")
    need = 8 * size + (512 << 20)  # sources, two hubs' copies, a received copy
    if shutil.disk_usage(args.tmp).free < need:
        sys.exit(f"not enough space in {args.tmp}: need ~{human(need)}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    stack = contextlib.ExitStack()
    run = Run(args, Path(tempfile.mkdtemp(prefix="run-", dir=args.tmp)), size, stack)
    revs: list[Revision] = []
    interrupted = False
    try:
        for label, spec in (("A", args.a), ("B", args.b)):
            revs.append(stack.enter_context(checked_out(label, spec, run.dir / f"wt-{label}")))
        keys = {p.key for p in paths}
        # Kept for the next run with --keep-data; else this run's own (runs may overlap).
        data = args.tmp / "data" if args.keep_data else run.dir / "data"
        if keys & {"push", "pull", "push-text", "sendrecv"}:
            run.data = make_data(data, size, need_text="push-text" in keys)
        if keys & {"push-dir", "cp-r"}:
            fsize = parse_size(args.file_size)
            run.tree_base = data / f"tree-{args.files}x{fsize}"
            agents.make_tree(run.tree_base, args.files, fsize, max(1, args.files // 100))
            run.tree_want = agents.tree_digest(run.tree)
        sides = [Side(r, run) for r in revs]
        if "cp-r" in keys:  # agents (and their hubs) live for the whole run
            for side in sides:
                try:
                    with side.rev.active():
                        side.agent()
                except FAILURES as e:
                    run.fail(["cp-r"], side.rev.label, f"agent: {e}")
                    break
        run_rounds(run, sides, paths)
    except (KeyboardInterrupt, relay.Terminated) as e:
        interrupted = True
        log(f"interrupted ({str(e) or 'Ctrl-C'}): stopping hubs and agents, removing worktrees")
    except FAILURES as e:  # setting up: a revision that does not exist, git, the data
        log(f"FAILED: {e}")
    finally:
        # A second Ctrl-C must not leave hubs or worktrees behind; every step
        # below has its own deadline.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        run.round_stack.close()
        stack.close()
        shutil.rmtree(run.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            args.tmp.rmdir()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted or len(revs) < 2:
        return 130 if interrupted else 1
    minutes = (time.monotonic() - T0) / 60
    rows, bad = table(run, paths)
    a, b = revs
    title = f"A/B: {a.short} → {b.short}, {human(size)}, {args.rounds} round(s)"
    text = markdown_table(HEADERS, rows)
    notes = (
        f"- A = `{a.spec}` = {a.short} {a.subject}\n- B = `{b.spec}` = {b.short} {b.subject}\n"
        f"- Medians over {args.rounds} round(s); in each round every path ran for A and B back "
        "to back, A first in even rounds, B first in odd ones; a fresh hub per revision per "
        f"round. Small files: {args.files:,} x {args.file_size}. Flagged: B takes more than "
        f"{WORSE:.0%} more time than A (A/B for throughput, B/A for latency). CPU s = median "
        "CPU seconds of the client(s) and the hub (and agent) per run, for information: it "
        f"drifts less than the wall clock. Run took {minutes:.1f} min."
    )
    print(f"\n{title}\n\n{text}\n\n{notes}\n", flush=True)
    if args.markdown:
        uname, python = " ".join(platform.uname()), sys.version.split()[0]
        env = {"uname -a": uname, "nproc": str(os.cpu_count()), "python": python}
        write_markdown(args.markdown, title, env, text, notes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
