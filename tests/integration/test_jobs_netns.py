"""Transfer jobs across a real network path: the receiver
(``freight job receive APP -o DIR --once``, its own config folder and
login) runs in a network namespace made here, joined to this one by a veth
pair; the hub listens on the veth's outside address, which both ends reach;
the sender (``freight job send``) runs out here. Each case checks the bytes
arrived identical and what ``freight job show ID --json`` records:

- direct reachable: the job goes by direct;
- direct black-holed (nft in the namespace drops new inbound TCP, while
  established connections, such as the receiver's own to the hub, still
  pass): the direct attempt fails within about a second and relay carries
  the job, the record giving the failed attempt's reason;
- by reference only (``--manner ref``).

Needs root (``ip netns``) and nft (Debian: ``apt-get install nftables``);
skipped with the reason otherwise. The namespace and veth pair are always
deleted, and every process started here is killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.httpproxy import TinyProxy
from tests.netns import veth_namespace
from tests.relaysupport import BOB_PASSWORD, fast
from tests.support import PYTHON, Client, Hub, wait_until

MiB = 1024 * 1024
DEADLINE = 20.0
CAROL = "carol-behind-a-proxy"

pytestmark = pytest.mark.timeout(60)


@dataclass
class Netns:
    name: str
    outside: str  # our end of the veth pair (the hub listens here)
    inside: str  # the namespace's end

    def nft(self, script: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=script.encode(),
            check=True,
            timeout=10,
        )

    def black_hole(self) -> None:
        """New inbound TCP connections vanish (no reset); the namespace's
        own connections out, and their answers, still pass."""
        self.nft(
            "flush ruleset\n"
            "table inet jobs {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            "    iif lo accept\n"
            "    ct state established,related accept\n"
            "    tcp flags & (syn | ack) == syn drop\n"
            "  }\n"
            "}\n"
        )

    def count_syns(self) -> None:
        """Count new inbound TCP connections (from outside, not loopback)."""
        self.nft(
            "flush ruleset\n"
            "table inet jobs {\n"
            "  counter syns {}\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            "    iif lo accept\n"
            "    tcp flags & (syn | ack) == syn counter name syns\n"
            "  }\n"
            "}\n"
        )

    def syns(self) -> int:
        shown = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "list", "counter", "inet", "jobs", "syns"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        m = re.search(r"packets (\d+)", shown)
        assert m, shown
        return int(m.group(1))

    def proxy_only(self, port: int) -> None:
        """The namespace reaches nothing but ``outside:port`` (the proxy);
        new inbound TCP connections vanish."""
        self.nft(
            "flush ruleset\n"
            "table inet jobs {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy drop;\n"
            "    iif lo accept\n"
            "    ct state established,related accept\n"
            "  }\n"
            "  chain output {\n"
            "    type filter hook output priority 0; policy drop;\n"
            "    oif lo accept\n"
            f"    ip daddr {self.outside} tcp dport {port} accept\n"
            "  }\n"
            "}\n"
        )

    def refuse_new_to(self, port: int) -> None:
        """New connections from the namespace to ``outside:port`` are reset
        at once; those already open go on."""
        self.nft(
            "flush ruleset\n"
            "table inet jobs {\n"
            "  chain output {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {self.outside} tcp dport {port} ct state new reject with tcp reset\n"
            "  }\n"
            "}\n"
        )

    def open(self) -> None:
        self.nft("flush ruleset\n")


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if shutil.which("nft") is None:
        pytest.skip("the black-hole case needs nft (Debian: apt-get install nftables)")
    with veth_namespace("fjobs", 232) as (name, outside, inside):
        ns = Netns(name, outside, inside)
        ns.open()  # nft must work inside it
        yield ns


@pytest.fixture(scope="module")
def hub(netns: Netns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data = tmp_path_factory.mktemp("jobsns") / "hub"
    h = Hub(data, extra=["--msg-warmup", "0"], host=netns.outside).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def pair(hub: Hub, netns: Netns) -> Iterator[tuple[Client, Client]]:
    """``admin`` sends from out here; ``bob`` receives inside the namespace
    (his login made from there). Short config folders (msg.sock)."""
    base = Path(tempfile.mkdtemp(prefix="fjns-", dir="/tmp"))
    try:
        admin = fast(Client(base / "a", hub))
        admin.login()
        admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
        admin.run("users", "add", "carol", "--password-stdin", input=CAROL + "\n")
        bob = fast(Client(base / "b", hub))
        login = run_inside(
            netns,
            bob,
            "login",
            hub.url,
            "--user",
            "bob",
            "--password-stdin",
            "--fingerprint",
            hub.fingerprint,
            input=BOB_PASSWORD + "\n",
        )
        assert login.returncode == 0, login.stderr
        yield admin, bob
    finally:
        shutil.rmtree(base, ignore_errors=True)


def inside(ns: Netns, client: Client, *args: str) -> subprocess.Popen[str]:
    """``freight ARGS`` as ``client``, run inside the namespace."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, PYTHON, "-m", "freight", *args],
        env=client.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_inside(
    ns: Netns, client: Client, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``freight ARGS`` inside the namespace, to its end (killed at the deadline)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, PYTHON, "-m", "freight", *args],
        env=client.env,
        input=input,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


