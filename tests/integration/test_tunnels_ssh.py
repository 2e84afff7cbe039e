"""SSH through a tunnel: a private ``sshd`` (Debian's openssh-server, its
own host key and config, key-only) behind an agent that allows exactly its
port, reached with the real ``ssh`` client through ``freight forward``.
Skipped, saying why, where sshd or ssh is not installed (``make
test-proxies`` installs them)."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Client, Hub, free_port
from tests.tunnelsupport import Tunnel, TunnelAgent, sshd_path

SSHD = sshd_path()
pytestmark = pytest.mark.skipif(
    SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="sshd/ssh not installed (Debian openssh-server and openssh-client; make test-proxies)",
)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private sshd on 127.0.0.1 (its port and the client key)."""
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    assert SSHD is not None
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log
        )
    try:
        yield port, d / "client_key"
    finally:
        proc.terminate()
        proc.wait(10)


def test_ssh_through_a_forward(
    tmp_path: Path, hub: Hub, client: Client, sshd: tuple[int, Path]
) -> None:
    port, key = sshd
    lab = TunnelAgent(client, hub, "lab", tmp_path / "lab", f"127.0.0.1:{port}")
    lab.start()
    try:
        with Tunnel(client, "forward", "0", f"lab:127.0.0.1:{port}") as t:
            payload = os.urandom(3 * 1024 * 1024)
            res = subprocess.run(
                [
                    "ssh",
                    "-F",
                    "/dev/null",
                    "-p",
                    str(t.port),
                    "-i",
                    str(key),
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "LogLevel=ERROR",
                    "-o",
                    "ConnectTimeout=20",
                    f"{getpass.getuser()}@127.0.0.1",
                    "cat",
                ],
                input=payload,
                capture_output=True,
                timeout=60,
            )
            assert res.returncode == 0, res.stderr.decode()
            assert res.stdout == payload  # through sshd's cat and back, byte for byte
    finally:
        lab.kill()
