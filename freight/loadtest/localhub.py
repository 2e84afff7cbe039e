"""``freight loadtest --start-hub``: a hub process of the tester's own, on a
fresh data folder and a free loopback port, which ``hub_kill@T`` may
SIGKILL and start again on the same port and data (as a crashed service
restarted by its supervisor would be).

With ``--nodes N`` (and ``--database-url``, ``--bus``) it is a cluster of
N nodes on loopback sharing that database and one data folder
(docs/cluster.md); ``hub_kill@T`` then SIGKILLs the first node and starts
it again, and the clients carry on through the others."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..errors import FreightError, UsageError
from ..tasks import Supervisor

START_TIMEOUT: Final = 60.0
PR_SET_PDEATHSIG: Final = 1
_LISTENING = re.compile(r"listening on https://127\.0\.0\.1:(\d+)")
_FINGERPRINT = re.compile(r"fingerprint: (SHA256:[0-9a-f]+)")


# Every simulated client comes from 127.0.0.1: the hub's cap on sockets from
# one address (1,024, for agents behind one NAT) would refuse all but the
# first thousand. A hub the tester starts takes as many as its total cap.
LOCAL_HUB_OPTIONS: Final = ("--max-connections-per-address", "10000")


@dataclass(frozen=True)
class HubSpec:
    """What hub the tester starts: one process, or ``nodes`` nodes sharing
    ``database_url`` (PostgreSQL) and, if given, the NATS ``bus``."""

    nodes: int = 1
    database_url: str | None = None
    bus: str | None = None
    # Told a line as each node starts and listens (the CLI prints it: a
    # cluster on PostgreSQL takes seconds per node).
    note: Callable[[str], None] | None = field(default=None, compare=False)

    def check(self) -> None:
        if self.nodes < 1:
            raise UsageError("--nodes is 1 or more")
        if self.nodes > 1 and not self.database_url:
            raise UsageError(
                "several nodes share one database: give --database-url postgresql+asyncpg://…"
            )

    def options(self, node: int) -> list[str]:
        """The ``freight hub`` options of node ``node`` (0-based)."""
        out: list[str] = []
        if self.nodes > 1:
            out += ["--node", f"n{node + 1}"]
        if self.database_url:
            out += ["--database-url", self.database_url]
        if self.bus:
            out += ["--bus", self.bus]
        return out


class LocalHub:
    def __init__(
        self, data: Path | None = None, extra: list[str] | None = None, spec: HubSpec | None = None
    ) -> None:
        self.spec = spec or HubSpec()
        self.spec.check()
        self.own_data = data is None
        self.data = data or Path(tempfile.mkdtemp(prefix="freight-loadtest-hub-"))
        self.extra = [*LOCAL_HUB_OPTIONS, *(extra or [])]
        self.password = secrets.token_urlsafe(18)
        self.ports = [0] * self.spec.nodes
        self.fingerprint = ""
        self.procs: list[asyncio.subprocess.Process | None] = [None] * self.spec.nodes
        self.restarts = 0
        self.tasks = Supervisor("local-hub")

    @property
    def url(self) -> str:
        """The first node's address (the only one of a hub alone)."""
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        return [f"https://127.0.0.1:{port}/" for port in self.ports]

    @property
    def others(self) -> list[str]:
        """A cluster's nodes but the first (none for a hub alone)."""
        return self.urls[1:]

    @property
    def pids(self) -> list[int]:
        """Every node's process that runs."""
        return [p.pid for p in self.procs if p is not None and p.returncode is None]

    async def start(self) -> None:
        # One after another: the first makes the database's tables and the
        # certificate in the shared folder that the others then serve.
        note = self.spec.note or (lambda _: None)
        n = self.spec.nodes
        for node in range(n):
            what = f"node n{node + 1} of {n}" if n > 1 else "a hub"
            note(f"starting {what} on loopback…")
            await self._start(node)
            note(f"{what}: listening on {self.urls[node]}")

    async def _start(self, node: int) -> None:
        cmd = [sys.executable, "-m", "freight", "hub", "--data", str(self.data)]
        cmd += ["--listen", f"127.0.0.1:{self.ports[node]}", *self.extra]
        cmd += self.spec.options(node)
        env = {**os.environ, "FREIGHT_ADMIN_PASSWORD": self.password}
        proc = self.procs[node] = await asyncio.create_subprocess_exec(
            *cmd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        port, fingerprint = 0, ""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not fingerprint or not port:
                    line = (await proc.stderr.readline()).decode("utf-8", "replace")
                    if not line:
                        raise FreightError("the hub ended while starting:\n" + "".join(seen[-20:]))
                    seen.append(line)
                    if m := _LISTENING.search(line):
                        port = int(m.group(1))
                    if m := _FINGERPRINT.search(line):
                        fingerprint = m.group(1)
        except TimeoutError:
            await self.stop()
            raise FreightError("the hub did not start within 60 s") from None
        self.ports[node], self.fingerprint = port, fingerprint
        self.tasks.spawn(self._read_rest(proc.stderr), name=f"log-{node}", detached=True)

    @staticmethod
    async def _read_rest(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass  # its log is not kept: the data folder has the events

    async def kill_and_restart(self) -> None:
        """SIGKILL, then the same hub again on the same port and data (of a
        cluster: its first node; the others carry on meanwhile)."""
        proc = self.procs[0]
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        self.restarts += 1
        await self._start(0)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await self.tasks.aclose()
        if self.own_data:
            shutil.rmtree(self.data, ignore_errors=True)


def _die_with_parent() -> None:
    """In the hub's process before it starts: SIGTERM when the tester ends,
    however it ends (a killed tester leaves no hub behind)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def proc_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds so far, resident bytes) of a local process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(stat[11]) + int(stat[12])) / ticks, int(statm[1]) * os.sysconf("SC_PAGE_SIZE")
