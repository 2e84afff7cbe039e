"""The firewall promise for every transfer: behind a TLS-inspecting proxy
that passes neither WebSockets nor anything but TLS, push, pull, ``cp`` to
and from an agent, the agent's file commands and collection complete with
identical bytes, over plain HTTP.

Two such proxies, each in front of its own admin client and agent: the test
suite's (tests/tlsproxy.py) and a real squid with ssl-bump (tests/squid.py;
skipped, with the reason, where squid-openssl is not installed). Both trust
a CA the test made (``--ca-file``). The hub sits behind tests/httpproxy.py's
Firewall, which forwards only connections coming from the proxy: whatever
succeeds went through the proxy, so over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.collectsupport import FAST_AGENT, AgentProc, add_policy, api, blake3_of, cas_files
from tests.collectsupport import poll as poll_hub
from tests.collectsupport import wait_online as wait_agents_online
from tests.httpproxy import Firewall
from tests.relaysupport import fast
from tests.squid import Squid
from tests.support import (
    ADMIN_PASSWORD,
    Client,
    Hub,
    assert_same_tree,
    make_tree,
    random_file,
    same_bytes,
    wait_until,
)
from tests.tlsproxy import InspectingProxy

MiB = 1024 * 1024


@dataclass
class Behind:
    """An admin client and a running agent, both behind one proxy."""

    kind: str
    hub: Hub
    firewall: Firewall
    proxy_url: str
    ca_pem: Path
    admin: Client
    agent: AgentProc
    inspecting: InspectingProxy | None

    @property
    def root(self) -> Path:
        return self.agent.root

    def remote(self, path: Path | str) -> str:
        return f"{self.agent.name}:{path}"


def login_behind(client: Client, url: str, proxy_url: str, ca_pem: Path) -> None:
    client.run(
        "login",
        url,
        "--user",
        "admin",
        "--password-stdin",
        "--proxy",
        proxy_url,
        "--ca-file",
        str(ca_pem),
        input=ADMIN_PASSWORD + "\n",
    )


def enroll_behind(
    admin: Client, b_hub: Hub, home: Path, name: str, fw: Firewall, proxy: Any
) -> AgentProc:
    """An agent enrolled through the proxy: TLS trusted through the proxy's
    CA, logins bound to the hub's own certificate (which it cannot see)."""
    root = home / "root"
    root.mkdir(parents=True)
    c = Client(home / "config", b_hub)
    c.env.update(FAST_AGENT)
    token = api(admin, "POST", "/v1/agents/tokens", {"name": name, "ttl": 600})["token"]
    c.run(
        "agent",
        "enroll",
        "--root",
        str(root),
        "--proxy",
        proxy.url,
        "--ca-file",
        str(proxy.ca_pem),
        "--fingerprint",
        b_hub.fingerprint,
        "--",
        fw.url,
        token,
        timeout=60,
    )
    return AgentProc(name, home, root, c)


@pytest.fixture(scope="module", params=["inspecting", "squid"])
def behind(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub
) -> Iterator[Behind]:
    kind = str(request.param)
    tmp = tmp_path_factory.mktemp(kind)
    with contextlib.ExitStack() as stack:
        proxy: Any
        if kind == "squid":
            proxy = stack.enter_context(Squid())
        else:
            proxy = stack.enter_context(InspectingProxy(tmp / "proxy"))
        fw = stack.enter_context(Firewall(shared_hub.port))
        admin = fast(Client(tmp / "admin", shared_hub))
        login_behind(admin, fw.url, proxy.url, proxy.ca_pem)
        agent = enroll_behind(admin, shared_hub, tmp / "agent", f"fw-{kind}", fw, proxy)
        stack.callback(agent.kill)
        agent.start()
        wait_agents_online(admin, [agent], timeout=60)
        yield Behind(
            kind,
            shared_hub,
            fw,
            proxy.url,
            proxy.ca_pem,
            admin,
            agent,
            proxy if isinstance(proxy, InspectingProxy) else None,
        )
        assert fw.direct == 0, "something reached the hub without the proxy"


