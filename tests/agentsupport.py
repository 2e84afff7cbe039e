"""Helpers for the agent tests: enrol an agent (its own config folder),
run ``freight agent run`` as a real process, and ask the hub about agents
and commands through the SDK (quicker to poll than a CLI process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from freight.client.config import ClientConfig
from freight.client.session import HubSession
from tests.relaysupport import fast
from tests.support import PYTHON, Client, Hub, wait_until


def api(client: Client, method: str, path: str, body: Any = None) -> Any:
    """One REST call to the hub with ``client``'s saved login."""

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(client.config)) as session:
            return await session.request(method, path, body)

    return asyncio.run(go())


def agent_rows(admin: Client) -> dict[str, dict[str, Any]]:
    """``GET /v1/agents`` by name (what ``freight agents ls --json`` prints)."""
    return {r["name"]: r for r in api(admin, "GET", "/v1/agents")}


def make_token(admin: Client, name: str, ttl: str = "10m") -> dict[str, Any]:
    res = admin.run("agents", "token", "--name", name, "--ttl", ttl, "--json")
    return dict(json.loads(res.stdout))


def enroll(
    client: Client, token: str, *roots: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``freight agent enroll URL TOKEN --root …``, as ``agents token`` prints it."""
    hub = client.hub
    args = ["agent", "enroll", hub.url, token, "--fingerprint", hub.fingerprint]
    for r in roots:
        args += ["--root", str(r)]
    return client.run(*args, check=check, timeout=60)


class AgentProc:
    """A running ``freight agent run``; its log (JSON lines, continuously
    written) goes to a file, never to a pipe nobody reads."""

    def __init__(self, client: Client, log: Path) -> None:
        self.client = client
        self.log_path = log
        self._log = open(log, "a")  # noqa: SIM115 - closed in kill()/wait()
        self.p = subprocess.Popen(
            [PYTHON, "-m", "freight", "agent", "run"],
            env=client.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def running(self) -> bool:
        return self.p.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 10) -> int:
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"agent still running after {timeout} s\nlog: {self.log()[-3000:]}"
            ) from None
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL (also the clean-up in every teardown)."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self._log.close()

    def __enter__(self) -> AgentProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_online(
    admin: Client,
    name: str,
    online: bool = True,
    timeout: float = 15,
    proc: AgentProc | None = None,
) -> None:
    """Until the hub shows ``name`` online (or offline); fails at once if
    ``proc``, the agent that should come online, exits instead."""
    state = "online" if online else "offline"

    def seen() -> bool:
        if agent_rows(admin).get(name, {}).get("online") is online:
            return True
        if proc is not None and not proc.running:
            raise AssertionError(
                f"agent {name} exited {proc.p.returncode} before it was {state}\n"
                f"log: {proc.log()[-3000:]}"
            )
        return False

    wait_until(seen, timeout, f"agent {name} {state}")


class Agent:
    """An enrolled agent: its config folder, roots and (when running) process."""

    def __init__(self, admin: Client, hub: Hub, name: str, home: Path, *roots: Path) -> None:
        self.admin = admin
        self.name = name
        self.home = home
        self.roots = roots
        self.client = fast(Client(home / "config", hub))
        self.proc: AgentProc | None = None
        self.runs = 0
        token = api(admin, "POST", "/v1/agents/tokens", {"name": name, "ttl": 600})["token"]
        enroll(self.client, token, *roots)

    def start(self, wait: bool = True) -> AgentProc:
        assert self.proc is None or not self.proc.running, "agent already running"
        self.runs += 1
        self.proc = AgentProc(self.client, self.home / f"agent-{self.runs}.log")
        if wait:
            try:
                wait_online(self.admin, self.name, proc=self.proc)
            except BaseException:
                self.proc.kill()
                raise
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def remote(self, path: Path | str) -> str:
        """``NAME:/path`` for ``freight ls`` and ``freight cp``."""
        return f"{self.name}:{path}"


# --- trees -----------------------------------------------------------------------
