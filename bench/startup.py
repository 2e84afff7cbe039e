"""Start-up benchmark: how long short `freight` commands take, end to end.

    python bench/startup.py                 # 9 rounds
    python bench/startup.py --rounds 15 --markdown /tmp/startup.md

Measures, as wall clock from the start of the process to its exit (each a
median over rounds; every round runs every row once, in rotating order, so
the drift of a shared machine hits every row alike):

- ``python -c pass`` (the same interpreter) and ``ssh -V`` (scp has no
  version flag): the floor references, measured in the same rounds;
- ``freight --version`` and ``freight --help``;
- ``freight ls`` against a hub this script starts on loopback (its own
  throwaway data and config folders, an admin account, one file on it);
- time to first byte of a push: from starting ``freight push`` of a 256 MiB
  random file until the hub has the first bytes of it *on disk* (a non-empty
  ``partial/*/*.part`` in its data folder, polled every millisecond). That is
  an upper bound of the first byte on the wire: it also counts the hub
  decrypting and writing it. The push is stopped as soon as it is seen.

With ``--baseline REV`` every freight row is measured twice in each round,
for the commit REV (its ``freight/`` exported to a temporary folder) and
for this tree, both as ``python -m freight`` with PYTHONPATH naming the
tree, one right after the other; the table then gives both medians and
their ratio.

The package is byte-compiled first (``compileall``), as an installed package
is: with PYTHONDONTWRITEBYTECODE set, an editable install would otherwise
compile every module from source on every run.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
PASSWORD = "startup bench password"
FIRST_BYTE_SIZE = 256 << 20


def export(rev: str, into: Path) -> Path:
    """``freight/`` as of ``rev``, byte-compiled, in ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_DIR), "archive", rev, "freight"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compileall.compile_dir(str(into / "freight"), quiet=1)
    return into


