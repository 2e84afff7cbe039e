"""Benchmark of the agent's incremental scanner (freight/agent/scan.py).

    .venv/bin/python bench/scan.py --files 100000
    .venv/bin/python bench/scan.py --files 100000 --cold --markdown docs/benchmarks.md

Builds a tree of ``--files`` files (``--per-dir`` per folder, 1-4 KiB of
random bytes each, all distinct) under ``--tmp`` (default .bench-tmp/ at the
repo root, gitignored), then times :func:`scan` with a fresh SQLite cache:

1. first scan: everything hashed (files/s, MiB/s);
2. rescan, nothing changed, ``--repeat`` times: must hash nothing;
   optionally (``--cold``, needs root) once more after dropping the kernel's
   page, dentry and inode caches, as after a reboot;
3. touch ``--touch-pct`` % of the files (new mtime, same bytes) and rescan:
   must hash exactly those, with unchanged digests.

Target: a rescan of 100,000 unchanged files in under 5 s, hashing nothing.
The tree is built, then the scanner's racy window (2 s) is waited out: files
modified that recently are re-hashed on the next scan by design, which would
make step 2 measure the tree's creation instead of the cache. Times are
wall-clock (time.perf_counter) of the whole scan() call, cache load and
write included. The scratch folder is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import fs_type, markdown_table  # bench/bench.py, beside this script
from freight.agent.scan import RACY_WINDOW, ScanCache, ScanResult, scan

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_TMP = REPO_DIR / ".bench-tmp"  # gitignored
TARGET_FILES = 100_000
TARGET_SECONDS = 5.0
MiB = 1 << 20


@dataclass
class Step:
    name: str
    seconds: float
    res: ScanResult

    def row(self) -> list[str]:
        n = len(self.res.found)
        return [
            self.name,
            f"{n:,}",
            f"{self.res.hashed:,}",
            f"{self.res.hashed_bytes / MiB:.1f}",
            f"{self.seconds:.2f}",
            f"{n / self.seconds:,.0f}" if self.seconds else "-",
            str(len(self.res.errors)),
        ]


HEADERS = ["step", "files", "hashed", "hashed MiB", "seconds", "files/s", "errors"]


def build_tree(top: Path, files: int, per_dir: int, rng: random.Random) -> list[str]:
    """Distinct 1-4 KiB files: a unique header plus a slice of a random pool
    (os.urandom per file would time the kernel's RNG, not the disk)."""
    pool = rng.randbytes(8192)
    paths: list[str] = []
    for i in range(files):
        d = top / f"d{i // per_dir:05d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        p = str(d / f"f{i:07d}.bin")
        size = rng.randint(1024, 4096)
        off = rng.randrange(0, len(pool) - size)
        head = f"{i:08d}".encode()
        with open(p, "wb") as f:
            f.write(head + pool[off : off + size - len(head)])
        paths.append(p)
    return paths


def timed(name: str, top: Path, cache: ScanCache) -> Step:
    t0 = time.perf_counter()
    res = scan([top], [], [], 0, cache)
    step = Step(name, time.perf_counter() - t0, res)
    print("  " + " | ".join(step.row()), flush=True)
    return step


def drop_caches() -> str:
    """Empty the page, dentry and inode caches (root only): a cold rescan."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"could not drop caches ({exc.strerror}); skipped"
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=TARGET_FILES)
    p.add_argument("--per-dir", type=int, default=100, help="files per folder (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="unchanged rescans (median reported)")
    p.add_argument("--touch-pct", type=float, default=1.0, help="percent of files touched")
    p.add_argument("--cold", action="store_true", help="also rescan with dropped caches (root)")
    p.add_argument("--tmp", type=Path, default=DEFAULT_TMP, help="scratch parent folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--markdown", type=Path, help="append the results to this markdown file")
    args = p.parse_args()

    rng = random.Random(args.seed)
    args.tmp.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scan-", dir=args.tmp))
    top, db = scratch / "tree", scratch / "scan.db"
    notes: list[str] = []
    steps: list[Step] = []
    try:
        print(f"building {args.files:,} files in {top} ({fs_type(scratch)}) ...", flush=True)
        t0 = time.perf_counter()
        paths = build_tree(top, args.files, args.per_dir, rng)
        built = time.perf_counter() - t0
        print(f"  built in {built:.1f} s; waiting out the {RACY_WINDOW:.0f} s racy window")
        time.sleep(RACY_WINDOW + 0.2)

        print("  " + " | ".join(HEADERS))
        with ScanCache(db) as cache:
            steps.append(timed("first scan (empty cache)", top, cache))
            rescans = [timed(f"rescan, unchanged #{i + 1}", top, cache) for i in range(args.repeat)]
            steps += rescans
            if args.cold:
                why = drop_caches()
                if why:
                    notes.append(f"cold rescan: {why}")
                else:
                    steps.append(timed("rescan, unchanged, caches dropped", top, cache))
            touched = rng.sample(paths, round(len(paths) * args.touch_pct / 100))
            before = {f.path: f.digest for f in steps[0].res.found}
            now = time.time_ns()
            for t in touched:
                os.utime(t, ns=(now, now))
            touch_step = timed(f"rescan after touching {args.touch_pct:g} %", top, cache)
            steps.append(touch_step)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    warm = [s.seconds for s in rescans]
    median = statistics.median(warm)
    worst = max([*warm, *(s.seconds for s in steps if "dropped" in s.name)])
    hashed_none = all(s.res.hashed == 0 for s in steps[1:-1])
    same_digests = all(before[f.path] == f.digest for f in touch_step.res.found)
    touched_ok = touch_step.res.hashed == len(touched) and same_digests
    full = args.files >= TARGET_FILES
    ok = full and worst < TARGET_SECONDS and hashed_none
    target_rows = [
        [
            f"rescan of {TARGET_FILES:,} unchanged files < {TARGET_SECONDS:g} s, hashing nothing",
            f"{len(steps[1].res.found):,} files: median {median:.2f} s, slowest {worst:.2f} s"
            f" (of {len(steps) - 2} rescans); hashed "
            + ", ".join(str(s.res.hashed) for s in steps[1:-1]),
            ("met" if ok else "missed") if full else f"n/a (only {args.files:,} files)",
        ],
        [
            f"touch {args.touch_pct:g} % of the files: exactly those re-hashed, digests unchanged",
            f"touched {len(touched):,}, hashed {touch_step.res.hashed:,}"
            f", digests {'unchanged' if same_digests else 'CHANGED'}",
            "met" if touched_ok else "missed",
        ],
    ]
    notes.append(
        f"tree built in {built:.1f} s; first scan hashed"
        f" {steps[0].res.hashed_bytes / MiB / steps[0].seconds:.1f} MiB/s"
        " (small files: bounded by open/read/close per file, not by BLAKE3)"
    )
    print("\n" + markdown_table(HEADERS, [s.row() for s in steps]))
    print("\n" + markdown_table(["target", "measured", "result"], target_rows))
    for n in notes:
        print(f"- {n}")
    if args.markdown:
        write_markdown(args.markdown, steps, target_rows, notes, scratch)
    return 0 if ok and touched_ok else 1


def write_markdown(
    path: Path, steps: list[Step], targets: list[list[str]], notes: list[str], scratch: Path
) -> None:
    argv0 = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        argv0 = argv0.relative_to(REPO_DIR)
    cmd = shlex.join([str(argv0), *sys.argv[1:]])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    env = (
        f"nproc {os.cpu_count()}, {platform.system()} {platform.release()},"
        f" python {sys.version.split()[0]}, scratch {scratch.parent} ({fs_type(scratch.parent)})"
    )
    parts = [
        f"\n### Agent scanner ({now})\n",
        f"`{cmd}` — {env}\n",
        markdown_table(HEADERS, [s.row() for s in steps]) + "\n",
        markdown_table(["target", "measured", "result"], targets) + "\n",
        "\n".join(f"- {n}" for n in notes) + "\n",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(parts))
    print(f"appended results to {path}")


if __name__ == "__main__":
    sys.exit(main())
