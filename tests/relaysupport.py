"""Helpers for the relay tests: CLI processes with binary pipes whose output
is collected in the background, so a test can wait for a line on stderr
while the process keeps running, and never deadlocks on a full pipe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from freight.client.config import ClientConfig
from freight.client.relay import Connection, RelayClient
from freight.client.session import HubSession
from tests.faultproxy import FaultProxy
from tests.support import PYTHON, Client, Hub, wait_until

FAST_RELAY = {"FREIGHT_RELAY_BACKOFF": "0.2", "FREIGHT_RELAY_BACKOFF_MAX": "1"}
BOB_PASSWORD = "bob-secret-pass"


def fast(client: Client) -> Client:
    """Quick reconnects, so no test waits for a long back-off."""
    client.env.update(FAST_RELAY)
    return client


class Proc:
    """A running ``freight`` command with stdin, stdout and stderr as pipes."""

    def __init__(self, client: Client, *args: str) -> None:
        self.args = args
        self.p = subprocess.Popen(
            [PYTHON, "-m", "freight", *args],
            env=client.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.p.stdout, self._out), daemon=True),
            threading.Thread(target=self._drain, args=(self.p.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _drain(self, pipe: Any, buf: bytearray) -> None:
        while block := pipe.read1(1 << 16):
            with self._lock:
                buf.extend(block)

    # --- output -------------------------------------------------------------

    @property
    def stdout(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode(errors="replace")

    def stdout_lines(self) -> list[str]:
        return self.stdout.decode().splitlines()

    def json_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout_lines() if line.strip()]

    def wait_stderr(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """The first match of ``pattern`` in stderr, once it shows."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            if m := re.search(pattern, self.stderr):
                found.append(m)
                return True
            if self.p.poll() is not None:
                raise AssertionError(f"{self} exited before {pattern!r} showed")
            return False

        try:
            wait_until(seen, timeout, f"{pattern!r} on stderr of {self}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nits stderr so far:\n{self.stderr[-3000:]}") from None
        return found[0]

    def wait_stdout(self, size: int, timeout: float = 10) -> bytes:
        wait_until(lambda: len(self.stdout) >= size, timeout, f"{size} bytes from {self}")
        return self.stdout

    def first_event(self, timeout: float = 10) -> dict[str, Any]:
        """The first JSON line on stdout (``--json``)."""
        wait_until(
            lambda: b"\n" in self.stdout or self.p.poll() is not None,
            timeout,
            f"a line on stdout of {self}",
        )
        line = self.stdout.split(b"\n", 1)[0]
        if not line:
            raise AssertionError(f"{self} printed nothing on stdout")
        return dict(json.loads(line))

    # --- input and lifetime ---------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self) -> None:
        """End of input (every write was flushed, so nothing is lost if the
        process has already gone)."""
        assert self.p.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.p.stdin.close()

    def wait(self, timeout: float = 10) -> int:
        """The exit code; fails the test (and kills the process) on timeout."""
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self} still running after {timeout} s\nstderr: {self.stderr}"
            ) from None
        for t in self._readers:
            t.join(5)
        return code

    @property
    def running(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        if self.p.stdin is not None:
            with contextlib.suppress(OSError):
                self.p.stdin.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def __str__(self) -> str:
        return "freight " + " ".join(self.args)


def running_for(proc: Proc, seconds: float) -> bool:
    """True if ``proc`` is still running ``seconds`` from now (for checks
    that something keeps waiting; returns early if it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc.running:
            return False
        time.sleep(0.05)
    return proc.running


def accounts(tmp_path: Path, hub: Hub, proxy: FaultProxy | None = None) -> tuple[Client, Client]:
    """``admin`` (sends) and ``bob`` (receives), each with its own config,
    both through ``proxy`` when given, with quick relay back-off."""
    url = proxy.url if proxy else hub.url
    admin = fast(Client(tmp_path / "client-admin", hub))
    admin.login(url)
    admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
    bob = fast(Client(tmp_path / "client-bob", hub))
    bob.login(url, user="bob", password=BOB_PASSWORD)
    return admin, bob


@contextlib.asynccontextmanager
async def sdk(client: Client, **kw: Any) -> AsyncIterator[RelayClient]:
    """An in-process RelayClient on a CLI client's saved login."""
    config = ClientConfig(client.config)
    async with RelayClient(HubSession.from_config(config), config, **kw) as rc:
        await rc.start()
        yield rc


async def code_pair(
    sender: RelayClient, receiver: RelayClient, words: str = "tango-lima"
) -> tuple[Connection, Connection]:
    """An offer/claim pair, both ends established."""
    offer = await sender.offer(words)
    claim = asyncio.create_task(receiver.claim(offer.code, timeout=20))
    try:
        out = await asyncio.wait_for(offer.accept(), 20)
        await out.wait_established(20)
        inc = await claim
    finally:
        claim.cancel()
    return out, inc


async def exchange(a: Connection, b: Connection, tag: bytes) -> None:
    """One message each way; both must arrive."""
    await a.send(b"ping " + tag)
    assert await asyncio.wait_for(b.recv(), 20) == b"ping " + tag
    await b.send(b"pong " + tag)
    assert await asyncio.wait_for(a.recv(), 20) == b"pong " + tag
