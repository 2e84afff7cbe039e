"""``freight agent run``: log in with the agent's key, stay attached, serve.

The loop never gives up on the network: a hub that is down or restarting is
retried with jittered back-off (the relay client re-attaches by itself once
logged in), and a hub that says "rate limited" is asked again after the
Retry-After it gives. Only a refusal of the agent's key (removed or
disabled by an admin) stops it, with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import structlog

from .. import __version__
from ..client.config import ClientConfig
from ..client.msghost import MessageHost
from ..client.msglocal import MessageSocket
from ..client.relay import RelayClient, identity_key
from ..client.session import HubSession
from ..client.tunnels import TunnelServer
from ..client.udpforward import serve_udp
from ..errors import AuthError, FreightError, NetworkError, RateLimited
from ..protocol import messages as m
from ..protocol.agents import login_message
from ..protocol.errors import ProtocolError
from ..protocol.frames import encode_json
from ..protocol.limits import MAX_HEADER_BYTES, MAX_JSON_CHARS
from ..protocol.retry import Backoff, BackoffState
from ..protocol.tunnel import AllowList
from ..tasks import Supervisor
from . import filecommands
from .config import AgentConfig
from .files import APP, FileServer, list_dir
from .offers import Offerer
from .roots import OutsideRoots

log = structlog.get_logger("freight.agent")

# Attaching again after a failure: 0.5-1 s, doubling to 60 s, for ever.
ATTACH_BACKOFF = Backoff(first=1.0, max_delay=60.0, low=0.5)


def session_for(cfg: AgentConfig, token: str = "", transport: str = "auto") -> HubSession:
    """The agent's way to the hub. Its uploads and downloads (collection,
    send_file, receive_file) open their links on this session too, so they
    take the transport of ``agent run --transport``, and once ``auto`` found
    the WebSocket refused they all go straight to plain HTTP."""
    return HubSession(
        cfg.hub,
        nodes=cfg.nodes,
        fingerprint=cfg.fingerprint,
        token=token,
        proxy=cfg.proxy or None,
        ca_file=Path(cfg.ca_file) if cfg.ca_file else None,
        transport=transport,
    )


async def agent_login(cfg: AgentConfig, config: ClientConfig) -> str:
    """A fresh login token: sign the hub's challenge and the certificate
    fingerprint this agent trusts (the channel binding)."""
    key = identity_key(config)
    async with session_for(cfg) as session:
        fingerprint = cfg.fingerprint
        if not fingerprint:  # trusted through a CA: bind to what it presents
            from ..client.session import fetch_fingerprint

            fingerprint = await fetch_fingerprint(
                session.url, proxy=session.proxy, ca_file=session.ca_file
            )
        nonce = (await session.request("POST", "/v1/agents/challenge", {"name": cfg.name}))[
            "challenge"
        ]
        signature = key.sign(login_message(cfg.name, nonce, fingerprint)).hex()
        body = await session.request(
            "POST",
            "/v1/agents/login",
            {"name": cfg.name, "challenge": nonce, "signature": signature},
        )
        return str(body["token"])


class Agent:
    def __init__(self, cfg: AgentConfig, config: ClientConfig, transport: str = "auto") -> None:
        self.cfg = cfg
        self.config = config
        self.transport = transport
        self.roots = cfg.real_roots()
        self.relay: RelayClient | None = None
        self.done_results: dict[int, m.CommandResult] = {}
        self.running: set[int] = set()
        # Commands and file requests run beside the relay's reader; each
        # one's failure is its own (logged and counted), not the agent's.
        self.tasks = Supervisor("agent")
        self.offerer = Offerer(self)
        self.tunnels: TunnelServer | None = None  # forwards to the allowed targets
        # Re-attaching: the clock, random source and sleep are injectable.
        self.clock = time.monotonic
        self.rand = random.random
        self.sleep = asyncio.sleep

    async def report(self, op: str, path: str, peer: str, reason: str) -> None:
        log.warning("refused", op=op, path=path, peer=peer, reason=reason)
        if self.relay is not None:
            with contextlib.suppress(FreightError):
                await self.relay.session.request(
                    "POST",
                    "/v1/agents/security",
                    {"op": op, "path": path, "peer": peer, "reason": reason},
                )

    async def on_command(self, msg: m.AnyMessage) -> None:
        """Acknowledge at once; run the command beside the relay's reader
        (an upload takes long) and report its result."""
        assert isinstance(msg, m.Command) and self.relay is not None
        await self.relay.send_frame(m.CommandAck(id=msg.id))
        if msg.id in self.running:
            return  # delivered again while still running
        self.running.add(msg.id)
        self.tasks.spawn(self._run_command(msg), name=f"command-{msg.id}", detached=True)

    async def _run_command(self, msg: m.Command) -> None:
        try:
            result = self.done_results.get(msg.id)  # delivered again: same answer
            if result is None:
                result = await self.execute(msg)
                self.done_results[msg.id] = result
            if self.relay is not None:
                await self.relay.send_frame(sendable(result))
        finally:
            self.running.discard(msg.id)

    async def execute(self, msg: m.Command) -> m.CommandResult:
        try:
            args = json.loads(msg.args)
            if msg.kind == "upload":
                value: Any = await self.offerer.upload(args, self.relay)
            elif msg.kind == "rescan":
                self.offerer.trigger(resend=False)
                value = {"rescan": "started"}
            elif msg.kind == "resend_offers":
                self.offerer.trigger(resend=True)
                value = {"resend": "started"}
            elif msg.kind in ("send_file", "receive_file"):
                run = (
                    filecommands.send_file if msg.kind == "send_file" else filecommands.receive_file
                )
                try:
                    value = await run(self, msg.id, args)
                except OutsideRoots as exc:
                    where = args.get("path" if msg.kind == "send_file" else "dest")
                    await self.report(msg.kind, str(where), "hub", exc.message)
                    raise
            elif msg.kind == "ping":
                value = {"version": __version__, "roots": [str(r) for r in self.roots]}
            elif msg.kind == "list_dir":
                try:
                    offset = int(args.get("offset", 0))
                    value = list_dir(str(args.get("path", "/")), self.roots, offset)
                except OutsideRoots as exc:
                    await self.report("list_dir", str(args.get("path")), "hub", exc.message)
                    raise
            elif msg.kind == "forward_allow":
                value = self.forward_allow(args)
            elif msg.kind == "reload_config":
                self.cfg = AgentConfig.load(self.config)
                self.roots = self.cfg.real_roots()
                if self.tunnels is not None:
                    self.tunnels.allow = AllowList(self.cfg.allow_forward)
                value = {"roots": [str(r) for r in self.roots]}
            else:
                raise ValueError(f"unknown command {msg.kind!r}")
            return m.CommandResult(id=msg.id, ok=True, result=json.dumps(value))
        except (FreightError, OSError, ValueError) as exc:
            text = exc.message if isinstance(exc, FreightError) else str(exc)
            return m.CommandResult(id=msg.id, ok=False, result=json.dumps({"error": text}))

    async def run_once(self) -> None:
        token = await agent_login(self.cfg, self.config)
        relay = RelayClient(
            session_for(self.cfg, token, self.transport), self.config, transport=self.transport
        )
        relay.hello = f"freight-agent/{__version__}"
        relay.on_other = self.on_command
        self.relay = relay
        async with relay:
            await relay.start(identity=False)
            relay.identity = identity_key(self.config)
            server = FileServer(self.roots, self.report, self.cfg.allow_overwrite)
            listener = await relay.listen(APP)
            serve_udp()  # udp/HOST:PORT entries of the allow list
            self.tunnels = TunnelServer(
                relay, allow=AllowList(self.cfg.allow_forward), report=self.report
            )
            await self.tunnels.start()
            offering = self.tasks.spawn(self.offerer.run(relay), name="offers", detached=True)
            # The agent is a messaging host: applications on this machine
            # use msg.sock in its folder (freight.messaging.connect).
            messages = MessageHost(relay, self.config)
            msg_socket = MessageSocket(messages, self.config.root)
            try:
                await messages.start()
                await msg_socket.start()
            except FreightError as exc:  # files and commands are served regardless
                log.warning("messaging_unavailable", error=exc.message)
            log.info("attached", hub=self.cfg.hub, name=self.cfg.name, roots=self.cfg.roots)
            try:
                while True:
                    conn = await listener.accept()
                    server.roots = self.roots
                    server.allow_overwrite = self.cfg.allow_overwrite
                    self.tasks.spawn(self._serve(server, conn), name="files", detached=True)
            finally:
                offering.cancel()
                await self.tunnels.aclose()
                await msg_socket.aclose()
                await messages.aclose()

    def forward_allow(self, args: dict[str, Any]) -> dict[str, Any]:
        """An admin's ``freight agents forward-allow AGENT TARGET [--remove]``:
        kept in agent.json, in force at once."""
        allow = AllowList(self.cfg.allow_forward)
        entry = allow.add(str(args.get("target", "")))
        entries = allow.entries()
        if args.get("remove"):
            entries = [e for e in entries if e != entry]
        self.cfg.allow_forward = entries
        self.cfg.save(self.config)
        if self.tunnels is not None:
            self.tunnels.allow = AllowList(entries)
        log.info("forward_allow", target=entry, removed=bool(args.get("remove")))
        return {"allow_forward": entries}

    async def _serve(self, server: FileServer, conn: Any) -> None:
        try:
            await server.serve(conn)
        except (FreightError, TimeoutError, OSError) as exc:
            log.info("request_failed", peer=conn.peer, error=str(exc))
            await conn.abort("aborted", "the agent could not finish the request")

    async def run(self) -> None:
        failures = BackoffState(ATTACH_BACKOFF)
        while True:
            wait = 0.0  # at least this long before trying again
            # Every end of an attachment counts as a failure (an agent is
            # meant to stay attached): the wait after this attempt.
            delay = failures.failed(self.clock(), self.rand())
            assert delay is not None  # this policy never gives up
            try:
                await self.run_once()
            except RateLimited as exc:
                # Too many failed logins from this address (or a crowd of
                # agents logging in at once): wait as long as the hub says.
                wait = exc.retry_after
                log.info("rate_limited", error=exc.message, retry_in=round(max(wait, delay), 1))
            except AuthError as exc:
                # A login that expired while attached comes back as a refused
                # re-attach: log in again. A refused *key* stops the agent.
                log.info("logged_out", error=exc.message)
                try:
                    await agent_login(self.cfg, self.config)
                except RateLimited as limited:
                    wait = limited.retry_after
                    log.info("rate_limited", error=limited.message, retry_in=round(wait, 1))
                except AuthError as refused:
                    raise refused from None  # says why: removed, disabled
                except (NetworkError, OSError):
                    pass
            except (NetworkError, ProtocolError, OSError) as exc:
                log.info("hub_unreachable", error=str(exc), retry_in=round(delay, 1))
            await self.sleep(max(wait, delay))


def sendable(result: m.CommandResult) -> m.CommandResult:
    """``result``, or a failure saying why it cannot be sent: a result the
    hub cannot decode would cut the channel and have the command delivered
    again and again."""
    header = len(encode_json(result))
    if len(result.result) <= MAX_JSON_CHARS and header <= MAX_HEADER_BYTES:
        return result
    why = (
        f"the answer takes {header} bytes, more than a command result may "
        f"({MAX_HEADER_BYTES} bytes); ask for less"
    )
    return m.CommandResult(id=result.id, ok=False, result=json.dumps({"error": why}))


def systemd_unit(config: ClientConfig, user: str = "freight") -> str:
    exe = os.environ.get("FREIGHT_EXE") or "freight"
    return f"""[Unit]
Description=Freight agent ({config.root})
After=network-online.target
Wants=network-online.target

[Service]
# Runs as the unprivileged user {user!r}, not root: it can then read and
# write only what that user may, whatever a peer asks. Create the user
# (useradd --system --home-dir /var/lib/freight {user}), give it the
# config folder below (chown -R {user}: {config.root}) and access to the
# roots. To serve files only root can read, change User= and Group= to
# root and keep the roots as narrow as possible.
User={user}
Group={user}
NoNewPrivileges=yes
Environment=FREIGHT_CONFIG_DIR={config.root}
ExecStart={exe} agent run
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
