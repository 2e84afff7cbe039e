"""``connect`` and ``listen`` with whatever standard input and output a
script gives them: /dev/null, a socket, a pipe, a regular file or a terminal
in; a pipe, a regular file or /dev/null out. One end runs with the kinds
under test, the other with plain pipes; real hub, real CLI processes, bytes
compared."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.relaysupport import Proc
from tests.support import PYTHON, Client, wait_until

KiB = 1024
STDINS = ["devnull", "socket", "pipe", "file", "tty"]
STDOUTS = ["pipe", "file", "devnull"]


class Odd:
    """A ``freight`` process whose standard input and output are of the kinds
    under test; stderr is collected in the background."""

    def __init__(self, client: Client, tmp: Path, stdin: str, stdout: str, data: bytes) -> None:
        self.stdout_kind = stdout
        self.out_path = tmp / "out.bin"
        self._closers: list[Any] = []
        self._feeder: threading.Thread | None = None
        self._out = bytearray()
        self._err = bytearray()
        self.stdin_arg = self._stdin(tmp, stdin, data)
        self.stdout_arg = self._stdout(stdout)
        self.args: list[str] = []
        self.client = client

    def _stdin(self, tmp: Path, kind: str, data: bytes) -> Any:
        if kind == "devnull":
            return subprocess.DEVNULL
        if kind == "file":
            path = tmp / "in.bin"
            path.write_bytes(data)
            f = open(path, "rb")  # noqa: SIM115 - closed in close()
            self._closers.append(f)
            return f
        if kind == "pipe":
            r, w = os.pipe()
            self._closers.append(r)
            self._feed(lambda: _write_all_and_close(w, data))
            return r
        if kind == "tty":
            # A terminal in its usual (canonical) mode: a line, then Ctrl-D.
            master, slave = os.openpty()
            self._closers += [master, slave]
            self._feed(lambda: os.write(master, data + b"\x04"))
            return slave
        mine, theirs = socket.socketpair()
        self._closers += [mine, theirs]

        def feed() -> None:
            mine.sendall(data)
            mine.shutdown(socket.SHUT_WR)  # end of input, as a peer would

        self._feed(feed)
        return theirs.fileno()

    def _feed(self, fn: Any) -> None:
        self._feeder = threading.Thread(target=fn, daemon=True)

    def _stdout(self, kind: str) -> Any:
        if kind == "pipe":
            return subprocess.PIPE
        if kind == "file":
            f = open(self.out_path, "wb")  # noqa: SIM115 - closed in close()
            self._closers.append(f)
            return f
        return subprocess.DEVNULL

    def start(self, *args: str) -> Odd:
        self.args = list(args)
        self.p = subprocess.Popen(
            [PYTHON, "-m", "freight", *args],
            env=self.client.env,
            stdin=self.stdin_arg,
            stdout=self.stdout_arg,
            stderr=subprocess.PIPE,
        )
        drains = [(self.p.stderr, self._err)]
        if self.p.stdout is not None:
            drains.append((self.p.stdout, self._out))
        for pipe, buf in drains:
            threading.Thread(target=_drain, args=(pipe, buf), daemon=True).start()
        if self._feeder is not None:
            self._feeder.start()
        return self

    @property
    def stderr(self) -> str:
        return self._err.decode(errors="replace")

    def wait_stderr(self, text: str, timeout: float = 15) -> None:
        def seen() -> bool:
            if text in self.stderr:
                return True
            if self.p.poll() is not None:
                raise AssertionError(f"exited {self.p.returncode} before {text!r}: {self.stderr}")
            return False

        wait_until(seen, timeout, f"{text!r} from freight {' '.join(self.args)}")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s: {self.stderr}") from None

    def received(self) -> bytes | None:
        """What it wrote to standard output (None for /dev/null)."""
        if self.stdout_kind == "pipe":
            wait_until(lambda: self.p.stdout is None or self.p.stdout.closed, 10, "stdout")
            return bytes(self._out)
        if self.stdout_kind == "file":
            return self.out_path.read_bytes()
        return None

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        for c in self._closers:
            with contextlib.suppress(OSError):
                c.close() if hasattr(c, "close") else os.close(c)


def _drain(pipe: IO[bytes], buf: bytearray) -> None:
    while block := pipe.read1(1 << 16):  # type: ignore[attr-defined]
        buf.extend(block)
    pipe.close()


def _write_all_and_close(fd: int, data: bytes) -> None:
    with open(fd, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def odd(client: Client, tmp: Path, stdin: str, stdout: str, data: bytes) -> Iterator[Odd]:
    proc = Odd(client, tmp, stdin, stdout, data)
    try:
        yield proc
    finally:
        proc.close()


def payloads(stdin: str) -> tuple[bytes, bytes]:
    """(what the end under test sends, what its peer sends)."""
    if stdin == "devnull":
        mine = b""
    elif stdin == "tty":
        mine = b"typed on a terminal\n"
    else:
        mine = os.urandom(300 * KiB) + b"from the odd end\n"
    return mine, os.urandom(200 * KiB) + b"from the peer\n"


@pytest.mark.parametrize("stdout", STDOUTS)
@pytest.mark.parametrize("stdin", STDINS)
def test_listen_with_any_stdin_and_stdout(
    tmp_path: Path, admin: Client, bob: Client, stdin: str, stdout: str
) -> None:
    app = f"io-l-{stdin}-{stdout}"
    mine, theirs = payloads(stdin)
    with odd(bob, tmp_path, stdin, stdout, mine) as listener:
        listener.start("listen", app)
        listener.wait_stderr("Listening")
        with Proc(admin, "connect", "bob", app) as dialer:
            dialer.write(theirs)
            dialer.close_stdin()
            assert listener.wait() == 0, listener.stderr
            assert dialer.wait() == 0, dialer.stderr
            assert dialer.stdout == mine
        got = listener.received()
        assert got is None or got == theirs
        assert "error" not in listener.stderr


@pytest.mark.parametrize("stdout", STDOUTS)
@pytest.mark.parametrize("stdin", STDINS)
def test_connect_with_any_stdin_and_stdout(
    tmp_path: Path, admin: Client, bob: Client, stdin: str, stdout: str
) -> None:
    app = f"io-c-{stdin}-{stdout}"
    mine, theirs = payloads(stdin)
    with Proc(bob, "listen", app) as listener:
        listener.wait_stderr("Listening")
        with odd(admin, tmp_path, stdin, stdout, mine) as dialer:
            dialer.start("connect", "bob", app)
            listener.wait_stderr("Connected: admin")
            listener.write(theirs)
            listener.close_stdin()
            assert dialer.wait() == 0, dialer.stderr
            assert listener.wait() == 0, listener.stderr
            assert listener.stdout == mine
            got = dialer.received()
            assert got is None or got == theirs
            assert "error" not in dialer.stderr
