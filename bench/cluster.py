"""Start a cluster of hub nodes on this machine: ``make cluster``.

Every node shares one PostgreSQL database (created when missing) and one
data folder (the certificate, stored and partial files), and listens on a
port of its own; the first is started alone so that it creates the
certificate, the schema and the admin account. Their logs go to standard
error, each line prefixed with its node's name. Ctrl-C (or SIGTERM) stops
them all. docs/cluster.md explains what the nodes share and how to use them.

    python bench/cluster.py [--nodes 3] [--first-port 8443] [--data DIR]
                            [--database-url URL] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/freight_cluster"
START_TIMEOUT = 60.0  # seconds a node may take to listen


async def ensure_database(url: str) -> None:
    """Create the database ``url`` names if the server does not have it."""
    import asyncpg

    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", name):
        raise SystemExit(f"cluster: database name {name!r}: letters, digits and _ only")
    conn = await asyncpg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        database="postgres",
    )
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"cluster: created database {name}", file=sys.stderr, flush=True)
    finally:
        await conn.close()


class Node:
    def __init__(self, name: str, cmd: list[str]) -> None:
        self.name = name
        self.cmd = cmd
        self.url = ""
        self.fingerprint = ""
        self.password = ""
        self.ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(START_TIMEOUT):
            raise SystemExit(f"cluster: node {self.name} did not start; see its log above")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            sys.stderr.write(f"[{self.name}] {line}")
            if m := re.search(r"listening on (https://\S+)", line):
                self.url = m.group(1)
            if m := re.search(r"password: (\S+)", line):
                self.password = m.group(1)
            if m := re.search(r"fingerprint: (SHA256:[0-9a-f]+)", line):
                self.fingerprint = m.group(1)
                self.ready.set()
        self.ready.set()  # it ended: start() reports it

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3, help="how many nodes (1-26)")
    ap.add_argument("--first-port", type=int, default=8443, help="0: each node picks one")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--data", type=Path, default=Path(".freight-cluster"))
    ap.add_argument("--database-url", default=os.environ.get("FREIGHT_CLUSTER_DB", DEFAULT_DB))
    args = ap.parse_args(argv)
    if not 1 <= args.nodes <= 26:
        ap.error("--nodes: 1 to 26")
    try:
        asyncio.run(ensure_database(args.database_url))
    except OSError as exc:
        print(f"cluster: cannot reach PostgreSQL for {args.database_url}: {exc}", file=sys.stderr)
        return 1
    nodes = []
    for i in range(args.nodes):
        name = chr(ord("a") + i)
        port = args.first_port + i if args.first_port else 0
        cmd = [sys.executable, "-m", "freight", "hub", "--data", str(args.data)]
        cmd += ["--listen", f"{args.host}:{port}", "--node", name]
        cmd += ["--database-url", args.database_url]
        nodes.append(Node(name, cmd))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for node in nodes:  # one at a time: the first creates what all share
            if stop.is_set():
                return 130
            node.start()
            if not node.fingerprint:
                return 1
        urls = ",".join(n.url for n in nodes)
        print(
            f"\nCluster ready: {len(nodes)} nodes, certificate {nodes[0].fingerprint}\n"
            f"  freight login {urls} --user admin --fingerprint {nodes[0].fingerprint}\n"
            + (f"  (admin's password: {nodes[0].password})\n" if nodes[0].password else "")
            + "  freight admin nodes\nCtrl-C stops every node.",
            flush=True,
        )
        while not stop.wait(0.5):
            if any(n.proc is not None and n.proc.poll() is not None for n in nodes):
                gone = [n.name for n in nodes if n.proc is not None and n.proc.poll() is not None]
                print(f"cluster: node {', '.join(gone)} stopped", file=sys.stderr, flush=True)
                break
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            node.wait()
    return 130 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
