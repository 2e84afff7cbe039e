"""Start/stop the benchmark peers on loopback and run one timed transfer each.

Every transfer returns a `Transfer(seconds, cpu_seconds, nbytes)`:

* seconds     - wall-clock time of the client command (server already running).
* cpu_seconds - user+system CPU of the client command (getrusage of reaped
                children) plus the server side (utime+stime+cutime+cstime of the
                server's process tree read from /proc before and after). None when
                the server side could not be measured.
* nbytes      - logical bytes moved (size of the source file).

Only the standard library and packages from the project venv are used. All
servers bind 127.0.0.1 on a free high port chosen by the kernel.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV = Path(os.environ.get("VENV", REPO_DIR / ".venv"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Transfer(NamedTuple):
    seconds: float
    cpu_seconds: float | None
    nbytes: int


class PeerError(RuntimeError):
    """A peer command failed; the driver skips the row and shows the message."""


# --------------------------------------------------------------------------- utils


def free_port() -> int:
    """Ask the kernel for a free port on loopback (ephemeral range, i.e. high)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"server exited early (rc={proc.returncode}): {_tail(proc)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise PeerError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _tail(proc: subprocess.Popen[bytes]) -> str:
    """Last lines of a dead server's output (servers log to a file, see start_server)."""
    log = getattr(proc, "log_path", None)
    if log and Path(log).exists():
        return Path(log).read_text(errors="replace")[-800:].strip()
    return ""


def start_server(
    cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running server; its output goes to a file so pipes never fill up."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # so stop_server can signal the whole group
        )
    proc.log_path = str(log_path)  # type: ignore[attr-defined]
    return proc


def stop_server(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_client(
    cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 3600
) -> tuple[float, float, str]:
    """Run a client command to completion: (wall seconds, client CPU seconds, stdout).

    RUSAGE_CHILDREN covers the command and every descendant it waited for (e.g.
    the ssh that scp/rsync spawn). Servers are not reaped during the run, so they
    do not pollute the delta.
    """
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run(
        list(cmd), env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode(errors="replace").strip()[-800:]
        raise PeerError(f"{Path(cmd[0]).name} exited {res.returncode}: {err}")
    return elapsed, cpu, res.stdout.decode(errors="replace")


# ---------------------------------------------------------- server CPU via /proc


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in ticks) of one process, None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces/parens: split after the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ppid, ticks


def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree: live processes plus everything they reaped.

    A process is counted either while alive (its own utime/stime) or, once dead
    and waited for, inside its parent's cutime/cstime -- never twice. /proc has no
    children list on every kernel, so scan all pids for parents.
    """
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = st
    if root not in stats:
        return 0.0
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo.extend(kids.get(pid, ()))
    return total / CLK_TCK


def has_children(pid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None and st[0] == pid:
            return True
    return False


def wait_no_children(pid: int, timeout: float = 10) -> bool:
    """Wait until a forking server (sshd) has reaped its per-connection children,
    so their CPU has landed in its cutime/cstime."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not has_children(pid):
            return True
        time.sleep(0.02)
    return False


def timed_against_server(
    server_pid: int | None,
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> tuple[float, float | None, str]:
    """Run a client against a running server: (seconds, client+server CPU, stdout)."""
    before = tree_cpu(server_pid) if server_pid else None
    elapsed, cpu, out = run_client(cmd, env=env, timeout=timeout)
    if server_pid is None or before is None:
        return elapsed, None, out
    if not wait_no_children(server_pid):
        return elapsed, None, out
    return elapsed, cpu + tree_cpu(server_pid) - before, out


# ---------------------------------------------------------------------- sshd


class SshPeer:
    """A private sshd on a high loopback port: own host key, own config, key-only auth.

    Nothing under /etc/ssh or ~/.ssh is read or changed. scp and rsync use it.
    """

    def __init__(self, workdir: Path, cipher: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="sshd-", dir=workdir))
        self.cipher = cipher  # None: OpenSSH's default (chacha20-poly1305 in 9.x)
        self.port = free_port()
        self.user = getpass.getuser()
        self.key = self.dir / "client_key"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SshPeer:
        d = self.dir
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
            )
        shutil.copy(d / "client_key.pub", d / "authorized_keys")
        sftp = next(
            (
                p
                for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server")
                if os.path.exists(p)
            ),
            "internal-sftp",
        )
        # scp in OpenSSH >= 9 speaks SFTP by default, hence the Subsystem line.
        (d / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp {sftp}
"""
        )
        # sshd insists on its privilege-separation directory (setup_peers.sh makes it
        # too; repeat in case /run is a fresh tmpfs).
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        # -D: stay in the foreground so we keep its pid; -e: log to stderr (our log file).
        cmd = [sshd, "-D", "-e", "-f", str(d / "sshd_config")]
        self.proc = start_server(cmd, d / "sshd.log")
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_server(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def ssh_opts(self) -> list[str]:
        # -F /dev/null: ignore any user/system client config so runs are reproducible.
        return [
            "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(self.key),
            *(["-c", self.cipher] if self.cipher else []),
        ]  # fmt: skip

    def remote(self, path: Path) -> str:
        return f"{self.user}@127.0.0.1:{path}"

    def scp_upload(self, src: Path, dest: Path) -> Transfer:
        cmd = ["scp", "-q", *self.ssh_opts(), "-P", str(self.port), str(src), self.remote(dest)]
        return self._run(cmd, src)

    def rsync_upload(self, src: Path, dest: Path, compress: bool = False) -> Transfer:
        ssh = " ".join(["ssh", "-p", str(self.port), *self.ssh_opts()])
        flags = "-az" if compress else "-a"
        cmd = ["rsync", flags, "-e", ssh, str(src), self.remote(dest)]
        return self._run(cmd, src)

    def _run(self, cmd: list[str], src: Path) -> Transfer:
        assert self.proc is not None
        secs, cpu, _ = timed_against_server(self.proc.pid, cmd)
        return Transfer(secs, cpu, src.stat().st_size)


# ---------------------------------------------------------------------- iperf3


class IperfPeer:
    """iperf3 server; the client's single TCP stream is the loopback ceiling."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IperfPeer:
        cmd = ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.port)]
        self.proc = start_server(cmd, self.workdir / f"iperf3-{self.port}.log")
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_server(self.proc)

    def run(self, amount: str = "1G") -> Transfer:
        assert self.proc is not None
        cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(self.port), "-n", amount, "-J"]
        _, cpu, out = timed_against_server(self.proc.pid, cmd)
        end = json.loads(out)["end"]["sum_received"]
        # Use iperf3's own measured interval, not process start-up + control channel.
        return Transfer(float(end["seconds"]), cpu, int(end["bytes"]))


