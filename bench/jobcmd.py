"""Whole transfer jobs through the CLI, per manner: ``freight job receive
--once`` as one account, ``freight job send --manner M`` as another, on one
hub on loopback. Reports the job's own time (from its final line) and the
whole ``job send`` command (start-up, hashing, negotiation, move, result),
manners alternating round by round.

    .venv/bin/python bench/jobcmd.py --size 1024 --rounds 2 direct relay ref
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.relaysupport import BOB_PASSWORD, Proc, fast  # noqa: E402
from tests.support import Client, Hub  # noqa: E402

MiB = 1 << 20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manners", nargs="+", choices=["direct", "relay", "ref"])
    p.add_argument("--size", type=int, default=1024, help="MiB of random data (default 1024)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fjobcmd-", dir="/tmp"))
    hub = Hub(base / "hub", extra=["--msg-warmup", "0"]).start()
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in args.manners}
    try:
        alice = fast(Client(base / "a", hub))
        alice.login()
        alice.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
        bob = fast(Client(base / "b", hub))
        bob.login(user="bob", password=BOB_PASSWORD)
        src = base / "big.bin"
        with open(src, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MiB))
        size = args.size * MiB
        for _ in range(args.rounds):
            for manner in args.manners:
                out = base / f"out-{manner}"
                with Proc(bob, "job", "receive", "inbox", "-o", str(out), "--once") as recv:
                    recv.wait_stderr("Waiting", 30)
                    started = time.monotonic()
                    done = alice.run(
                        "job", "send", "bob", "inbox", str(src), "--manner", manner, "--quiet"
                    )
                    command = time.monotonic() - started
                    if recv.wait(120) != 0:
                        raise RuntimeError(f"the receiver failed: {recv.stderr[-500:]}")
                m = re.search(r"by (\w+) in ([0-9.]+) s", done.stdout)
                if m is None or m.group(1) != manner:
                    raise RuntimeError(f"unexpected end of job: {done.stdout!r}")
                if (out / src.name).stat().st_size != size:
                    raise RuntimeError("the received file has the wrong size")
                job = float(m.group(2))
                results[manner].append((job, command))
                print(f"{manner}: job {job:.2f} s, command {command:.2f} s", flush=True)
                shutil.rmtree(out)
    finally:
        hub.stop()
        shutil.rmtree(base, ignore_errors=True)
    print("\n| manner | job (MB/s, median) | whole `job send` command (MB/s, median) | rounds |")
    print("|---|---|---|---|")
    for manner, got in results.items():
        job = statistics.median(size / j / 1e6 for j, _ in got)
        cmd = statistics.median(size / c / 1e6 for _, c in got)
        print(f"| {manner} | {job:.0f} | {cmd:.0f} | {len(got)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