def freight_bin() -> list[str]:
    """The console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("freight")
    return [str(script)] if script.exists() else [sys.executable, "-m", "freight"]


class Hub:
    """A `freight hub` on 127.0.0.1 with a fresh data folder."""

    def __init__(self, root: Path) -> None:
        self.data = root / "hub"
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.fingerprint = ""

    def start(self) -> None:
        env = {**os.environ, "FREIGHT_ADMIN_PASSWORD": PASSWORD}
        cmd = [*freight_bin(), "hub", "--data", str(self.data), "--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        ready = threading.Event()
        lines: list[str] = []

        def drain() -> None:
            assert self.proc and self.proc.stderr
            for line in self.proc.stderr:
                lines.append(line)
                if m := re.search(r"listening on https://127\.0\.0\.1:(\d+)", line):
                    self.port = int(m.group(1))
                if m := re.search(r"fingerprint: (SHA256:[0-9a-f]+)", line):
                    self.fingerprint = m.group(1)
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(120):
            self.stop()
            raise SystemExit("the hub did not start:\n" + "".join(lines))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def first_bytes_seen(self) -> bool:
        for part in (self.data / "partial").glob("*/*.part"):
            try:
                if part.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                continue
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# CPU seconds (user + system) of the last command ``wall`` ran (None after a
# push's first byte): on a shared machine they move less than wall clock.
LAST_CPU: list[float | None] = [None]


def wall(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``cmd`` until it has exited."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    LAST_CPU[0] = cpu
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.decode()[-500:]}")
    return took


def first_byte(cmd: list[str], env: dict[str, str], hub: Hub) -> float:
    """Seconds from starting a push until the hub has its first bytes on disk."""
    LAST_CPU[0] = None
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + 60
    try:
        while not hub.first_bytes_seen():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"the push ended before its first byte was seen: {err[-500:]}")
            if time.perf_counter() > deadline:
                raise SystemExit("no byte of the push reached the hub within 60 s")
            time.sleep(0.001)
        return time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        # The stopped push leaves its partial behind (it is resumable):
        # remove it, so the next round waits for its own.
        shutil.rmtree(hub.data / "partial", ignore_errors=True)


def freight_rows(
    label: str, cmd: list[str], env: dict[str, str], hub: Hub, big: Path
) -> dict[str, Callable[[int], float]]:
    return {
        f"freight --version{label}": lambda i: wall([*cmd, "--version"], env),
        f"freight --help{label}": lambda i: wall([*cmd, "--help"], env),
        f"freight ls (hub on loopback){label}": lambda i: wall([*cmd, "ls"], env),
        f"push: first byte on the hub's disk{label}": lambda i: first_byte(
            [*cmd, "push", "-q", str(big), "--as", f"big{label.strip(' []')}-{i}.bin"], env, hub
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("--baseline", metavar="REV", help="also measure this commit (A/B)")
    args = parser.parse_args()

    compileall.compile_dir(str(REPO_DIR / "freight"), quiet=1)
    root = Path(tempfile.mkdtemp(prefix="freight-startup-"))
    # Commands run from there: ``python -m`` puts the working folder first
    # on sys.path, and the repository's would win over PYTHONPATH.
    os.chdir(root)
    hub = Hub(root)
    try:
        hub.start()
        env = {
            **os.environ,
            "FREIGHT_CONFIG_DIR": str(root / "config"),
            "COLUMNS": "80",
        }
        freight = freight_bin()
        # name -> (command, environment) of each variant measured.
        variants: dict[str, tuple[list[str], dict[str, str]]] = {"": (freight, env)}
        if args.baseline:
            base = export(args.baseline, root / "baseline")
            as_module = [sys.executable, "-m", "freight"]
            variants = {
                "A": (as_module, {**env, "PYTHONPATH": str(base)}),
                "B": (as_module, {**env, "PYTHONPATH": str(REPO_DIR)}),
            }
        login = ["login", hub.url, "--user", "admin", "--password-stdin"]
        subprocess.run(
            [*freight, *login, "--fingerprint", hub.fingerprint],
            env=env,
            input=(PASSWORD + "\n").encode(),
            check=True,
            capture_output=True,
        )
        small = root / "hello.txt"
        small.write_text("hello\n")
        subprocess.run([*freight, "push", "-q", str(small)], env=env, check=True)
        big = root / "big.bin"
        with open(big, "wb") as f:
            for _ in range(FIRST_BYTE_SIZE >> 20):
                f.write(os.urandom(1 << 20))

        rows: dict[str, Callable[[int], float]] = {
            "python -c pass": lambda i: wall([sys.executable, "-c", "pass"], env),
        }
        if shutil.which("ssh"):  # scp has no -V; ssh -V is the same binary family's
            rows["ssh -V"] = lambda i: wall(["ssh", "-V"], env)
        sets = [
            list(freight_rows(f" [{tag}]" if tag else "", cmd, venv, hub, big).items())
            for tag, (cmd, venv) in variants.items()
        ]
        for same_row in zip(*sets, strict=True):  # A and B of a row run one after the other
            rows.update(same_row)
        times: dict[str, list[float]] = {name: [] for name in rows}
        cpus: dict[str, list[float]] = {}
        names = list(rows)
        for i in range(args.rounds):
            # Rotated each round; with a baseline, A and B also swap turns.
            order = names[i % len(names) :] + names[: i % len(names)]
            if i % 2:
                order.reverse()
            for name in order:
                times[name].append(rows[name](i))
                if LAST_CPU[0] is not None:
                    cpus.setdefault(name, []).append(LAST_CPU[0])
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        hub.stop()
        shutil.rmtree(root, ignore_errors=True)

    load = os.getloadavg()
    base = statistics.median(times["python -c pass"])
    out = [
        f"Command: `python bench/startup.py --rounds {args.rounds}"
        + (f" --baseline {args.baseline}`" if args.baseline else "`")
        + f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
        "| command | median | min | max | over `python -c pass` | CPU (median) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, values in times.items():
        med = statistics.median(values)
        cpu = f"{statistics.median(cpus[name]) * 1000:.0f} ms" if name in cpus else "-"
        out.append(
            f"| {name} | {med * 1000:.0f} ms | {min(values) * 1000:.0f} ms | "
            f"{max(values) * 1000:.0f} ms | {(med - base) * 1000:+.0f} ms | {cpu} |"
        )
    if args.baseline:
        out += [
            "",
            "| command | A (baseline) | B (this tree) | B / A | CPU A | CPU B |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in times:
            if name.endswith(" [A]"):
                row = name.removesuffix(" [A]")
                a = statistics.median(times[name])
                b = statistics.median(times[row + " [B]"])
                ca, cb = (cpus.get(f"{row} [{t}]") for t in "AB")
                cpu = (
                    f"{statistics.median(ca) * 1000:.0f} ms | {statistics.median(cb) * 1000:.0f} ms"
                    if ca and cb
                    else "- | -"
                )
                out.append(
                    f"| {row} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.2f} | {cpu} |"
                )
    text = "\n".join(out) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
