"""Failover of pushes between hub nodes: SIGKILL the node receiving most.

    python bench/cluster_failover.py [--nodes 2] [--pushes 1] [--rounds 5]
                                     [--size-mib 256] [--markdown FILE]

Starts ``--nodes`` nodes on loopback with the default heartbeat (3 s) and
checkpoint interval (8 MiB), sharing a fresh PostgreSQL database (dropped
at the end) and a data folder; logs a client in with every address. Each
round starts ``--pushes`` pushes of one random file at ``--limit`` each (so
that they are under way when the node dies), SIGKILLs the node receiving
the most once ``--kill-at`` of them arrived, and measures:

* **resumed after**: seconds from the SIGKILL until the other nodes log the
  ``stream_resume`` of every push the dead node had (the clients noticed,
  the dead node's leases lapsed, their retries reached another node);
* **sent again**: for each push, what had arrived at the dead node past its
  last durable checkpoint (another node resumes from that checkpoint), plus
  what was in flight in the sockets at the kill (not seen here);
* that every push ended verified (its digest checked end to end) and is
  stored with its size.

The killed node is started again (same name) before the next round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20
PASSWORD = "failover bench password"
PG = os.environ.get("FREIGHT_BENCH_PG", "postgres@127.0.0.1:5432")


async def _pg(sql: str) -> None:
    import asyncpg

    user, _, hostport = PG.partition("@")
    host, _, port = hostport.partition(":")
    conn = await asyncpg.connect(host=host, port=int(port), user=user, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Node:
    def __init__(self, name: str, data: Path, db: str, extra: list[str] | None = None) -> None:
        self.name = name
        self.data = data
        self.db = db
        self.extra = extra or []
        self.port = 0
        self.url = ""
        self.fingerprint = ""
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "freight", "hub", "--data", str(self.data)]
        cmd += [
            "--listen",
            f"127.0.0.1:{self.port}",
            "--node",
            self.name,
            "--database-url",
            self.db,
            *self.extra,
        ]
        env = {**os.environ, "FREIGHT_ADMIN_PASSWORD": PASSWORD}
        self.proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if m := re.search(r"listening on https://127\.0\.0\.1:(\d+)", line):
                    self.port = int(m.group(1))
                    self.url = f"https://127.0.0.1:{self.port}"
                if m := re.search(r"fingerprint: (SHA256:[0-9a-f]+)", line):
                    self.fingerprint = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.fingerprint:
            raise SystemExit(f"node {self.name} did not start:\n{''.join(self.lines)[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def events(self, kind: str, since: int = 0) -> list[dict[str, object]]:
        out = []
        for line in self.lines[since:]:
            if line.startswith("{") and f'"{kind}"' in line:
                ev = json.loads(line)
                if ev.get("event") == kind:
                    out.append(ev)
        return out


def freight(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "freight", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode:
        raise SystemExit(f"freight {' '.join(args)}: exit {res.returncode}\n{res.stderr}")
    return res.stdout


@contextlib.contextmanager
def logged_in_cluster(
    count: int, prefix: str, extra: list[str] | None = None
) -> Iterator[tuple[dict[str, Node], dict[str, str], Path]]:
    """``count`` nodes on a database made for the run and a client logged in
    with every address: (nodes by name, the client's environment, a scratch
    folder). Nodes stopped and the database dropped at the end."""
    name = f"freight_{prefix}_" + secrets.token_hex(4)
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    db = f"postgresql+asyncpg://{PG}/{name}"
    nodes: dict[str, Node] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=f"freight-{prefix}-") as tmp:
            t = Path(tmp)
            for n in "abcdefgh"[:count]:
                nodes[n] = Node(n, t / "shared", db, extra)
                nodes[n].start()
            env = {**os.environ, "FREIGHT_CONFIG_DIR": str(t / "client")}
            urls = ",".join(node.url for node in nodes.values())
            freight(env, "login", urls, "--user", "admin", "--password-stdin",
                    "--fingerprint", nodes["a"].fingerprint, stdin=PASSWORD + "\n")  # fmt: skip
            yield nodes, env, t
    finally:
        for node in nodes.values():
            node.stop()
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def partials(data: Path) -> dict[str, int]:
    """Each push under way (by stream id) and the bytes of it arrived."""
    return {p.stem: p.stat().st_size for p in (data / "partial").glob("*/*.part")}


def one_round(
    i: int, nodes: dict[str, Node], env: dict[str, str], src: Path, args: argparse.Namespace
) -> dict[str, float]:
    size = src.stat().st_size
    marks = {n: len(node.lines) for n, node in nodes.items()}
    data = next(iter(nodes.values())).data
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freight",
                "push",
                str(src),
                "--as",
                f"r{i}-{k}.bin",
                "--limit",
                args.limit,
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(args.pushes)
    ]
    deadline = time.monotonic() + 120

    def receiving() -> dict[str, int]:
        return {n: len(node.events("stream_start", marks[n])) for n, node in nodes.items()}

    while sum(receiving().values()) < args.pushes or (
        sum(partials(data).values()) < size * args.pushes * args.kill_at
    ):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise SystemExit(f"round {i}: the pushes did not get under way")
        time.sleep(0.01)
    counts = receiving()
    victim = max(counts, key=lambda n: counts[n])  # the node receiving the most
    at_kill = partials(data)
    nodes[victim].kill()
    killed = time.monotonic()
    on_victim = counts[victim]
    resumed_at: list[float] = []
    while len(resumed_at) < on_victim and time.monotonic() - killed < 120:
        seen = sum(
            len(node.events("stream_resume", marks[n])) for n, node in nodes.items() if n != victim
        )
        resumed_at += [time.monotonic() - killed] * (seen - len(resumed_at))
        time.sleep(0.01)
    failed = 0
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode or not json.loads(out)["pushed"][0]["digest"]:
            failed += 1
            print(f"round {i}: a push failed: {err[-500:]}", file=sys.stderr)
    resumes = [
        e
        for n, node in nodes.items()
        if n != victim
        for e in node.events("stream_resume", marks[n])
    ]
    again = [at_kill.get(str(e["sid"]), 0) - int(str(e["checkpoint"])) for e in resumes]
    listing = json.loads(freight(env, "ls", "--json"))
    names = {f"r{i}-{k}.bin" for k in range(args.pushes)}
    stored = [f for f in listing if f["name"] in names and f["size"] == size]
    for name in names:
        freight(env, "rm", name)
    nodes[victim].start()  # same name, same port: back for the next round
    return {
        "on_victim": float(on_victim),
        "resumed_last": max(resumed_at) if resumed_at else float("nan"),
        "resumed_first": min(resumed_at) if resumed_at else float("nan"),
        "resent_max": float(max(again)) if again else float("nan"),
        "verified": float(args.pushes - failed if len(stored) == args.pushes else 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--pushes", type=int, default=1, help="pushes under way at each kill")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--limit", default="64M", help="the push's rate (so it is under way)")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction arrived at the kill")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    with logged_in_cluster(args.nodes, "failover") as (nodes, env, t):
        src = t / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        rows = []
        for i in range(args.rounds):
            row = one_round(i, nodes, env, src, args)
            rows.append(row)
            print(
                f"round {i}: {row['on_victim']:.0f} pushes on the killed node, resumed on "
                f"the others {row['resumed_first']:.2f}-{row['resumed_last']:.2f} s after "
                f"the SIGKILL; most sent again for one push "
                f"{row['resent_max'] / MiB:.2f} MiB; {row['verified']:.0f} of "
                f"{args.pushes} verified",
                flush=True,
            )
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        worst = {k: max(r[k] for r in rows) for k in rows[0]}
        table = (
            f"{args.nodes} nodes, {args.pushes} pushes of {args.size_mib} MiB under way "
            f"at each SIGKILL, {args.rounds} rounds\n\n"
            "| measure | median | worst |\n| --- | --- | --- |\n"
            f"| pushes on the killed node | {med['on_victim']:.0f} | {worst['on_victim']:.0f} |\n"
            f"| last of them resumed on another node, after the SIGKILL | "
            f"{med['resumed_last']:.2f} s | {worst['resumed_last']:.2f} s |\n"
            f"| sent again by one push (arrived past its checkpoint at the kill) | "
            f"{med['resent_max'] / MiB:.2f} MiB | {worst['resent_max'] / MiB:.2f} MiB |\n"
            f"| pushes verified and stored | "
            f"{sum(r['verified'] for r in rows):.0f} of {args.pushes * len(rows)} | |\n"
        )
        print(table)
        if args.markdown:
            args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
