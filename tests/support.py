"""Test support: real hub processes and real CLI clients on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ADMIN_PASSWORD = "correct horse battery staple"
PYTHON = sys.executable


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a condition on the real system (a file size, a process state)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Clock:
    """A clock a test moves by hand: ``clock.now += 5``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """:func:`wait_until` for a test on the event loop (the loop keeps running)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A loopback port nothing listens on (as the kernel hands them out)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_from_a_terminal() -> None:
    """Run in a child before exec: SIGINT back to its default.

    A command started in the background of a non-interactive shell (as CI
    starts the suite) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C tests would see the signal dropped.
    A user at a terminal has SIGINT at its default; so do these children.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Hub:
    """A `freight hub` subprocess with its own data folder."""

    def __init__(
        self, data: Path, *, extra: list[str] | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.data = data
        self.extra = extra or []
        self.host = host  # the IPv4 address it listens on
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.fingerprint = ""
        self.preexec: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [PYTHON, "-m", "freight", "hub", "--data", str(self.data)]
        cmd += ["--listen", f"{self.host}:{self.port}", *self.extra]
        if "--compress-busy" not in self.extra:
            # The level a push asked for is the level it gets, however busy
            # the test machine is (the step-down is tested on its own).
            cmd += ["--compress-busy", "0"]
        return cmd

    def start(self) -> Hub:
        env = {**os.environ, "FREIGHT_ADMIN_PASSWORD": ADMIN_PASSWORD}
        cmd = self.command()
        self.lines = []
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            preexec_fn=self.preexec,
        )
        ready = threading.Event()

        def drain() -> None:
            assert self.proc and self.proc.stderr
            for line in self.proc.stderr:
                self.lines.append(line)
                if m := re.search(rf"listening on https://{re.escape(self.host)}:(\d+)", line):
                    self.port = int(m.group(1))
                if m := re.search(r"fingerprint: (SHA256:[0-9a-f]+)", line):
                    self.fingerprint = m.group(1)
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise AssertionError("hub did not start:\n" + "".join(self.lines))
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a power cut of the process."""
        assert self.proc
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def run_to_exit(self) -> subprocess.CompletedProcess[str]:
        """Run the hub in the foreground until it exits, as one that must
        refuse to start does (its stderr to read); 60 s at most."""
        return subprocess.run(
            self.command(),
            env={**os.environ, "FREIGHT_ADMIN_PASSWORD": "x"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> str:
        return "".join(self.lines)

    def partials(self) -> list[Path]:
        return sorted((self.data / "partial").glob("*/*.part"))

    def partial_size(self) -> int:
        return sum(p.stat().st_size for p in self.partials())


class Client:
    """Runs the `freight` CLI with its own config folder."""

    def __init__(self, config: Path, hub: Hub) -> None:
        self.config = config
        self.hub = hub
        self.env = {
            **os.environ,
            "FREIGHT_CONFIG_DIR": str(config),
            "FREIGHT_RETRY_INTERVAL": "0.2",
            "FREIGHT_RETRY_STEADY": "5",
            "FREIGHT_RETRY_GIVE_UP": "60",
            "FREIGHT_STALL_TIMEOUT": "20",
        }

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [PYTHON, "-m", "freight", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"freight {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}\nhub log:\n{self.hub.log()[-3000:]}"
            )
        return res

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, "-m", "freight", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=as_from_a_terminal,
        )

    def login(
        self, url: str | None = None, *, user: str = "admin", password: str = ADMIN_PASSWORD
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "login",
            url or self.hub.url,
            "--user",
            user,
            "--password-stdin",
            "--fingerprint",
            self.hub.fingerprint,
            input=password + "\n",
        )


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Incompressible test data, written in blocks to keep memory small."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * 1024 * 1024)
            f.write(rng.randbytes(n))
            left -= n
    return path


def same_bytes(a: Path, b: Path) -> bool:
    import hashlib

    def digest(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(4 * 1024 * 1024):
                h.update(block)
        return h.hexdigest()

    return a.stat().st_size == b.stat().st_size and digest(a) == digest(b)


def make_tree(root: Path, seed: int = 0, big: int = 3 * 1024 * 1024 + 17) -> Path:
    """Nested folders, an empty file and an empty folder, unicode names,
    modes 0o600/0o755 and old modification times; ``data.bin`` has ``big``
    bytes."""
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    random_file(root / "data.bin", big, seed=seed)
    (root / "empty.txt").write_bytes(b"")
    (root / "ünïcødé.txt").write_text("grüße, ünïcødé\n", encoding="utf-8")
    random_file(root / "docs" / "日本.bin", 70_001, seed=seed + 1)
    (root / "docs" / "deep" / "notes.md").write_text("# notes\n" * 100)
    random_file(root / "docs" / "deep" / "deeper" / "tool.sh", 3000, seed=seed + 2)
    modes = {
        "data.bin": 0o640,
        "empty.txt": 0o600,
        "ünïcødé.txt": 0o644,
        "docs/日本.bin": 0o600,
        "docs/deep/notes.md": 0o604,
        "docs/deep/deeper/tool.sh": 0o755,
        "docs/deep": 0o750,
        "empty-dir": 0o700,
    }
    for rel, mode in modes.items():
        os.chmod(root / rel, mode)
    # Times last, deepest first: creating an entry changes its folder's mtime.
    entries = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for i, p in enumerate([*entries, root]):
        t = 1_600_000_000.25 + 1000 * i
        os.utime(p, (t, t))
    return root


def assert_same_tree(src: Path, dst: Path) -> None:
    """Same names, bytes, modes and modification times (folders included)."""
    names = {p.relative_to(src).as_posix() for p in src.rglob("*")}
    got = {p.relative_to(dst).as_posix() for p in dst.rglob("*")}
    assert got == names, f"missing {names - got}, extra {got - names}"
    for rel in [*sorted(names), ""]:
        a, b = src / rel, dst / rel
        sa, sb = a.stat(), b.stat()
        assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), rel
        assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), (
            rel,
            oct(sa.st_mode),
            oct(sb.st_mode),
        )
        assert abs(sa.st_mtime - sb.st_mtime) < 1e-3, (rel, sa.st_mtime, sb.st_mtime)
        if a.is_file():
            assert same_bytes(a, b), rel
