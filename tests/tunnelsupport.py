"""Helpers for the tunnel tests: servers behind the far end (a TCP echo
server that carries half-closes through, an HTTP server), an agent enrolled
with ``--allow-forward``, and ``freight forward`` / ``freight expose``
processes whose listening port is read from their ``--json`` output."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.agentsupport import AgentProc, api, wait_online
from tests.relaysupport import Proc, fast
from tests.support import Client, Hub, wait_until

DEADLINE = 10.0  # every socket operation of a test


# When each echo server's connections ended (time.monotonic()), by port.
ECHO_CLOSES: dict[int, list[float]] = {}


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(60)
        try:
            with contextlib.suppress(OSError):
                while data := sock.recv(1 << 16):
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)  # the peer's EOF, carried back as ours
        finally:
            ECHO_CLOSES.setdefault(self.server.server_address[1], []).append(time.monotonic())


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 (its port): echoes until EOF, then
    half-closes its side."""
    srv = _Server(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 serving ``root`` (its port)."""
    handler = functools.partial(_Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(1 << 20, size - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the far end's EOF."""
    buf = bytearray()
    while chunk := sock.recv(1 << 20):
        buf += chunk
    return bytes(buf)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the far end closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not sock.recv(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


class TunnelAgent:
    """An agent enrolled with ``--allow-forward`` for each target, running."""

    def __init__(self, admin: Client, hub: Hub, name: str, home: Path, *allow: str) -> None:
        self.admin = admin
        self.name = name
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        root = home / "root"
        root.mkdir(exist_ok=True)
        self.client = fast(Client(home / "config", hub))
        token = api(admin, "POST", "/v1/agents/tokens", {"name": name, "ttl": 600})["token"]
        args = ["agent", "enroll", hub.url, token, "--fingerprint", hub.fingerprint]
        args += ["--root", str(root)]
        for target in allow:
            args += ["--allow-forward", target]
        self.client.run(*args, timeout=60)
        self.proc: AgentProc | None = None
        self.runs = 0

    def start(self) -> AgentProc:
        self.runs += 1
        self.proc = AgentProc(self.client, self.home / f"agent-{self.runs}.log")
        wait_online(self.admin, self.name, proc=self.proc)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def log(self) -> str:
        return self.proc.log() if self.proc is not None else ""


class Tunnel:
    """A running ``freight forward`` (or ``expose``) with ``--json``."""

    def __init__(self, client: Client, *args: str) -> None:
        self.proc = Proc(client, *args, "--json")
        try:
            self.first = self.proc.first_event(timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr: {self.proc.stderr[-3000:]}") from None
        if self.first.get("event") not in ("listening", "exposed"):
            raise AssertionError(f"unexpected first event {self.first}: {self.proc.stderr}")

    @property
    def port(self) -> int:
        return int(self.first["port"])

    def events(self) -> list[dict[str, Any]]:
        return self.proc.json_events()

    def wait_event(self, kind: str, timeout: float = DEADLINE) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events() if e.get("event") == kind]
            return bool(found)

        wait_until(seen, timeout, f"a {kind!r} event from {self.proc}")
        return found[0]

    def stop(self) -> int:
        """Ctrl-C, as a person would; the exit code."""
        import signal

        if self.proc.running:
            self.proc.p.send_signal(signal.SIGINT)
        return self.proc.wait(15)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()


def sshd_path() -> str | None:
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd") or ""):
        if candidate and Path(candidate).exists():
            return candidate
    return None