class Receiver:
    """``freight job receive APP -o OUT --once --json`` inside the namespace;
    its output collected in the background."""

    def __init__(self, ns: Netns, bob: Client, app: str, out: Path, *args: str) -> None:
        self.p = inside(ns, bob, "job", "receive", app, "-o", str(out), "--once", "--json", *args)
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self.p.stdout, self._out), daemon=True),
            threading.Thread(target=self._drain, args=(self.p.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(pipe: Any, into: list[str]) -> None:
        for line in pipe:
            into.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self._out) if line.strip()]

    def ready(self) -> None:
        def seen() -> bool:
            if "Waiting for jobs" in self.stderr:
                return True
            if self.p.poll() is not None:
                raise AssertionError(f"the receiver exited {self.p.returncode}: {self.stderr}")
            return False

        wait_until(seen, DEADLINE, "the receiver to be ready")

    def wait(self) -> int:
        code = self.p.wait(DEADLINE)
        for t in self._readers:
            t.join(5)
        return code

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_files(root: Path) -> tuple[Path, Path]:
    """A 2 MiB file and a folder of a few files (one empty, one 1 MiB)."""
    big = root / "big.bin"
    big.write_bytes(os.urandom(2 * MiB + 5))
    folder = root / "parcel"
    (folder / "sub").mkdir(parents=True)
    (folder / "hello.txt").write_bytes(b"hello from outside\n")
    (folder / "sub" / "one.bin").write_bytes(os.urandom(MiB + 3))
    (folder / "empty").write_bytes(b"")
    return big, folder


CONTENT_BYTES = 2 * MiB + 5 + MiB + 3 + len(b"hello from outside\n")  # what make_files writes


def run_job(
    ns: Netns,
    admin: Client,
    bob: Client,
    tmp_path: Path,
    app: str,
    manners: str,
    *,
    dest: str = "bob",
) -> tuple[dict[str, Any], dict[str, Any], Receiver]:
    """One job from admin out here to bob in the namespace; the sender's and
    the receiver's records (``job show --json``), the receiver finished."""
    big, folder = make_files(tmp_path)
    out = tmp_path / "out"
    with Receiver(ns, bob, app, out) as recv:
        recv.ready()
        sent = admin.run(
            "job",
            "send",
            dest,
            app,
            str(big),
            str(folder),
            "--manner",
            manners,
            "--json",
            timeout=DEADLINE,
        )
        assert recv.wait() == 0, recv.stderr
    events = [json.loads(line) for line in sent.stdout.splitlines() if line.strip()]
    jid = next(e["id"] for e in events if e.get("event") == "job")
    done = events[-1]
    assert done["event"] == "done"
    assert done["ok"] is True, done
    assert (out / "big.bin").read_bytes() == big.read_bytes()
    assert tree(out / "parcel") == tree(folder)
    theirs = recv.events()[-1]
    assert theirs["event"] == "done" and theirs["ok"] is True, theirs
    mine = json.loads(admin.run("job", "show", str(jid), "--json").stdout)
    show = run_inside(ns, bob, "job", "show", mine["uuid"], "--json")
    assert show.returncode == 0, show.stderr
    return mine, json.loads(show.stdout), recv


