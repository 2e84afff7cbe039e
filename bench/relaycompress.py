"""Relayed compression: `freight cp -r --compress fast AGENT:/logs DEST/` against
`rsync -az` over ssh, for a tree of compressible text, on loopback.

    .venv/bin/python bench/relaycompress.py [--size 256M] [--files 64] [--rounds 3]
                                            [--markdown FILE]
    (or: make bench-relaycompress BENCH_RELAYCOMPRESS_ARGS="--rounds 5")

The tree: --files text files adding up to --size, log lines with varying
numbers, words and identifiers (zstd level 1 makes them about 4-6x smaller;
the exact ratio is printed). Four copies, alternating in every round (every
other round in reverse order), each into a fresh folder and checked (file
count, bytes, a BLAKE3 over every path and content) and then deleted:

  freight fast   `freight cp -r --compress fast bench-agent:/…/logs DEST/` as
                 the admin, from a real agent (`freight agent enroll` / `agent
                 run`) attached to a hub on 127.0.0.1 (the relay, end-to-end
                 sealed, the lane of each end);
  rsync -az      `rsync -az -e ssh USER@127.0.0.1:/…/logs DEST/` through a
                 private sshd (bench/peers.py SshPeer, OpenSSH's default cipher);
  freight none   the same cp without compression, for reference;
  rsync -a       the same rsync without -z, for reference.

Time is the wall clock of the client command (hub, agent and sshd already
running); CPU is the client plus the server side (hub + agent, or sshd) from
/proc. The source is read before every copy (page cache warm for all).
Target: freight fast >= 1.5x rsync -az (ratio of medians). Exit status 1 if
a copy fails or the target is missed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import peers
import zstandard
from agents import AGENT, TreeAgent, _timed, tree_digest
from peers import FREIGHT, PeerError

from bench import human, markdown_table, parse_size

DEFAULT_TMP = peers.REPO_DIR / ".bench-tmp" / "relaycompress"  # gitignored
TARGET = 1.5
WORDS = [
    "relay",
    "moved",
    "bytes",
    "for",
    "job",
    "agent",
    "hub",
    "stream",
    "checkpoint",
    "resumed",
    "window",
    "credit",
    "lane",
    "sealed",
    "record",
    "acknowledged",
    "compressed",
    "level",
    "fast",
    "none",
    "max",
    "budget",
    "share",
    "paused",
    "resumed",
    "accepted",
    "listener",
    "claim",
    "offer",
    "nameplate",
    "rejoin",
    "linked",
    "hangup",
    "closed",
]
LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")


def log(msg: str) -> None:
    print(f"[relaycompress] {msg}", file=sys.stderr, flush=True)


def make_text_tree(base: Path, total: int, files: int) -> Path:
    """``base/logs/app-NNN.log``: log lines, kept between runs."""
    tree = base / "logs"
    marker = base / ".complete"
    want = f"{total} {files}\n"
    if marker.exists() and marker.read_text() == want:
        return tree
    shutil.rmtree(base, ignore_errors=True)
    tree.mkdir(parents=True)
    rng = random.Random(20261204)
    per_file = total // files
    log(f"writing {files} text files of {human(per_file)} under {tree}")
    for i in range(files):
        lines: list[str] = []
        size = 0
        t = 1_764_800_000 + i * 3600
        while size < per_file:
            t += rng.randint(0, 3)
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            line = (
                f"2026-12-04T{(t // 3600) % 24:02d}:{(t // 60) % 60:02d}:{t % 60:02d}."
                f"{rng.randint(0, 999):03d}Z {rng.choice(LEVELS):5} pid={rng.randint(100, 40000)} "
                f"conn={rng.getrandbits(48):012x} {words} n={rng.randint(0, 1 << 30)}\n"
            )
            lines.append(line)
            size += len(line)
        (tree / f"app-{i:03d}.log").write_text("".join(lines)[:per_file])
    marker.write_text(want)
    return tree


def zstd_ratio(tree: Path) -> float:
    sample = next(tree.iterdir()).read_bytes()[: 8 << 20]
    return len(sample) / len(zstandard.ZstdCompressor(level=1).compress(sample))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="256M", help="total bytes of text (default 256M)")
    ap.add_argument("--files", type=int, default=64, help="how many files (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tmp", type=Path, default=DEFAULT_TMP)
    ap.add_argument("--markdown", type=Path, help="append the results here")
    args = ap.parse_args(argv)
    total = parse_size(args.size)
    args.tmp.mkdir(parents=True, exist_ok=True)
    src = make_text_tree(args.tmp / f"text-{total}x{args.files}", total, args.files)
    want = tree_digest(src)
    ratio = zstd_ratio(src)
    log(f"source: {want[0]} files, {human(want[1])}, zstd -1 ratio {ratio:.1f}x")
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.tmp))
    agent = ssh = None
    tools = ["freight fast", "rsync -az", "freight none", "rsync -a"]
    times: dict[str, list[float]] = {t: [] for t in tools}
    cpus: dict[str, list[float]] = {t: [] for t in tools}
    failed = False
    try:
        agent = TreeAgent(work, src.parent).start()
        ssh = peers.SshPeer(work).start()
        ssh_cmd = " ".join(["ssh", "-p", str(ssh.port), *ssh.ssh_opts()])
        assert ssh.proc is not None
        for rnd in range(args.rounds):
            order = tools if rnd % 2 == 0 else list(reversed(tools))
            for tool in order:
                tree_digest(src)  # warm the page cache for everyone alike
                dest = work / f"dest-{rnd}-{tool.replace(' ', '_')}"
                dest.mkdir()
                if tool.startswith("freight"):
                    level = tool.split()[1]
                    cmd = [str(FREIGHT), "cp", "-r", "--compress", level, "--quiet"]
                    cmd += [f"{AGENT}:{src}", str(dest) + "/"]
                    secs, cpu, _ = _timed(cmd, agent.pids, env=peers._freight_env(agent.hub.cfg))
                else:
                    flags = "-az" if tool == "rsync -az" else "-a"
                    cmd = ["rsync", flags, "-e", ssh_cmd, ssh.remote(src), str(dest) + "/"]
                    secs, cpu, _ = _timed(cmd, [ssh.proc.pid], forking=True)
                got = tree_digest(dest / "logs")
                shutil.rmtree(dest)
                if got != want:
                    raise PeerError(f"{tool}: the copy differs from the source: {got} vs {want}")
                times[tool].append(secs)
                cpus[tool].append(cpu)
                log(f"round {rnd + 1} {tool}: {secs:.2f} s ({want[1] / secs / 1e6:.0f} MB/s)")
    except (PeerError, OSError) as exc:
        log(f"failed: {exc}")
        failed = True
    finally:
        if agent is not None:
            agent.stop()
        if ssh is not None:
            ssh.stop()
        shutil.rmtree(work, ignore_errors=True)
    if failed or not all(times.values()):
        return 1
    med = {t: statistics.median(v) for t, v in times.items()}
    rows = [
        [
            t,
            f"{med[t]:.2f}",
            f"{min(times[t]):.2f}-{max(times[t]):.2f}",
            f"{want[1] / med[t] / 1e6:.0f}",
            f"{statistics.median(cpus[t]):.1f}",
        ]
        for t in tools
    ]
    speedup = med["rsync -az"] / med["freight fast"]
    met = speedup >= TARGET
    command = "python bench/relaycompress.py " + " ".join(argv or sys.argv[1:])
    text = "\n".join(
        [
            f"### Relayed compression: cp -r from an agent, {want[0]} text files, "
            f"{human(want[1])} (zstd -1 ratio {ratio:.1f}x), {args.rounds} rounds",
            "",
            markdown_table(["copy", "seconds (median)", "range", "MB/s", "CPU s"], rows),
            "",
            f"- freight cp --compress fast vs rsync -az: **{speedup:.2f}x** "
            f"(target >= {TARGET}x: {'met' if met else 'MISSED'})",
            f"- command: `{command.strip()}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
        ]
    )
    print("\n" + text, flush=True)
    if args.markdown is not None:
        with args.markdown.open("a") as f:
            f.write(text + "\n")
    (args.tmp / "last.json").write_text(
        json.dumps({"times": times, "cpus": cpus, "speedup": speedup}, indent=1) + "\n"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
