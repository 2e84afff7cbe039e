"""Benchmark of deduplicated collection, against the target of the
collection issue: collection efficiency = bytes received by the hub ÷ bytes
of unique content = 1.00, on 3 agents x 2,000 files with 50 % overlap.

    .venv/bin/python bench/collect.py [--files 2000] [--overlap 0.5]
        [--min-size 4K] [--max-size 64K] [--timeout 1800] [--markdown FILE] [--keep]

The corpus (under --tmp, default .bench-tmp/ at the repo root, gitignored):
three agents, each with --files files. The overlap is exact: the first
round(files x overlap) files of every agent are the *same* contents on all
three agents (``shared/sNNNNNN.bin``, identical bytes on each), the rest are
contents of that agent alone (``own/uNNNNNN.bin``). With the defaults that
is 1,000 shared + 3 x 1,000 own = 4,000 unique contents in 6,000 files.
Sizes are uniform in [--min-size, --max-size], bytes random (incompressible),
all generated from fixed seeds, so every run has the same corpus.

Run: a real hub (``freight hub``) and three real ``freight agent run``
processes (each enrolled with its own key and root) on 127.0.0.1; the agents
attach first, then one policy (``freight collect add bench --agents
'bench-*'``) starts the collection: the agents scan, offer, and upload what
the hub asks for. Wall time = from the policy to ``collected stats`` showing
every unique content stored and nothing pending (agents' scans and offers
included). Measured:

* ``received_bytes`` of ``collected stats`` (the hub's account: each
  completed upload, rejected ones too);
* the hub's ``freight_bytes_received`` counter (/metrics: stream payload
  bytes written, retransmissions included): the independent measure;
* the number of upload streams the hub opened (its ``stream_start`` log).

Efficiency = bytes received ÷ unique bytes, from both measures; the target
is met when both are 1.00 (exactly: every content crossed once). Then the
store is checked: one file per unique content, each file's BLAKE3 its name.
Exit status 1 if the target is missed or the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from bench import fs_type, markdown_table  # bench/bench.py, beside this script

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # the test helpers: real hub and agent processes

from freight.units import parse_size  # noqa: E402
from tests.collectsupport import (  # noqa: E402
    AgentProc,
    add_policy,
    check_cas,
    enroll_agents,
    hub_events,
    hub_metric,
    stats,
    wait_online,
)
from tests.support import Client, Hub  # noqa: E402

MiB = 1024 * 1024
AGENTS = ["bench-0", "bench-1", "bench-2"]
TARGET = 1.00


@dataclass
class Corpus:
    files: int  # per agent
    shared: int  # of them, the same on every agent
    unique: dict[str, int]  # digest -> size
    on_agents: int  # files on the three agents
    on_agents_bytes: int


def build_corpus(roots: list[Path], files: int, overlap: float, lo: int, hi: int) -> Corpus:
    shared = round(files * overlap)
    rng = random.Random(20261122)
    unique: dict[str, int] = {}
    total = count = 0

    def write(path: Path, data: bytes) -> None:
        nonlocal total, count
        path.write_bytes(data)
        total += len(data)
        count += 1

    for r in roots:
        (r / "shared").mkdir(parents=True)
        (r / "own").mkdir(parents=True)
    for i in range(shared):  # the same bytes on every agent
        data = rng.randbytes(rng.randint(lo, hi))
        unique[blake3.blake3(data).hexdigest()] = len(data)
        for r in roots:
            write(r / "shared" / f"s{i:06d}.bin", data)
    for r in roots:
        for i in range(files - shared):
            data = rng.randbytes(rng.randint(lo, hi))
            unique[blake3.blake3(data).hexdigest()] = len(data)
            write(r / "own" / f"u{i:06d}.bin", data)
    assert len(unique) == shared + len(roots) * (files - shared), "a content repeated by chance"
    return Corpus(files, shared, unique, count, total)


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    hub = Hub(scratch / "hub")
    agents: list[AgentProc] = []
    t_build = time.perf_counter()
    homes = [scratch / n for n in AGENTS]
    corpus = build_corpus([h / "root" for h in homes], args.files, args.overlap, *args.sizes)
    build_s = time.perf_counter() - t_build
    unique_bytes = sum(corpus.unique.values())
    print(
        f"corpus: {corpus.on_agents:,} files ({corpus.on_agents_bytes / MiB:.1f} MiB) on "
        f"{len(AGENTS)} agents, {len(corpus.unique):,} unique ({unique_bytes / MiB:.1f} MiB),"
        f" built in {build_s:.1f} s",
        flush=True,
    )
    hub.start()
    try:
        admin = Client(scratch / "admin", hub)
        admin.login()
        agents = enroll_agents(admin, hub, scratch, AGENTS)
        for a in agents:
            a.start()
        wait_online(admin, agents, timeout=60)
        t0 = time.perf_counter()
        add_policy(admin, "bench", agents="bench-*", every="1h")
        last_print = t0
        while True:
            for a in agents:
                if not a.running:
                    raise RuntimeError(f"agent {a.name} exited:\n{a.log()[-3000:]}")
            s = stats(admin)
            now = time.perf_counter()
            if s["unique_files"] == len(corpus.unique) and s["pending"] == 0:
                break
            if s["failed"]:
                raise RuntimeError(f"collection failed for some content: {s}")
            if now - t0 > args.timeout:
                raise RuntimeError(f"not done after {args.timeout} s: {s}")
            if now - last_print >= 15:
                last_print = now
                rate = s["unique_files"] / (now - t0)
                print(f"  {now - t0:6.0f} s: {json.dumps(s)} ({rate:.1f} files/s)", flush=True)
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        wire = hub_metric(hub, "freight_bytes_received")
        uploads = [e for e in hub_events(hub, "stream_start") if e.get("actor") in AGENTS]
        store = check_cas(hub)  # every stored file hashes to its name
        if set(store) != set(corpus.unique):
            raise RuntimeError(
                f"the store holds {len(store)} contents, {len(set(store) - set(corpus.unique))}"
                f" unexpected, {len(set(corpus.unique) - set(store))} missing"
            )
        rows = json.loads(admin.run("collected", "ls", "--json").stdout)
        holders = sum(len(r["holders"]) for r in rows)
        return {
            "corpus": corpus,
            "build_s": build_s,
            "stats": s,
            "wall": wall,
            "wire": wire,
            "uploads": len(uploads),
            "holders": holders,
            "unique_bytes": unique_bytes,
        }
    finally:
        for a in agents:
            a.kill()
        hub.stop()


def report(args: argparse.Namespace, r: dict[str, Any], scratch: Path) -> tuple[bool, str]:
    c: Corpus = r["corpus"]
    s = r["stats"]
    ub = r["unique_bytes"]
    eff_hub = s["received_bytes"] / ub
    eff_wire = r["wire"] / ub
    met = (
        s["received_bytes"] == ub
        and int(r["wire"]) == ub
        and s["unique_files"] == len(c.unique)
        and r["uploads"] == len(c.unique)
    )
    pct = f"{args.overlap:.0%}"
    target = [
        [
            f"collection efficiency (bytes received by the hub ÷ bytes of unique content)"
            f" = {TARGET:.2f}, {len(AGENTS)} agents x {c.files:,} files, {pct} overlap",
            f"{s['received_bytes']:,} B received (hub), {int(r['wire']):,} B stream payload"
            f" (/metrics) for {ub:,} B unique",
            f"{eff_hub:.4f} / {eff_wire:.4f}",
            "met" if met else "**missed**",
        ]
    ]
    details = [
        ["files on the agents", f"{c.on_agents:,} ({c.on_agents_bytes / MiB:.1f} MiB)"],
        [
            "unique contents",
            f"{len(c.unique):,} ({ub / MiB:.1f} MiB): {c.shared:,} on all three agents"
            f" + 3 x {c.files - c.shared:,} on one",
        ],
        ["stored (collected stats)", f"{s['unique_files']:,} files, {s['unique_bytes']:,} B"],
        ["holders listed (collected ls)", f"{r['holders']:,} (agent, path) pairs"],
        ["upload streams opened by the hub", f"{r['uploads']:,}"],
        ["received_bytes (collected stats)", f"{s['received_bytes']:,} B"],
        ["freight_bytes_received (/metrics)", f"{int(r['wire']):,} B"],
        [
            "bytes on the agents ÷ unique bytes (what a copy of everything would send)",
            f"{c.on_agents_bytes / ub:.2f}",
        ],
        ["wall time (policy added → all stored, scans and offers included)", f"{r['wall']:.1f} s"],
        ["unique files/s", f"{len(c.unique) / r['wall']:.1f}"],
        ["unique MiB/s", f"{ub / MiB / r['wall']:.2f}"],
    ]
    argv0 = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        argv0 = argv0.relative_to(REPO_DIR)
    cmd = shlex.join([".venv/bin/python", str(argv0), *sys.argv[1:]])
    env = (
        f"nproc {os.cpu_count()}, {platform.system()} {platform.release()},"
        f" python {sys.version.split()[0]}, scratch {scratch.parent} ({fs_type(scratch.parent)})"
    )
    notes = [
        "Real hub and three real `freight agent run` processes on 127.0.0.1, one policy;"
        " file sizes uniform in"
        f" [{args.min_size}, {args.max_size}], random bytes, fixed seeds.",
        "Efficiency from the hub's `received_bytes` / from the `freight_bytes_received`"
        " counter; met = both exactly 1 and one upload stream per unique content.",
        "The store was checked: one file per unique content, each file's BLAKE3 equal to its name.",
    ]
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = "\n".join(
        [
            f"\n### Deduplicated collection ({now})\n",
            f"`{cmd}` — {env}\n",
            markdown_table(["target", "measured", "ratio", "verdict"], target) + "\n",
            markdown_table(["measure", "value"], details) + "\n",
            "\n".join(f"- {n}" for n in notes) + "\n",
        ]
    )
    return met, text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=2000, help="files per agent (default 2000)")
    p.add_argument("--overlap", type=float, default=0.5, help="share of each agent's files"
                   " that are the same on all three (default 0.5)")  # fmt: skip
    p.add_argument("--min-size", default="4K")
    p.add_argument("--max-size", default="64K")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait (1800)")
    p.add_argument("--markdown", type=Path, help="append the results to this markdown file")
    p.add_argument("--tmp", type=Path, default=REPO_DIR / ".bench-tmp")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args()
    if args.files < 1 or not 0 <= args.overlap <= 1:
        p.error("--files must be positive and --overlap within 0..1")
    args.sizes = (parse_size(args.min_size), parse_size(args.max_size))
    if not 0 < args.sizes[0] <= args.sizes[1]:
        p.error("need 0 < --min-size <= --max-size")
    args.tmp.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="collect-", dir=args.tmp)).resolve()
    try:
        r = run(args, scratch)
    except (RuntimeError, AssertionError) as exc:
        print(f"bench/collect.py: {exc}", file=sys.stderr)
        print(f"scratch kept: {scratch}", file=sys.stderr)
        return 1
    met, text = report(args, r, scratch)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        with open(args.markdown, "a") as f:
            f.write(text)
        print(f"appended results to {args.markdown}")
    if args.keep:
        print(f"scratch kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