def test_direct_reachable_job_goes_by_direct(
    netns: Netns, pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, bob = pair
    netns.count_syns()
    try:
        mine, theirs, _ = run_job(netns, admin, bob, tmp_path, "ns-direct", "direct,relay,ref")
        # The sender's one connection came in over the veth pair (the
        # receiver's own, to the hub, go out).
        assert netns.syns() == 1
    finally:
        netns.open()
    assert mine["state"] == "ok"
    assert mine["manner"] == "direct"
    assert mine["bytes"] == CONTENT_BYTES
    assert mine["files"] == 4
    assert [(a["manner"], a["verdict"]) for a in mine["attempts"]] == [("direct", "ok")]
    assert theirs["state"] == "ok"
    assert theirs["blake3"] == mine["blake3"]
    assert [(a["manner"], a["verdict"]) for a in theirs["attempts"]] == [("direct", "ok")]


def assert_direct_gave_way_to_relay(
    netns: Netns, mine: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any]:
    """Both ends' records of a job whose direct attempt got no answer within
    a second and which relay then carried; the failed direct attempt."""
    assert mine["state"] == "ok"
    assert mine["manner"] == "relay"
    direct, relay = mine["attempts"]
    assert (direct["manner"], direct["verdict"]) == ("direct", "failed")
    assert f"{netns.inside}:" in direct["reason"]
    assert "no answer within 1 s" in direct["reason"]
    assert direct["elapsed"] < 1.5
    assert (relay["manner"], relay["verdict"]) == ("relay", "ok")
    assert theirs["state"] == "ok"
    assert theirs["blake3"] == mine["blake3"]
    return dict(direct)


def test_black_holed_direct_falls_back_to_relay_within_a_second(
    netns: Netns, pair: tuple[Client, Client], tmp_path: Path
) -> None:
    admin, bob = pair
    netns.black_hole()
    try:
        mine, theirs, _ = run_job(netns, admin, bob, tmp_path, "ns-hole", "direct,relay,ref")
    finally:
        netns.open()
    direct = assert_direct_gave_way_to_relay(netns, mine, theirs)
    text = admin.run("job", "show", str(mine["id"])).stdout
    assert "by relay in " in text
    assert "direct  failed" in text
    assert direct["reason"] in text
    # The receiver's record says why its listener got no one.
    gave_up, carried = theirs["attempts"]
    assert (gave_up["manner"], gave_up["verdict"]) == ("direct", "failed")
    assert gave_up["reason"] == f"the sender gave it up: {direct['reason']}"
    assert (carried["manner"], carried["verdict"]) == ("relay", "ok")


def test_by_reference_only(netns: Netns, pair: tuple[Client, Client], tmp_path: Path) -> None:
    admin, bob = pair
    mine, theirs, _ = run_job(netns, admin, bob, tmp_path, "ns-ref", "ref")
    assert mine["state"] == "ok"
    assert mine["manner"] == "ref"
    assert mine["bytes"] == CONTENT_BYTES
    assert [(a["manner"], a["verdict"]) for a in mine["attempts"]] == [("ref", "ok")]
    assert theirs["state"] == "ok"
    assert theirs["blake3"] == mine["blake3"]
    assert [(a["manner"], a["verdict"]) for a in theirs["attempts"]] == [("ref", "ok")]


# --- a network whose only way out is an HTTP proxy -----------------------------------


class OutsideProxy(TinyProxy):
    """tinyproxy on every address here, serving the namespace's address."""

    def __init__(self, workdir: Path, ns: Netns) -> None:
        super().__init__(workdir)
        self.ns = ns

    @property
    def url(self) -> str:
        return f"http://{self.ns.outside}:{self.port}"

    def _config(self) -> str:
        lines = [
            f"Port {self.port}",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            "MaxClients 100",
            "Allow 127.0.0.1",
            f"Allow {self.ns.inside}",
            "DisableViaHeader Yes",
        ]
        return "\n".join(lines) + "\n"

    def connects(self) -> int:
        """CONNECT requests for the hub the proxy logged."""
        return len(re.findall(rf"CONNECT {re.escape(self.ns.outside)}:\d+ HTTP/1\.1", self.log()))


@pytest.fixture
def behind_proxy(
    netns: Netns, hub: Hub, pair: tuple[Client, Client], tmp_path: Path
) -> Iterator[tuple[Client, OutsideProxy]]:  # pair: carol's account
    """``carol`` in the namespace, which reaches only the proxy out here;
    she logged in through it."""
    proxy = OutsideProxy(tmp_path / "proxy", netns)
    with proxy:
        netns.proxy_only(proxy.port)
        try:
            base = Path(tempfile.mkdtemp(prefix="fjns-", dir="/tmp"))
            try:
                carol = fast(Client(base / "c", hub))
                login = run_inside(
                    netns,
                    carol,
                    "login",
                    hub.url,
                    "--user",
                    "carol",
                    "--password-stdin",
                    "--fingerprint",
                    hub.fingerprint,
                    "--proxy",
                    proxy.url,
                    input=CAROL + "\n",
                )
                assert login.returncode == 0, login.stderr
                yield carol, proxy
            finally:
                shutil.rmtree(base, ignore_errors=True)
        finally:
            netns.open()


def test_proxy_only_network_job_completes_by_relay(
    netns: Netns,
    pair: tuple[Client, Client],
    behind_proxy: tuple[Client, OutsideProxy],
    tmp_path: Path,
) -> None:
    admin, _ = pair
    carol, proxy = behind_proxy
    mine, theirs, _ = run_job(
        netns, admin, carol, tmp_path, "ns-proxy", "direct,relay,ref", dest="carol"
    )
    direct = assert_direct_gave_way_to_relay(netns, mine, theirs)
    assert theirs["attempts"][0]["reason"] == f"the sender gave it up: {direct['reason']}"
    # Every connection carol made went through the proxy (nothing else
    # leaves the namespace), and there were some.
    assert proxy.connects() > 0


def test_failed_reference_fetch_ends_the_attempt_at_the_sender(
    netns: Netns, pair: tuple[Client, Client], tmp_path: Path
) -> None:
    """The receiver cannot write what it fetches (its output folder lies
    under a regular file): it records the attempt as failed and tells the
    sender, who should end the job with that reason within seconds."""
    admin, bob = pair
    src = tmp_path / "ref.bin"
    src.write_bytes(os.urandom(MiB))
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder\n")
    with Receiver(netns, bob, "ns-ref-fails", blocker / "out") as recv:
        recv.ready()
        try:
            sent = admin.run(
                "job",
                "send",
                "bob",
                "ns-ref-fails",
                str(src),
                "--manner",
                "ref",
                check=False,
                timeout=10,
            )
        except subprocess.TimeoutExpired:
            rows = json.loads(run_inside(netns, bob, "job", "list", "--json").stdout)
            theirs = run_inside(netns, bob, "job", "show", str(rows[0]["id"]), "--json").stdout
            pytest.fail(
                "the sender still waited 10 s after the receiver's attempt failed; the "
                f"receiver's record: {theirs}"
            )
        assert sent.returncode == 7, sent.stderr
        assert "no manner worked: ref: " in sent.stderr
        assert recv.wait() == 7, recv.stderr


def test_proxy_only_network_job_by_reference(
    netns: Netns,
    pair: tuple[Client, Client],
    behind_proxy: tuple[Client, OutsideProxy],
    tmp_path: Path,
) -> None:
    admin, _ = pair
    carol, _ = behind_proxy
    src = tmp_path / "ref.bin"
    src.write_bytes(os.urandom(MiB))
    out = tmp_path / "out"
    with Receiver(netns, carol, "ns-proxy-ref", out) as recv:
        recv.ready()
        try:
            sent = admin.run(
                "job",
                "send",
                "carol",
                "ns-proxy-ref",
                str(src),
                "--manner",
                "ref",
                "--json",
                timeout=12,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                "no end 12 s into a by-reference job through the proxy; the receiver said: "
                f"{recv.stderr[-1000:]}"
            )
        assert recv.wait() == 0, recv.stderr
    assert (out / "ref.bin").read_bytes() == src.read_bytes()
    done = json.loads(sent.stdout.splitlines()[-1])
    assert (done["ok"], done["manner"]) == (True, "ref")