# ---------------------------------------------------------------------- tus

# Runs in a subprocess so its CPU is measured like any other client.
# tuspy 1.1 sends "Upload-Metadata:" empty when metadata is {}, which @tus/server 2.x
# rejects as malformed (400) -- so always pass a filename.
_TUS_CLIENT = """
import sys
from tusclient.client import TusClient
url, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
up = TusClient(url).uploader(path, chunk_size=chunk, metadata={"filename": "x"})
up.upload()
print(up.url)
"""


class TusPeer:
    """@tus/server + @tus/file-store (node) with the tuspy client."""

    def __init__(self, workdir: Path, chunk_size: int = 64 << 20):
        self.dir = Path(tempfile.mkdtemp(prefix="tus-", dir=workdir))
        self.port = free_port()
        self.chunk_size = chunk_size
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TusPeer:
        if not (BENCH_DIR / ".node" / "node_modules" / "@tus" / "server").is_dir():
            raise PeerError("@tus/server missing: run bench/setup_peers.sh")
        store = self.dir / "store"
        store.mkdir()
        cmd = ["node", str(BENCH_DIR / "tus_server.mjs"), str(self.port), str(store)]
        self.proc = start_server(cmd, self.dir / "tus.log")
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_server(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def upload(self, src: Path) -> tuple[Transfer, Path]:
        """Upload src; returns the transfer and the path of the stored copy."""
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.port}/files"
        cmd = [sys.executable, "-c", _TUS_CLIENT, url, str(src), str(self.chunk_size)]
        secs, cpu, out = timed_against_server(self.proc.pid, cmd)
        upload_id = out.strip().rsplit("/", 1)[-1]
        return Transfer(secs, cpu, src.stat().st_size), self.dir / "store" / upload_id

    def forget(self, stored: Path) -> None:
        """Delete an upload (data + FileStore's .json sidecar) to bound disk use."""
        stored.unlink(missing_ok=True)
        stored.with_name(stored.name + ".json").unlink(missing_ok=True)


# ------------------------------------------------------------------- freight
# Everything Freight-specific is here, written against the CLI interface:
#   freight hub --data DIR --listen 127.0.0.1:PORT      (env FREIGHT_ADMIN_PASSWORD)
#   freight login URL --user admin --password-stdin --fingerprint SHA256:<hex>
#   freight push PATH --as NAME --json --quiet [extra]  (env FREIGHT_CONFIG_DIR)
#   freight pull NAME DEST --json --quiet [extra]
# Adjust here if the CLI changes.

