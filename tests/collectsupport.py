"""Helpers for the collection tests and ``bench/collect.py``: enrol agents
(each with its own config folder and root), run ``freight agent run`` as
real processes (logs to a file, never to an unread pipe), poll the hub
through the SDK (quicker than a CLI process per poll) and check the hub's
content-addressed store against the files on the agents."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import blake3

from freight.client.config import ClientConfig
from freight.client.session import HubSession
from tests.support import PYTHON, Client, Hub

# Quick reconnects and retries: no test waits for a long back-off (the
# agent's uploads read FREIGHT_RETRY_INTERVAL too: agent/offers.py).
FAST_AGENT = {
    "FREIGHT_RELAY_BACKOFF": "0.2",
    "FREIGHT_RELAY_BACKOFF_MAX": "1",
    "FREIGHT_RETRY_INTERVAL": "0.2",
}


def poll(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Like ``wait_until``, but gentler: each check here is an HTTPS request
    to a hub that has work to do on few CPUs."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def api(client: Client, method: str, path: str, body: Any = None) -> Any:
    """One REST call to the hub with ``client``'s saved login."""

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(client.config)) as session:
            return await session.request(method, path, body)

    return asyncio.run(go())


def stats(admin: Client) -> dict[str, int]:
    """``freight collected stats --json``, through the SDK."""
    return dict(api(admin, "GET", "/v1/collected/stats"))


def catalogue(admin: Client) -> list[dict[str, Any]]:
    """``freight collected ls --json`` (the CLI, as a user would)."""
    return list(json.loads(admin.run("collected", "ls", "--json").stdout))


def hub_metric(hub: Hub, name: str) -> float:
    """A counter from the hub's Prometheus ``/metrics`` (since its start)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # loopback, the hub's self-signed certificate
    with urllib.request.urlopen(hub.url + "/metrics", context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{re.escape(name)}(?:_total)? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def blake3_of(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def cas_files(hub: Hub) -> dict[str, Path]:
    """The hub's content-addressed store: digest -> file."""
    return {p.name: p for p in (hub.data / "cas").glob("*/*") if p.is_file()}


def check_cas(hub: Hub) -> dict[str, Path]:
    """Every stored file's BLAKE3 is its name (and it sits in the right
    ``xx/`` folder); returns the store."""
    store = cas_files(hub)
    for digest, p in store.items():
        assert p.parent.name == digest[:2], f"{p} is in the wrong folder"
        actual = blake3_of(p)
        assert actual == digest, f"{p} holds content {actual[:16]}…, not {digest[:16]}…"
    return store


def contents(paths: Iterable[Path]) -> dict[str, int]:
    """Distinct contents among ``paths``: digest -> size."""
    return {blake3_of(p): p.stat().st_size for p in paths}


class AgentProc:
    """One enrolled agent: its config folder, its root, and (while running)
    its ``freight agent run`` process with stderr appended to a log file."""

    def __init__(self, name: str, home: Path, root: Path, client: Client) -> None:
        self.name = name
        self.home = home
        self.root = root
        self.client = client
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_path = home / "agent.log"

    def start(self) -> AgentProc:
        assert not self.running, f"{self.name} is already running"
        self.runs += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- run {self.runs}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "freight", "agent", "run"],
                env=self.client.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (also the teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def enroll_agents(admin: Client, hub: Hub, base: Path, names: list[str]) -> list[AgentProc]:
    """Enrol agents ``names`` (root ``base/NAME/root``, config
    ``base/NAME/config``); the enrolments run in parallel."""
    agents: list[AgentProc] = []
    procs: list[subprocess.Popen[str]] = []
    for name in names:
        home = base / name
        root = home / "root"
        root.mkdir(parents=True, exist_ok=True)
        c = Client(home / "config", hub)
        c.env.update(FAST_AGENT)
        token = api(admin, "POST", "/v1/agents/tokens", {"name": name, "ttl": 600})["token"]
        procs.append(
            # "--": whatever the token looks like, it is not an option.
            c.popen(
                "agent",
                "enroll",
                "--root",
                str(root),
                "--fingerprint",
                hub.fingerprint,
                "--",
                hub.url,
                token,
            )
        )
        agents.append(AgentProc(name, home, root, c))
    for p, a in zip(procs, agents, strict=True):
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 0, f"enrolment of {a.name} failed: {err}"
    return agents


def add_policy(
    admin: Client,
    name: str,
    *,
    agents: str = "*",
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    max_size: str = "0",
    every: str = "10s",
) -> None:
    """``freight collect add`` (the CLI)."""
    args = ["collect", "add", name, "--agents", agents, "--max-size", max_size, "--every", every]
    for g in include:
        args += ["--include", g]
    for g in exclude:
        args += ["--exclude", g]
    admin.run(*args)


def online(admin: Client) -> dict[str, bool]:
    return {r["name"]: bool(r["online"]) for r in api(admin, "GET", "/v1/agents")}


def wait_online(admin: Client, agents: Iterable[AgentProc], timeout: float = 20) -> None:
    agents = list(agents)

    def up() -> bool:
        for a in agents:
            if not a.running:
                raise AssertionError(f"agent {a.name} exited\n{a.log()[-3000:]}")
        now = online(admin)
        return all(now.get(a.name) for a in agents)

    poll(up, timeout, "agents online")


def wait_collected(
    admin: Client,
    unique: int,
    timeout: float = 30,
    agents: Iterable[AgentProc] = (),
    what: str = "collection to finish",
) -> dict[str, int]:
    """Until ``unique_files == unique`` and nothing is pending; fails at
    once if an agent that should be running has exited."""
    agents = list(agents)
    last: dict[str, int] = {}

    def done() -> bool:
        nonlocal last
        for a in agents:
            if a.proc is not None and not a.running:
                raise AssertionError(f"agent {a.name} exited\n{a.log()[-3000:]}")
        last = stats(admin)
        return last["unique_files"] == unique and last["pending"] == 0

    try:
        poll(done, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last stats {last}") from None
    return last


def hub_events(hub: Hub, kind: str) -> list[dict[str, Any]]:
    """Structured events the hub logged (JSON lines on stderr) since its
    last start()."""
    out = []
    for line in list(hub.lines):
        if line.startswith("{") and f'"{kind}"' in line:
            ev = json.loads(line)
            if ev.get("event") == kind:
                out.append(ev)
    return out


def partial_of(hub: Hub, agent: str) -> int:
    """Bytes on the hub's disk of ``agent``'s newest collection upload
    still in progress (0 if none)."""
    starts = [e for e in hub_events(hub, "stream_start") if e.get("actor") == agent]
    if not starts:
        return 0
    sid = starts[-1]["sid"]
    parts = list((hub.data / "partial").glob(f"*/{sid}.part"))
    try:
        return parts[0].stat().st_size if parts else 0
    except FileNotFoundError:  # finished meanwhile
        return 0


def run_command(admin: Client, agent: str, kind: str, timeout: float = 20) -> dict[str, Any]:
    """``freight agents cmd AGENT KIND --wait 0``, then poll the command
    (no long-poll: ``GET …?wait=`` can miss the result that arrives while
    it starts waiting, and then sits out its whole wait)."""
    queued = json.loads(admin.run("agents", "cmd", agent, kind, "--wait", "0").stdout)
    row: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal row
        row = api(admin, "GET", f"/v1/agents/commands/{queued['id']}")
        return row["state"] in ("done", "failed")

    poll(finished, timeout, f"{kind} on {agent} to finish")
    return row
