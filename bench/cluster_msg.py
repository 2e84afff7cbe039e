"""Messaging through the SIGKILL of a cluster's messaging node.

    python bench/cluster_msg.py [--nodes 3] [--streams 100] [--per 30] [--rounds 3]
                                [--markdown FILE]

Starts ``--nodes`` nodes on loopback with the default heartbeat (3 s),
sharing a fresh PostgreSQL database (dropped at the end). Two messaging
hosts of two accounts (the SDK's MessageHost, in this process), each
logged in with every address: bob's takes application ``bench``; the
admin's runs ``--streams`` streams, each sending ``--per`` messages one
after another (each waits for its answer). Once 30 % were delivered the
node the hosts are on (the messaging node) is SIGKILLed; the bench
measures, for every round:

* **lost**: messages whose send did not end with one delivery, or that
  bob's host never got;
* **duplicates**: messages bob's host got more than once;
* **pause**: the longest time without a delivery (the failover);
* the node that took messaging over.

The killed node is started again before the next round.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from cluster_failover import Node, freight, logged_in_cluster

from freight.client.config import ClientConfig
from freight.client.msghost import MessageHost
from freight.client.relay import RelayClient
from freight.client.session import HubSession

BOB = "bob bench password"
APP = "bench"


class Host:
    def __init__(self, folder: Path) -> None:
        self.config = ClientConfig(folder)
        self.relay = RelayClient(HubSession.from_config(self.config), self.config)
        self.host = MessageHost(self.relay, self.config)

    async def start(self) -> None:
        await asyncio.wait_for(self.relay.start(), 60)
        await asyncio.wait_for(self.host.start(), 60)

    async def aclose(self) -> None:
        await self.host.aclose()
        await self.relay.aclose()


async def one_round(
    i: int, nodes: dict[str, Node], sender: Host, receiver: Host, args: argparse.Namespace
) -> dict[str, float]:
    reg = receiver.host.register(APP, 0xFF)
    await asyncio.wait_for(receiver.host.announced(), 60)
    got: Counter[bytes] = Counter()
    times: list[float] = []
    total = args.streams * args.per

    async def take() -> None:
        while True:
            d = await reg.get()
            reg.taken(d)
            got[d.body] += 1
            times.append(time.monotonic())

    async def stream(s: int) -> int:
        ok = 0
        for k in range(args.per):
            res = await sender.host.send("bob", APP, 0x1, b"%d %d %d" % (i, s, k), timeout=120)
            ok += res.count == 1
        return ok

    taker = asyncio.create_task(take())
    started = time.monotonic()
    streams = [asyncio.create_task(stream(s)) for s in range(args.streams)]
    try:
        while len(times) < 0.3 * total:
            await asyncio.sleep(0.01)
        url = str(sender.relay.session.url).rstrip("/")
        (home,) = [n for n, node in nodes.items() if node.url == url]
        killed = time.monotonic()
        await asyncio.to_thread(nodes[home].kill)
        answered = sum(await asyncio.wait_for(asyncio.gather(*streams), 300))
        while len(got) < total and time.monotonic() - killed < 60:
            await asyncio.sleep(0.05)
    finally:
        taker.cancel()
        for t in streams:
            t.cancel()
        receiver.host.unregister(reg.ticket)
    after = str(sender.relay.session.url).rstrip("/")
    took = next((n for n, node in nodes.items() if node.url == after), "?")
    gaps = [b - a for a, b in itertools.pairwise(times) if b > killed]
    row = {
        "lost": float(total - len(got) + (total - answered)),
        "duplicates": float(sum(c - 1 for c in got.values())),
        "pause": max(gaps, default=0.0),
        "seconds": time.monotonic() - started,
    }
    print(
        f"round {i}: killed {home}, messaging on {took} after; {total} messages in "
        f"{row['seconds']:.1f} s, lost {row['lost']:.0f}, duplicates {row['duplicates']:.0f}, "
        f"longest pause {row['pause']:.2f} s",
        flush=True,
    )
    await asyncio.to_thread(nodes[home].start)
    return row


async def run(nodes: dict[str, Node], t: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    sender, receiver = Host(t / "client"), Host(t / "bob")
    await sender.start()
    await receiver.start()
    try:
        return [await one_round(i, nodes, sender, receiver, args) for i in range(args.rounds)]
    finally:
        await sender.aclose()
        await receiver.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--per", type=int, default=30, help="messages per stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    with logged_in_cluster(args.nodes, "msg") as (nodes, admin, t):
        freight(admin, "users", "add", "bob", "--password-stdin", stdin=BOB + "\n")
        urls = ",".join(node.url for node in nodes.values())
        bob = {**admin, "FREIGHT_CONFIG_DIR": str(t / "bob")}
        freight(bob, "login", urls, "--user", "bob", "--password-stdin",
                "--fingerprint", nodes["a"].fingerprint, stdin=BOB + "\n")  # fmt: skip
        rows = asyncio.run(run(nodes, t, args))
    total = args.streams * args.per
    table = (
        f"{args.nodes} nodes, {args.streams} message streams of {args.per} messages each "
        f"(one at a time per stream), SIGKILL of the messaging node once 30 % were "
        f"delivered, {args.rounds} rounds\n\n"
        "| measure | median | worst |\n| --- | --- | --- |\n"
        f"| messages lost (of {total}) | {statistics.median(r['lost'] for r in rows):.0f} | "
        f"{max(r['lost'] for r in rows):.0f} |\n"
        f"| duplicates delivered | {statistics.median(r['duplicates'] for r in rows):.0f} | "
        f"{max(r['duplicates'] for r in rows):.0f} |\n"
        f"| longest pause in deliveries after the SIGKILL | "
        f"{statistics.median(r['pause'] for r in rows):.2f} s | "
        f"{max(r['pause'] for r in rows):.2f} s |\n"
    )
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