FREIGHT = VENV / "bin" / "freight"


def freight_fingerprint(data_dir: Path) -> str:
    """ "SHA256:<hex>" of the hub's self-signed certificate (DER), for `freight login`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate((Path(data_dir) / "tls" / "cert.pem").read_bytes())
    return "SHA256:" + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _freight_env(cfg_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    if cfg_dir is not None:
        env["FREIGHT_CONFIG_DIR"] = str(cfg_dir)
    return env


def _wait_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed; identity is pinned at login instead
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(f"freight hub exited (rc={proc.returncode}): {_tail(proc)}")
        try:
            with urllib.request.urlopen(f"{url}/v1/health", context=ctx, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # connection refused, TLS not ready, 503...
            last = e
        time.sleep(0.2)
    raise PeerError(f"freight hub not healthy after {timeout}s: {last}")


class FreightHub:
    """A hub with its own data dir, plus one logged-in client config dir."""

    password = "bench-admin-password"

    def __init__(self, workdir: Path, hub_args: list[str] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="freight-", dir=workdir))
        self.hub_args = hub_args or []
        self.data = self.dir / "data"
        self.cfg = self.dir / "client"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FreightHub:
        if not FREIGHT.exists():
            raise PeerError(f"{FREIGHT} not found (is the freight package installed?)")
        self.cfg.mkdir()
        cmd = [str(FREIGHT), "hub", "--data", str(self.data), "--listen", f"127.0.0.1:{self.port}"]
        cmd += self.hub_args
        env = _freight_env(FREIGHT_ADMIN_PASSWORD=self.password)
        self.proc = start_server(cmd, self.dir / "hub.log", env=env)
        _wait_health(self.url, self.proc)
        self._login()
        return self

    def _login(self) -> None:
        cmd = [
            str(FREIGHT), "login", self.url, "--user", "admin", "--password-stdin",
            "--fingerprint", freight_fingerprint(self.data),
        ]  # fmt: skip
        res = subprocess.run(
            cmd,
            input=self.password.encode(),
            capture_output=True,
            env=_freight_env(self.cfg),
            timeout=120,
        )
        if res.returncode != 0:
            raise PeerError(f"freight login failed: {res.stderr.decode(errors='replace')[-800:]}")

    def stop(self) -> None:
        stop_server(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def push(
        self, path: Path, name: str, extra_args: Sequence[str] = (), timeout: float = 3600
    ) -> Transfer:
        pid = self.proc.pid if self.proc else None
        return freight_push(self.cfg, path, name, extra_args, server_pid=pid, timeout=timeout)

    def pull(
        self, name: str, dest: Path, extra_args: Sequence[str] = (), timeout: float = 3600
    ) -> Transfer:
        pid = self.proc.pid if self.proc else None
        return freight_pull(self.cfg, name, dest, extra_args, server_pid=pid, timeout=timeout)


def freight_push(
    cfg_dir: Path,
    path: Path,
    name: str,
    extra_args: Sequence[str] = (),
    server_pid: int | None = None,
    timeout: float = 3600,
) -> Transfer:
    cmd = [str(FREIGHT), "push", str(path), "--as", name, "--json", "--quiet", *extra_args]
    secs, cpu, _ = timed_against_server(server_pid, cmd, env=_freight_env(cfg_dir), timeout=timeout)
    return Transfer(secs, cpu, path.stat().st_size)


def freight_pull(
    cfg_dir: Path,
    name: str,
    dest: Path,
    extra_args: Sequence[str] = (),
    server_pid: int | None = None,
    timeout: float = 3600,
) -> Transfer:
    cmd = [str(FREIGHT), "pull", name, str(dest), "--json", "--quiet", *extra_args]
    secs, cpu, _ = timed_against_server(server_pid, cmd, env=_freight_env(cfg_dir), timeout=timeout)
    return Transfer(secs, cpu, received_size(dest))


def received_size(dest: Path) -> int:
    """Size of what a pull produced: a file, or the files under a directory."""
    if dest.is_file():
        return dest.stat().st_size
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


@contextlib.contextmanager
def running(peer: Any) -> Iterator[Any]:
    """`with running(SshPeer(dir)) as ssh:` -- start, and always stop."""
    try:
        yield peer.start()
    finally:
        peer.stop()


__all__ = [
    "FreightHub",
    "IperfPeer",
    "PeerError",
    "SshPeer",
    "Transfer",
    "TusPeer",
    "freight_fingerprint",
    "freight_pull",
    "freight_push",
    "running",
]
