"""The other clients: ``agent-idle`` (an enrolled agent that stays
attached), ``garbage`` (connections that speak no protocol at all), and the
messaging clients ``message`` and ``request``."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import ssl
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import __version__, messaging
from ..agent.files import APP
from ..client.session import HubSession, open_channel
from ..errors import FreightError
from ..protocol import messages as m
from ..protocol.agents import login_message
from ..tasks import Supervisor
from .clients import RowRun, forever, issue, retried
from .schedule import Pacer, draw_size, interval

MAX_GARBAGE: Final = 64  # garbage connections one client keeps open at once
GARBAGE_HOLD: Final = 30.0  # seconds the hub may keep a garbage connection open
MESSAGE_TYPE: Final = 0x00000001
REQUEST_TIMEOUT: Final = 10.0


# --- garbage: bytes that are no protocol at all ----------------------------


async def garbage_client(run: RowRun, i: int) -> None:
    """Open connections on the row's schedule, write garbage into each (raw
    half the time, inside TLS the other half), and time how soon the hub
    ends it: the hub gives a stranger 10 s to say something sensible. One
    it keeps open for 30 s is an error (``kept_open``)."""
    every = interval(run.row.rate, run.row.count) or 1.0
    pacer = Pacer.for_client(run.clock(), every, run.rng)
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    room = asyncio.Semaphore(MAX_GARBAGE)

    async def one(due: float) -> None:
        start = run.clock()
        inside = run.rng.random() < 0.5
        try:
            async with asyncio.timeout(GARBAGE_HOLD):
                reader, writer = await asyncio.open_connection(
                    run.gate.host, run.gate.port, ssl=tls if inside else None
                )
                try:
                    writer.write(os.urandom(run.rng.randrange(1, 4096)))
                    await writer.drain()
                    while await reader.read(65536):
                        pass
                finally:
                    writer.transport.abort()
        except TimeoutError:
            run.stats.error("kept_open")
            return
        except (OSError, ssl.SSLError, ConnectionError):
            pass  # ended by the hub: what it should do
        finally:
            room.release()
        run.stats.record(due, start, run.clock())
        run.ok(i)

    async with Supervisor(f"{run.row.id}-{i}") as tries:
        while True:
            due = pacer.next_due()
            await asyncio.sleep(max(0.0, due - run.clock()))
            await room.acquire()
            tries.spawn(one(due), name="garbage", detached=True)


# --- agent-idle: an enrolled agent that stays attached --------------------


async def agent_client(run: RowRun, i: int) -> None:
    name = run.account(i)
    key = Ed25519PrivateKey.generate()
    anon = HubSession(run.gate.url, fingerprint=run.fingerprint, nodes=run.nodes)
    token = ""

    async def enrol() -> None:
        # A hub lets a few enrolments from one address run at once and
        # tells the rest to try again: each is counted, then tried again.
        nonlocal token
        if not token:
            made = await run.admin.request("POST", "/v1/agents/tokens", {"name": name, "ttl": 3600})
            token = str(made["token"])
        pub = key.public_key().public_bytes_raw().hex()
        await anon.request("POST", "/v1/agents/enroll", {"token": token, "key": pub})

    enrolled = False
    try:
        await retried(run, enrol)
        enrolled = True
    finally:
        if not enrolled:  # cancelled while trying
            await anon.aclose()

    async def attempt() -> None:
        nonce = (await anon.request("POST", "/v1/agents/challenge", {"name": name}))["challenge"]
        sig = key.sign(login_message(name, nonce, run.fingerprint)).hex()
        body = await anon.request(
            "POST", "/v1/agents/login", {"name": name, "challenge": nonce, "signature": sig}
        )
        session = HubSession(
            run.gate.url,
            fingerprint=run.fingerprint,
            nodes=run.nodes,
            token=str(body["token"]),
            transport=run.transport()["transport"],
        )
        try:
            chan, _ = await open_channel(session, hello=f"freight-agent/{__version__}")
            try:
                rid = secrets.token_hex(8)
                await chan.send(m.Listen(rid=rid, app=APP))
                msg, _ = await asyncio.wait_for(chan.recv(), 30)
                if not (isinstance(msg, m.Done) and msg.rid == rid):
                    raise FreightError(f"the hub answered the agent's listen with {msg!r}")
                run.stats.attach()
                run.stats.ops += 1
                run.ok(i)
                try:
                    while True:
                        await chan.recv()
                finally:
                    run.stats.detach()
            finally:
                await chan.aclose()
        finally:
            await session.aclose()

    try:
        await forever(run, i, attempt)
    finally:
        await anon.aclose()


# --- message and request: applications on messaging hosts ------------------


async def message_client(run: RowRun, i: int) -> None:
    """Messages of the row's size to the peer row's registrations; each
    counts once a recipient took it (``send`` answers with how many)."""
    await _messaging(run, i, request=False)


async def request_client(run: RowRun, i: int) -> None:
    """Requests answered by the peer row's registrations (with the same
    body); each counts once its answer is back."""
    await _messaging(run, i, request=True)


async def _messaging(run: RowRun, i: int, *, request: bool) -> None:
    """An application on messaging host ``run.host_of(i)``: that client
    runs the host (one attachment to the hub, one spool) in this process;
    the others reach it through its local socket, as the programs on one
    machine reach its daemon."""
    account = run.peer_account(i)
    t = run.transport()["transport"]
    numbers = itertools.count(1)
    assert run.row.size is not None
    size = run.row.size
    host = run.host_of(i)
    login = run.login(host)

    async def attempt() -> None:
        async with messaging.connect(
            run.gate.url, config_dir=login, transport=t, own_host=host == i
        ) as bus:
            run.stats.attach()

            async def one(due: float) -> None:
                body = run.payload(draw_size(size, run.rng, run.file_size), next(numbers))
                start = run.clock()
                run.stats.sent += 1
                if request:
                    answer = await bus.request(
                        account, run.row.app, type=MESSAGE_TYPE, body=body, timeout=REQUEST_TIMEOUT
                    )
                    if answer.body == body:
                        run.stats.verified += 1
                    else:
                        run.stats.mismatched += 1
                else:
                    await bus.send(account, run.row.app, type=MESSAGE_TYPE, body=body)
                run.stats.record(due, start, run.clock(), len(body))
                run.ok(i)

            try:
                await issue(run, i, one)
            finally:
                run.stats.detach()

    await forever(run, i, attempt)
