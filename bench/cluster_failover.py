"""Failover of a push between two hub nodes: SIGKILL the node receiving it.

    python bench/cluster_failover.py [--rounds 5] [--size-mib 256] [--markdown FILE]

Starts two nodes (``a``, ``b``) on loopback with the default heartbeat (3 s)
and checkpoint interval (8 MiB), sharing a fresh PostgreSQL database
(dropped at the end) and a data folder; logs a client in with both
addresses. Each round pushes a random file at ``--limit`` (so that it is
under way when the node dies), SIGKILLs whichever node receives it once
``--kill-at`` of it arrived, and measures:

* **resumed after**: seconds from the SIGKILL until the other node logs
  the push's ``stream_resume`` (the client noticed, the dead node's lease
  lapsed, the client's retry reached the other node);
* **sent again**: what had arrived at the dead node past its last durable
  checkpoint (the survivor resumes from that checkpoint), plus what was in
  flight in the sockets at the kill (not seen here: a few MiB at most);
* whether the digest verified, and that the pulled copy is identical.

The killed node is started again (same name) before the next round.
"""

from __future__ import annotations

import argparse
import asyncio
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


def partial_size(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "partial").glob("*/*.part"))


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


def one_round(
    i: int, nodes: dict[str, Node], env: dict[str, str], src: Path, args: argparse.Namespace
) -> dict[str, float]:
    size = src.stat().st_size
    marks = {n: len(node.lines) for n, node in nodes.items()}
    data = next(iter(nodes.values())).data
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freight",
            "push",
            str(src),
            "--as",
            f"round-{i}.bin",
            "--limit",
            args.limit,
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    victim = None
    while victim is None or partial_size(data) < size * args.kill_at:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"round {i}: the push did not get under way")
        if victim is None:
            started = [n for n, node in nodes.items() if node.events("stream_start", marks[n])]
            victim = started[0] if started else None
        time.sleep(0.005)
    survivor = next(n for n in nodes if n != victim)
    at_kill = partial_size(data)
    nodes[victim].kill()
    killed = time.monotonic()
    resumed = None
    while resumed is None:
        if nodes[survivor].events("stream_resume", marks[survivor]):
            resumed = time.monotonic() - killed
        elif time.monotonic() - killed > 120 or proc.poll() is not None:
            break
        else:
            time.sleep(0.005)
    out, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise SystemExit(f"round {i}: push failed: {err}")
    checkpoint = nodes[survivor].events("stream_resume", marks[survivor])[0]["checkpoint"]
    back = src.with_name(f"back-{i}.bin")
    freight(env, "pull", f"round-{i}.bin", str(back))
    same = back.read_bytes() == src.read_bytes()
    back.unlink()
    freight(env, "rm", f"round-{i}.bin")
    nodes[victim].start()  # same name, same port: back for the next round
    return {
        "resumed_after": resumed if resumed is not None else float("nan"),
        "resent": at_kill - int(checkpoint),  # arrived, not yet durable: sent again
        "verified": float(bool(json.loads(out)["pushed"][0]["digest"]) and same),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--limit", default="64M", help="the push's rate (so it is under way)")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction arrived at the kill")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    name = "freight_failover_" + secrets.token_hex(4)
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    db = f"postgresql+asyncpg://{PG}/{name}"
    nodes: dict[str, Node] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="freight-failover-") as tmp:
            t = Path(tmp)
            for n in ("a", "b"):
                nodes[n] = Node(n, t / "shared", db)
                nodes[n].start()
            env = {**os.environ, "FREIGHT_CONFIG_DIR": str(t / "client")}
            urls = ",".join(node.url for node in nodes.values())
            fp = nodes["a"].fingerprint
            freight(env, "login", urls, "--user", "admin", "--password-stdin",
                    "--fingerprint", fp, stdin=PASSWORD + "\n")  # fmt: skip
            src = t / "src.bin"
            with open(src, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MiB))
            rows = []
            for i in range(args.rounds):
                row = one_round(i, nodes, env, src, args)
                rows.append(row)
                print(
                    f"round {i}: resumed {row['resumed_after']:.2f} s after the SIGKILL, "
                    f"arrived past the checkpoint at the kill (sent again): "
                    f"{row['resent'] / MiB:.2f} MiB, verified {bool(row['verified'])}",
                    flush=True,
                )
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            worst = {k: max(r[k] for r in rows) for k in rows[0]}
            table = (
                "| measure | median | worst |\n| --- | --- | --- |\n"
                f"| resumed on the other node after the SIGKILL | {med['resumed_after']:.2f} s "
                f"| {worst['resumed_after']:.2f} s |\n"
                f"| arrived past the checkpoint at the kill (sent again) | "
                f"{med['resent'] / MiB:.2f} MiB "
                f"| {worst['resent'] / MiB:.2f} MiB |\n"
                f"| verified and identical | {sum(r['verified'] for r in rows):.0f} of "
                f"{len(rows)} | |\n"
            )
            print(table)
            if args.markdown:
                args.markdown.write_text(table)
    finally:
        for node in nodes.values():
            node.stop()
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