def pushed(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(res.stdout)["pushed"]
    return rows[0]


def test_push_and_pull(behind: Behind, tmp_path: Path) -> None:
    """``auto`` finds the WebSocket refused and carries the streams over
    plain HTTP; the sealed data connection is refused too and the frames
    travel inside the HTTP attachment."""
    admin = behind.admin
    size = 5 * MiB + 123
    src = random_file(tmp_path / "a.bin", size, seed=11)
    name = f"{behind.kind}/a.bin"
    assert pushed(admin.run("push", str(src), "--as", name, "--json"))["size"] == size
    back = tmp_path / "a.back"
    admin.run("pull", name, str(back), "--json")
    assert same_bytes(src, back)
    if behind.inspecting is not None:
        assert behind.inspecting.upgrades_refused >= 1  # a WebSocket was tried, refused
        assert behind.inspecting.non_tls >= 1  # and so was a sealed data connection
    assert behind.firewall.accepted >= 1

    # Told to use only the WebSocket, a push fails and says what to do.
    admin.env["FREIGHT_RETRY_GIVE_UP"] = "1"
    try:
        res = admin.run("push", str(src), "--as", name + ".ws", "--transport", "ws", check=False)
    finally:
        admin.env["FREIGHT_RETRY_GIVE_UP"] = "60"
    assert res.returncode == 6, res.stderr
    assert "WebSocket refused: 400" in res.stderr and "--transport http" in res.stderr


def test_cp_to_and_from_the_agent(behind: Behind, tmp_path: Path) -> None:
    admin = behind.admin
    tree = make_tree(tmp_path / "tree", seed=21)
    admin.run("cp", "-r", str(tree), behind.remote(behind.root), "--quiet")
    assert_same_tree(tree, behind.root / "tree")
    big = random_file(tmp_path / "big.bin", 6 * MiB + 5, seed=22)
    admin.run("cp", str(big), behind.remote(behind.root), "--quiet")
    assert same_bytes(big, behind.root / "big.bin")

    down = tmp_path / "down"
    down.mkdir()
    admin.run("cp", "-r", behind.remote(behind.root / "tree"), str(down), "--quiet")
    assert_same_tree(tree, down / "tree")
    admin.run("cp", behind.remote(behind.root / "big.bin"), str(down), "--quiet")
    assert same_bytes(big, down / "big.bin")


def run_cmd(admin: Client, agent: str, kind: str, *args: str) -> dict[str, Any]:
    """``freight agents cmd AGENT KIND --arg k=v … --wait 60``: its row."""
    extra = [x for a in args for x in ("--arg", a)]
    res = admin.run("agents", "cmd", agent, kind, *extra, "--wait", "60", timeout=90)
    row: dict[str, Any] = json.loads(res.stdout)
    assert row["state"] == "done", row
    return row


def test_agent_send_file_and_receive_file(behind: Behind, tmp_path: Path) -> None:
    """The agent's own uploads and downloads (its links, not its attachment)."""
    admin, name = behind.admin, behind.agent.name
    refused_before = behind.inspecting.upgrades_refused if behind.inspecting else 0
    src = random_file(behind.root / "report.bin", 4 * MiB + 9, seed=31)
    got = f"{behind.kind}/from-agent.bin"
    run_cmd(admin, name, "send_file", f"path={src}", f"name={got}")
    admin.run("pull", got, str(tmp_path / "got.bin"), "--quiet")
    assert same_bytes(src, tmp_path / "got.bin")

    local = random_file(tmp_path / "fix.bin", 3 * MiB + 1, seed=32)
    hub_name = f"{behind.kind}/fix.bin"
    admin.run("push", str(local), "--as", hub_name, "--quiet")
    run_cmd(admin, name, "receive_file", f"name={hub_name}", f"dest={behind.root}/inbox/fix.bin")
    assert same_bytes(local, behind.root / "inbox" / "fix.bin")
    if behind.inspecting is not None:
        # The agent learnt at attach that WebSockets do not pass: its
        # transfers went straight to HTTP, without asking again. (The
        # admin's push and pull here refused one upgrade each.)
        assert behind.inspecting.upgrades_refused == refused_before + 2


def test_collection(behind: Behind, tmp_path: Path) -> None:
    admin, name = behind.admin, behind.agent.name
    files = {
        "c/one.dat": random_file(behind.root / "one.dat", 300_000, seed=41),
        "c/two.dat": random_file(behind.root / "two.dat", 2 * MiB + 7, seed=42),
    }
    digests = {blake3_of(p): p for p in files.values()}
    add_policy(admin, f"fw-{behind.kind}", agents=name, include=["*.dat"], every="1h")

    def stored() -> dict[str, str]:
        rows = api(admin, "GET", "/v1/collected")
        mine = [r for r in rows if any(h["agent"] == name for h in r["holders"])]
        return {r["digest"]: r["state"] for r in mine}

    poll_hub(
        lambda: {d: "stored" for d in digests}.items() <= stored().items(),
        60,
        f"{name}'s files collected",
    )
    store = cas_files(behind.hub)
    for digest, path in digests.items():
        assert store[digest].read_bytes() == path.read_bytes()
        out = tmp_path / digest[:8]
        admin.run("collected", "get", digest, str(out))
        assert same_bytes(path, out)


def test_push_resumes_over_http_after_the_client_is_killed(
    behind: Behind, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """A push over HTTP interrupted mid-way resumes from its checkpoint."""
    admin, hub = behind.admin, behind.hub
    size = 48 * MiB
    src = random_file(tmp_path / "resume.bin", size, seed=51)
    name = f"{behind.kind}/resume.bin"
    args = ("push", str(src), "--as", name, "--transport", "http", "--json")
    proc = spawn(admin, *args, "--limit", "16M")
    wait_until(lambda: hub.partial_size() >= 20 * MiB, 60, "20 MiB at the hub")
    proc.kill()
    proc.wait(10)
    at_kill = hub.partial_size()
    row = pushed(admin.run(*args))
    assert row["restarted"] is False
    assert 0 < row["resumed_from"] <= at_kill < size
    assert at_kill - row["resumed_from"] <= 8 * MiB  # at most one checkpoint interval lost
    back = tmp_path / "resume.back"
    admin.run("pull", name, str(back), "--quiet")
    assert same_bytes(src, back)


def test_push_over_http_survives_the_proxy_cutting_every_connection(
    behind: Behind, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    if behind.inspecting is None:
        pytest.skip("only the test suite's proxy can cut its connections on demand")
    proxy = behind.inspecting
    size = 32 * MiB
    src = random_file(tmp_path / "cut.bin", size, seed=61)
    name = f"{behind.kind}/cut.bin"
    proc = spawn(behind.admin, "push", str(src), "--as", name, "--limit", "16M", "--json")
    wait_until(lambda: behind.hub.partial_size() >= 8 * MiB, 60, "8 MiB at the hub")
    assert proxy.cut() >= 2  # the down response and at least one other
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["pushed"][0]["size"] == size
    back = tmp_path / "cut.back"
    behind.admin.run("pull", name, str(back), "--quiet")
    assert same_bytes(src, back)


def test_enrolment_behind_the_proxy_checks_the_hubs_own_fingerprint(
    behind: Behind, tmp_path: Path
) -> None:
    """The fingerprint that logins will name must be the hub's: the hub's
    answer to the enrolment says which it is."""
    c = Client(tmp_path / "config", behind.hub)
    name = f"fw-{behind.kind}-wrong"
    token = api(behind.admin, "POST", "/v1/agents/tokens", {"name": name, "ttl": 600})["token"]
    wrong = "SHA256:" + "ab" * 32
    res = c.run(
        "agent",
        "enroll",
        "--root",
        str(tmp_path),
        "--proxy",
        behind.proxy_url,
        "--ca-file",
        str(behind.ca_pem),
        "--fingerprint",
        wrong,
        "--",
        behind.firewall.url,
        token,
        check=False,
        timeout=60,
    )
    assert res.returncode == 4, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"not the expected {wrong}" in lines[0], res.stderr
    assert behind.hub.fingerprint in lines[0]
    assert not (tmp_path / "config" / "agent.json").exists()


def test_push_over_http_rides_out_a_hub_restart_from_its_checkpoint(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    """The hub is killed mid-push: its HTTP attachment is gone with it, so
    the running client attaches again over HTTP and the stream resumes from
    the hub's last durable checkpoint, in the same process."""
    hub = hubs()
    client = Client(tmp_path / "client", hub)
    client.login()
    size = 48 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=71)
    args = ("push", str(src), "--as", "src.bin", "--transport", "http", "--data-path", "tls")
    proc = spawn(client, *args, "--limit", "16M", "--json")
    wait_until(lambda: hub.partial_size() >= 20 * MiB, 60, "20 MiB at the hub")
    hub.kill()
    assert proc.poll() is None, "the client must not give up while the hub is down"
    hub.start()  # same data folder and port
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err + hub.log()[-3000:]
    row = json.loads(out)["pushed"][0]
    assert row["size"] == size and row["attempts"] >= 2
    resumes = [line for line in hub.lines if '"stream_resume"' in line]
    assert resumes, hub.log()[-3000:]
    assert json.loads(resumes[0])["checkpoint"] > 0
    back = tmp_path / "back.bin"
    client.run("pull", "src.bin", str(back), "--transport", "http", "--quiet")
    assert same_bytes(src, back)
