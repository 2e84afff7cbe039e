"""A real squid with ssl-bump: the TLS-inspecting proxy of many corporate
networks, run by the tests on a free loopback port.

It needs Debian's ``squid-openssl`` (plain ``squid`` cannot bump TLS);
``make test`` installs it where it can, and the tests using it are skipped,
with the reason, where it is missing. The proxy's CA is made by the test
(``ca_pem``, for ``--ca-file``); squid signs a mimic of the hub's
certificate with it, re-originates TLS to the hub, drops the ``Upgrade``
header of WebSocket handshakes (the hub then answers 400) and cuts tunnels
that do not start with TLS. Its outgoing connections leave from
``source`` so tests/httpproxy.py's Firewall can tell them apart.

squid runs as root's ``cache_effective_user`` (``proxy`` on Debian), so
its files live in a folder of their own that user may read and write,
removed by stop().
"""

from __future__ import annotations

import contextlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.certs import make_ca, write_ca, write_key
from tests.httpproxy import PROXY_SOURCE
from tests.support import free_port

CERTGEN = "/usr/lib/squid/security_file_certgen"
SQUID_USER = "proxy"


def squid_binary() -> str:
    """squid built with OpenSSL; skips the test with the reason otherwise."""
    found = shutil.which("squid") or shutil.which("squid", path="/usr/sbin")
    if not found:
        pytest.skip(
            "squid is not installed: install the Debian package squid-openssl "
            "(make test does where it can)"
        )
    version = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=30).stdout
    if "--with-openssl" not in version or not Path(CERTGEN).exists():
        pytest.skip("this squid cannot inspect TLS: install squid-openssl instead of squid")
    return found


class Squid:
    def __init__(self, *, source: str = PROXY_SOURCE) -> None:
        self.source = source
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.ca_pem = Path()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self, d: Path, key: Path) -> str:
        return f"""
http_port 127.0.0.1:{self.port} ssl-bump tls-cert={self.ca_pem} tls-key={key} \
generate-host-certificates=on dynamic_cert_mem_cache_size=4MB
sslcrtd_program {CERTGEN} -s {d / "certs"} -M 4MB
sslcrtd_children 2 startup=1 idle=1
acl step1 at_step SslBump1
acl step2 at_step SslBump2
ssl_bump peek step1
ssl_bump stare step2
ssl_bump bump all
sslproxy_cert_error allow all
tls_outgoing_options flags=DONT_VERIFY_PEER
http_access allow localhost
http_access deny all
tcp_outgoing_address {self.source}
cache deny all
cache_mem 8 MB
pid_filename {d / "squid.pid"}
access_log stdio:{d / "access.log"}
cache_log {d / "cache.log"}
coredump_dir {d}
shutdown_lifetime 1 seconds
pinger_enable off
"""

    def start(self) -> Squid:
        binary = squid_binary()
        user = pwd.getpwnam(SQUID_USER)
        d = Path(tempfile.mkdtemp(prefix="freight-squid-"))
        self.dir = d
        ca_key, ca = make_ca("freight test squid CA")
        self.ca_pem = write_ca(ca, d / "ca.pem")
        key = write_key(ca_key, d / "ca.key")
        subprocess.run(
            [CERTGEN, "-c", "-s", str(d / "certs"), "-M", "4MB"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for p in [d, *d.rglob("*")]:
            with contextlib.suppress(OSError):
                shutil.chown(p, user.pw_uid, user.pw_gid)
        for _ in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            conf = d / "squid.conf"
            conf.write_text(self._config(d, key))
            self.proc = subprocess.Popen(
                [binary, "-N", "-f", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return self
                time.sleep(0.05)
            self._terminate()
        log = self.log()
        self.stop()
        raise AssertionError(f"squid did not start:\n{log[-3000:]}")

    def log(self) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.dir / "cache.log").read_text(errors="replace")
        return ""

    def access_log(self) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.dir / "access.log").read_text(errors="replace")
        return ""

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stop(self) -> None:
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Squid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
