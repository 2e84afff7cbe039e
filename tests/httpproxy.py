"""A real HTTP CONNECT proxy (tinyproxy) and a firewall in front of the hub.

``TinyProxy`` runs the Debian ``tinyproxy`` binary on a free loopback port
with a generated config; if the binary is missing it is installed once with
apt-get, and the tests are skipped (with the reason) only if that fails.
Its outgoing connections leave from 127.0.0.2 (tinyproxy's ``Bind``), so a
``Firewall`` in front of the hub can tell tunnelled connections from direct
ones and refuse the latter, like a corporate network where only the proxy
may reach the outside:

    with Firewall(hub.port) as fw, TinyProxy(tmp_path).start() as proxy:
        client.run("login", fw.url, "--proxy", proxy.url, ...)

``Firewall(tls_only=True)`` also drops connections whose first byte is not a
TLS handshake, as proxies with protocol enforcement do: the hub's sealed data
connections are cut, and the client must fall back to the WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import free_port

# tinyproxy's outgoing connections come from here (the whole of 127/8 is
# local on Linux), which is how the firewall recognises them.
PROXY_SOURCE = "127.0.0.2"
TLS_HANDSHAKE = 0x16  # first byte of every TLS ClientHello record

_install_failure: str | None = None


def tinyproxy_binary() -> str:
    """The tinyproxy executable, installed on first need; skips the test
    with the reason when it is missing and cannot be installed."""
    global _install_failure
    found = shutil.which("tinyproxy")
    if found:
        return found
    if _install_failure is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "tinyproxy"]):
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
                if res.returncode != 0:
                    _install_failure = f"{' '.join(cmd)} failed: {res.stderr.strip()[-300:]}"
                    break
        except (OSError, subprocess.TimeoutExpired) as exc:
            _install_failure = f"apt-get could not run: {exc}"
        found = shutil.which("tinyproxy")
        if found:
            return found
        _install_failure = _install_failure or "apt-get install tinyproxy left no binary"
    pytest.skip(f"tinyproxy is not installed and could not be installed ({_install_failure})")


class TinyProxy:
    """A ``tinyproxy`` process. ``auth`` adds BasicAuth; ``connect_ports``
    restricts CONNECT to those ports (none given: every port, per
    tinyproxy.conf(5): "If no ConnectPort line is found, then all ports are
    allowed")."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: tuple[str, str] | None = None,
        connect_ports: list[int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.auth = auth
        self.connect_ports = connect_ports or []
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "tinyproxy.log"

    @property
    def url(self) -> str:
        """The proxy URL, with the configured credentials if any."""
        if self.auth:
            return self.url_with(*self.auth)
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            f"Bind {PROXY_SOURCE}",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            "MaxClients 100",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]
        if self.auth:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        return "\n".join(lines) + "\n"

    def start(self) -> TinyProxy:
        binary = tinyproxy_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            conf = self.workdir / "tinyproxy.conf"
            conf.write_text(self._config())
            self.proc = subprocess.Popen(
                [binary, "-d", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return self
                time.sleep(0.02)
            self.stop()
        raise AssertionError(f"tinyproxy did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connects_to(self, port: int) -> int:
        """How many CONNECT requests for 127.0.0.1:``port`` the proxy logged."""
        return len(re.findall(rf"CONNECT 127\.0\.0\.1:{port} HTTP/1\.1", self.log()))

    def __enter__(self) -> TinyProxy:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Firewall:
    """A TCP forwarder in front of the hub, on 127.0.0.1, in a thread.

    Only connections from the proxy's address are forwarded (``accepted``);
    others are closed at once (``direct``). With ``tls_only`` a connection
    whose first byte is not a TLS handshake is closed too (``non_tls``).
    """

    def __init__(self, target_port: int, *, tls_only: bool = False) -> None:
        self.target_port = target_port
        self.tls_only = tls_only
        self.port = 0
        self.accepted = 0
        self.direct = 0
        self.non_tls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Firewall:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = int(server.sockets[0].getsockname()[1])
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.close()

        self._thread = threading.Thread(target=main, name="firewall", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise AssertionError("firewall did not start")
        return self

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def cancel_all() -> None:
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Firewall:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        hwriter: asyncio.StreamWriter | None = None
        try:
            if cwriter.get_extra_info("peername")[0] != PROXY_SOURCE:
                self.direct += 1
                return
            first = await creader.read(1)
            if not first:
                return
            if self.tls_only and first[0] != TLS_HANDSHAKE:
                self.non_tls += 1
                return
            self.accepted += 1
            hreader, hwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
            hwriter.write(first)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError):
                    while data := await r.read(256 * 1024):
                        w.write(data)
                        await w.drain()
                with contextlib.suppress(OSError):
                    w.write_eof()

            await asyncio.gather(pipe(creader, hwriter), pipe(hreader, cwriter))
        except OSError:
            pass
        except asyncio.CancelledError:
            # Only close() cancels us. Ending normally keeps asyncio's
            # start_server callback from logging the cancelled task as an error.
            pass
        finally:
            for w in (cwriter, hwriter):
                if w is not None:
                    w.close()
            self._tasks.discard(task)
