"""``freight loadtest --start-hub``: a hub process of the tester's own, on a
fresh data folder and a free loopback port, which ``hub_kill@T`` may
SIGKILL and start again on the same port and data (as a crashed service
restarted by its supervisor would be)."""

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
from pathlib import Path
from typing import Final

from ..errors import FreightError
from ..tasks import Supervisor

START_TIMEOUT: Final = 60.0
PR_SET_PDEATHSIG: Final = 1
_LISTENING = re.compile(r"listening on https://127\.0\.0\.1:(\d+)")
_FINGERPRINT = re.compile(r"fingerprint: (SHA256:[0-9a-f]+)")


# Every simulated client comes from 127.0.0.1: the hub's cap on sockets from
# one address (1,024, for agents behind one NAT) would refuse all but the
# first thousand. A hub the tester starts takes as many as its total cap.
LOCAL_HUB_OPTIONS: Final = ("--max-connections-per-address", "10000")


class LocalHub:
    def __init__(self, data: Path | None = None, extra: list[str] | None = None) -> None:
        self.own_data = data is None
        self.data = data or Path(tempfile.mkdtemp(prefix="freight-loadtest-hub-"))
        self.extra = [*LOCAL_HUB_OPTIONS, *(extra or [])]
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.fingerprint = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.tasks = Supervisor("local-hub")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self) -> None:
        cmd = [sys.executable, "-m", "freight", "hub", "--data", str(self.data)]
        cmd += ["--listen", f"127.0.0.1:{self.port}", *self.extra]
        env = {**os.environ, "FREIGHT_ADMIN_PASSWORD": self.password}
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not self.fingerprint or not self.port:
                    line = (await self.proc.stderr.readline()).decode("utf-8", "replace")
                    if not line:
                        raise FreightError("the hub ended while starting:\n" + "".join(seen[-20:]))
                    seen.append(line)
                    if m := _LISTENING.search(line):
                        self.port = int(m.group(1))
                    if m := _FINGERPRINT.search(line):
                        self.fingerprint = m.group(1)
        except TimeoutError:
            await self.stop()
            raise FreightError("the hub did not start within 60 s") from None
        self.tasks.spawn(self._read_rest(self.proc.stderr), name="log", detached=True)

    @staticmethod
    async def _read_rest(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass  # its log is not kept: the data folder has the events

    async def kill_and_restart(self) -> None:
        """SIGKILL, then the same hub again on the same port and data."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.fingerprint = ""
        self.restarts += 1
        await self.start()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
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
