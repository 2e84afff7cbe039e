"""Relay throughput between ends attached to different nodes of a cluster.

    python bench/cluster_relay.py [--size-mib 1024] [--rounds 3] [--markdown FILE]

Two nodes on loopback share a fresh PostgreSQL database (dropped at the
end). alice knows node a alone; bob has two logins, one that knows node a
alone and one that knows node b alone. Each round times ``freight receive``
(from its start until it exits, the file verified end to end) of one
``freight send`` of a random file, twice, in alternating order:

* **same node**: bob on a, where alice's offer is;
* **cross node**: bob on b, which sends his claim to a (``elsewhere``), so
  his client attaches to a and the two ends meet there.

The ratio is cross-node over same-node throughput, per round and as the
median over rounds.

Then ``--failover-rounds`` times, alice and a third client of bob's, both
logged in with both addresses, start one more transfer at ``--limit``; once
40 % arrived the node its ends met on is SIGKILLed, and the bench measures
how much longer than the limit's rate allows the next 16 MiB take to
arrive (the time the failover added), and that the file arrives whole. The node is started again
before the next round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cluster_failover import PASSWORD, Node, freight, logged_in_cluster

from freight.units import parse_rate

MiB = 1024 * 1024
AFTER = 16 * MiB  # received past the kill that shows the transfer resumed
BOB = "bob bench password"


def login(
    folder: Path, url: str, fingerprint: str, user: str, password: str, *, keep_nodes: bool = False
) -> dict[str, str]:
    """A client folder logged in to the node at ``url``, which knows that
    node alone (any move to the other is the hub's doing) unless
    ``keep_nodes``."""
    env = {**os.environ, "FREIGHT_CONFIG_DIR": str(folder)}
    freight(env, "login", url, "--user", user, "--password-stdin",
            "--fingerprint", fingerprint, stdin=password + "\n")  # fmt: skip
    if keep_nodes:
        return env
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    hub = cfg["hub"]
    cfg["hubs"][hub].pop("nodes", None)
    path.write_text(json.dumps(cfg))
    return env


def one_transfer(alice: dict[str, str], bob: dict[str, str], src: Path, out: Path) -> float:
    """Seconds from starting ``freight receive`` until it exited."""
    sender = subprocess.Popen(
        [sys.executable, "-m", "freight", "send", str(src), "--json"],
        env=alice,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sender.stdout is not None
        code = json.loads(sender.stdout.readline())["code"]
        started = time.perf_counter()
        freight(bob, "receive", code, "-o", str(out), "--json")
        took = time.perf_counter() - started
        sender.wait(60)
    finally:
        if sender.poll() is None:
            sender.kill()
    got = out / src.name
    if got.stat().st_size != src.stat().st_size:
        raise SystemExit(f"received {got.stat().st_size} bytes, not {src.stat().st_size}")
    shutil.rmtree(out)
    return took


def received(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def failover_round(
    nodes: dict[str, Node], alice: dict[str, str], bob: dict[str, str], src: Path, out: Path,
    limit: str,
) -> float:  # fmt: skip
    """Seconds the SIGKILL of its node added to the transfer."""
    opened = {n: len(node.events("connection_open")) for n, node in nodes.items()}
    sender = subprocess.Popen(
        [sys.executable, "-m", "freight", "send", str(src), "--json", "--limit", limit],
        env=alice, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    receiver = None
    try:
        assert sender.stdout is not None
        code = json.loads(sender.stdout.readline())["code"]
        receiver = subprocess.Popen(
            [sys.executable, "-m", "freight", "receive", code, "-o", str(out), "--json"],
            env=bob, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while received(out) < 0.4 * src.stat().st_size:
            if time.monotonic() > deadline:
                raise SystemExit("the transfer did not get under way")
            time.sleep(0.05)
        (meeting,) = [
            n for n, node in nodes.items() if len(node.events("connection_open")) > opened[n]
        ]
        at_kill = received(out)
        nodes[meeting].kill()
        killed = time.monotonic()
        while received(out) < at_kill + AFTER:
            if time.monotonic() - killed > 120:
                raise SystemExit("the transfer did not resume within 120 s")
            time.sleep(0.02)
        # What was in flight at the kill lands at once; the rest comes at the
        # limit's rate: any time beyond that is the failover's.
        still = time.monotonic() - killed - AFTER / parse_rate(limit)
        _, err = receiver.communicate(timeout=300)
        if receiver.returncode:
            raise SystemExit(f"receive failed after the SIGKILL of {meeting}: {err}")
        sender.wait(60)
        nodes[meeting].start()
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
    if (out / src.name).stat().st_size != src.stat().st_size:
        raise SystemExit("the file arrived short")
    shutil.rmtree(out)
    return still


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--failover-rounds", type=int, default=3)
    ap.add_argument("--failover-mib", type=int, default=128)
    ap.add_argument("--limit", default="32M", help="the failover transfer's rate")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    with logged_in_cluster(2, "xrelay") as (nodes, admin, t):
        freight(admin, "users", "add", "bob", "--password-stdin", stdin=BOB + "\n")
        a, b = nodes["a"], nodes["b"]
        alice = login(t / "alice", a.url, a.fingerprint, "admin", PASSWORD)
        bob = {
            "same": login(t / "bob-a", a.url, a.fingerprint, "bob", BOB),
            "cross": login(t / "bob-b", b.url, b.fingerprint, "bob", BOB),
        }
        src = t / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        size = args.size_mib * MiB
        rows = []
        for i in range(args.rounds):
            order = ("same", "cross") if i % 2 == 0 else ("cross", "same")
            took = {mode: one_transfer(alice, bob[mode], src, t / f"in-{mode}") for mode in order}
            rate = {mode: size / took[mode] / MiB for mode in took}
            rows.append(rate)
            print(
                f"round {i}: same node {rate['same']:.0f} MiB/s, cross node "
                f"{rate['cross']:.0f} MiB/s, ratio {rate['cross'] / rate['same']:.2f}",
                flush=True,
            )
        same = statistics.median(r["same"] for r in rows)
        cross = statistics.median(r["cross"] for r in rows)
        ratio = statistics.median(r["cross"] / r["same"] for r in rows)
        table = (
            f"2 nodes, `freight send` / `freight receive` of {args.size_mib} MiB, "
            f"{args.rounds} rounds, same and cross alternating\n\n"
            "| ends | median throughput |\n| --- | --- |\n"
            f"| same node | {same:.0f} MiB/s |\n"
            f"| different nodes (the receiver sent to the sender's) | {cross:.0f} MiB/s |\n"
            f"| ratio, median of the rounds' | {ratio:.2f} |\n"
        )
        stills = []
        if args.failover_rounds:
            both = ",".join(node.url for node in nodes.values())
            every = login(t / "bob-all", both, a.fingerprint, "bob", BOB, keep_nodes=True)
            alice_all = login(
                t / "alice-all", both, a.fingerprint, "admin", PASSWORD, keep_nodes=True
            )
            small = t / "failover.bin"
            with open(small, "wb") as f:
                for _ in range(args.failover_mib):
                    f.write(os.urandom(MiB))
        for i in range(args.failover_rounds):
            stills.append(
                failover_round(nodes, alice_all, every, small, t / "in-failover", args.limit)
            )
            print(f"failover {i}: the SIGKILL added {stills[-1]:.2f} s", flush=True)
        if stills:
            table += (
                f"\nSIGKILL of the node a {args.failover_mib} MiB transfer at {args.limit}B/s "
                f"met on, once 40 % had arrived ({len(stills)} rounds): the SIGKILL added "
                f"{statistics.median(stills):.2f} s (median) to the transfer, "
                f"{max(stills):.2f} s at worst; every file arrived whole\n"
            )
        print(table)
        if args.markdown:
            args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
