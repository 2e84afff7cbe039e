"""1,000 idle clients of a two-node cluster, and one node SIGKILLed.

    python bench/cluster_reattach.py [--clients 1000] [--rounds 3] [--markdown FILE]

Starts nodes ``a`` and ``b`` (PostgreSQL database made for the run and
dropped at its end, one data folder), logs in once, and attaches
``--clients`` control channels from this process through the SDK's
session with both nodes' addresses, each channel re-attaching as an
agent's relay client does (``freight.client.backoff``: at once, jittered
over 0.1 s, after an attachment that had held 10 s; then 0.1-1 s,
doubling, full jitter) through whichever node takes it. Each round
SIGKILLs the node holding the most channels, then measures:

* **all back after**: seconds from the SIGKILL until every channel is
  attached again (to the survivor);
* **survivor CPU**: its highest CPU use over any 5 s window while they come
  back (sampled every 0.5 s from /proc);

and starts the killed node again. A second figure compares one idle node
with the clients attached against itself with none (the heartbeat and the
sweep are all the cluster adds to an idle node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

from cluster_failover import Node, logged_in_cluster

from freight.client.backoff import HELD_FOR, Reattach, backoff_delays, reconnect_policy
from freight.client.config import ClientConfig
from freight.client.session import HubSession, open_channel_at

POLICY = reconnect_policy(*backoff_delays())  # the relay client's (client/relay.py)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Idle:
    """One idle client: attached, and attaching again whenever it drops."""

    def __init__(self, session: HubSession) -> None:
        self.session = session
        self.node = ""  # the port of the node it is attached to ("": none)

    async def run(self) -> None:
        held = 0.0  # how long the last attachment was up
        while True:
            waits = Reattach(POLICY, held)  # as RelayClient._run
            while True:
                await asyncio.sleep(
                    waits.next_delay(time.monotonic(), random.random(), random.random())
                )
                try:
                    chan, _, node = await open_channel_at(self.session)
                    break
                except Exception:  # every node refused or is down: wait
                    continue
            self.node, since = str(node.port), time.monotonic()
            try:
                while True:
                    await chan.recv()
            except Exception:  # the channel ended
                self.node = ""
            finally:
                held = time.monotonic() - since
                with contextlib.suppress(Exception):
                    await chan.aclose()


async def attached(clients: list[Idle], want: int, timeout: float) -> float:
    start = time.monotonic()
    while sum(1 for c in clients if c.node) < want:
        if time.monotonic() - start > timeout:
            raise SystemExit(
                f"only {sum(1 for c in clients if c.node)} of {want} attached after {timeout} s"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def cpu_over(pid: int, seconds: float) -> float:
    """Share of a core ``pid`` used over the next ``seconds``."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


async def bench(args: argparse.Namespace, nodes: dict[str, Node], config: Path) -> str:
    cfg = ClientConfig(config)
    sessions = [HubSession.from_config(cfg) for _ in range(args.clients // 50 + 1)]
    clients = [Idle(sessions[i % len(sessions)]) for i in range(args.clients)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    rows = []
    try:
        took = await attached(clients, args.clients, 120)
        print(f"{args.clients} attached in {took:.1f} s", flush=True)
        node_of = {str(n.port): n for n in nodes.values()}
        # The cluster machinery on an idle node: attached vs none.
        busiest = max(node_of, key=lambda p: sum(1 for c in clients if c.node == p))
        pid = node_of[busiest].proc.pid  # type: ignore[union-attr]
        idle_with = await cpu_over(pid, args.idle_seconds)
        count = sum(1 for c in clients if c.node == busiest)
        print(f"node with {count} idle clients: {idle_with * 100:.2f} % of a core", flush=True)
        for r in range(args.rounds):
            busiest = max(node_of, key=lambda p: sum(1 for c in clients if c.node == p))
            victim = node_of[busiest]
            survivor = next(n for n in nodes.values() if n is not victim)
            assert survivor.proc is not None
            on_victim = sum(1 for c in clients if c.node == busiest)
            samples: deque[tuple[float, float]] = deque()
            victim.kill()
            killed = time.monotonic()
            peak = 0.0
            while sum(1 for c in clients if c.node and c.node != busiest) < args.clients:
                samples.append((time.monotonic(), cpu_seconds(survivor.proc.pid)))
                while samples and samples[-1][0] - samples[0][0] > 5.0:
                    samples.popleft()
                if len(samples) > 1 and samples[-1][0] - samples[0][0] >= 2.0:
                    (t0, c0), (t1, c1) = samples[0], samples[-1]
                    peak = max(peak, (c1 - c0) / (t1 - t0))
                if time.monotonic() - killed > 120:
                    raise SystemExit("not all came back within 120 s")
                await asyncio.sleep(0.5)
            back = time.monotonic() - killed
            rows.append((on_victim, back, peak))
            print(
                f"round {r}: {on_victim} clients on the killed node; all {args.clients} "
                f"attached again {back:.1f} s after the SIGKILL; survivor's peak CPU "
                f"{peak * 100:.0f} % (5-s window)",
                flush=True,
            )
            victim.port = int(busiest)
            await asyncio.to_thread(victim.start)
            # Every attachment has held before the next SIGKILL, as in a real
            # outage: their first tries go at once.
            await asyncio.sleep(HELD_FOR + 1)
        idle_without = 0.0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(args.idle_seconds / 2)
        quiet = next(iter(nodes.values())).proc
        assert quiet is not None
        idle_without = await cpu_over(quiet.pid, args.idle_seconds)
        return (
            f"| measure | figure |\n| --- | --- |\n"
            f"| clients attached at the start | {args.clients} in {took:.1f} s |\n"
            + "".join(
                f"| round {i}: SIGKILL of the node holding {n}; all back after | {b:.1f} s "
                f"(survivor's peak CPU {p * 100:.0f} % of a core over 5 s) |\n"
                for i, (n, b, p) in enumerate(rows)
            )
            + f"| median time until all are back | "
            f"{statistics.median(b for _, b, _ in rows):.1f} s |\n"
            f"| idle node, {count} clients attached ({args.idle_seconds:.0f} s) | "
            f"{idle_with * 100:.2f} % of a core |\n"
            f"| idle node, no client ({args.idle_seconds:.0f} s) | "
            f"{idle_without * 100:.2f} % of a core |\n"
        )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in sessions:
            await s.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    extra = ["--account-connections", "100000", "--max-connections-per-address", "100000"]
    with logged_in_cluster(2, "reattach", extra) as (nodes, _, t):
        table = asyncio.run(bench(args, nodes, t / "client"))
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
