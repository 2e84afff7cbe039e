"""Messaging hosts played by hand for the hub's tests: raw control
channels announcing real host keys signed by identity keys registered for
their accounts, frames sent and awaited by hand; accounts made on demand;
what the hub's events, metrics and memory say."""

from __future__ import annotations

import asyncio
import re
import secrets
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from freight.protocol import messages as m
from freight.protocol.frames import decode_frame, encode_frame
from freight.protocol.msgkeys import host_id, sign_host_key
from tests.authsupport import rest
from tests.hostile import attach, insecure_ssl
from tests.support import ADMIN_PASSWORD, Hub

ANSWER_WAIT = 20.0  # seconds any single answer may take


# --- a host played by hand ------------------------------------------------------


class RawHost:
    """One attachment of ``account`` acting as a messaging host."""

    def __init__(
        self, hub: Hub, account: str, token: str, identity: Ed25519PrivateKey | None = None
    ) -> None:
        self.hub = hub
        self.account = account
        self.token = token
        self.identity = identity or Ed25519PrivateKey.generate()
        self.key = X25519PrivateKey.generate().public_key().public_bytes_raw()
        self.hid = host_id(self.key)
        self.session: aiohttp.ClientSession | None = None
        self.ws: Any = None
        self.pending: deque[tuple[m.AnyMessage, bytes]] = deque()

    @property
    def identity_hex(self) -> str:
        return self.identity.public_key().public_bytes_raw().hex()

    async def open(self) -> RawHost:
        self.session, self.ws, welcome = await attach(self.hub, self.token)
        assert isinstance(welcome, m.Welcome), welcome
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    def register_identity(self) -> None:
        status, body = rest(
            self.hub, "PUT", "/v1/keys", {"key": self.identity_hex}, token=self.token
        )
        assert status == 200, body

    def hello_frame(
        self, regs: list[m.MsgReg], *, sig: bytes | None = None, rid: str = "h1"
    ) -> m.MsgHello:
        return m.MsgHello(
            rid=rid,
            key=self.key.hex(),
            sig=(sig or sign_host_key(self.identity, self.key)).hex(),
            identity=self.identity_hex,
            regs=regs,
        )

    async def put(self, msg: m.Message, payload: bytes = b"") -> None:
        await self.ws.send_bytes(encode_frame(msg, payload))

    async def hello(self, regs: list[m.MsgReg], **kw: Any) -> m.AnyMessage:
        """Announce; the hub's answer (Done or Error)."""
        frame = self.hello_frame(regs, **kw)
        await self.put(frame)
        return await self.expect(lambda f: isinstance(f, m.Done | m.Error) and f.rid == frame.rid)

    async def resolve(self, dest: str, app: str = "", type: int = 0) -> m.MsgRoute:
        rid = secrets.token_hex(4)
        await self.put(m.MsgResolve(rid=rid, dest=dest, app=app, type=type))
        route = await self.expect(lambda f: isinstance(f, m.MsgRoute) and f.rid == rid)
        assert isinstance(route, m.MsgRoute)
        return route

    async def send(
        self, to: RawHost | str, body: bytes, *, app: str = "chat", type: int = 1
    ) -> str:
        mid = secrets.token_hex(16)
        hid = to if isinstance(to, str) else to.hid
        await self.put(m.MsgSend(len=len(body), id=mid, to=hid, app=app, type=type), body)
        return mid

    async def frame(self, timeout: float = ANSWER_WAIT) -> tuple[m.AnyMessage, bytes]:
        item = await asyncio.wait_for(self.ws.receive(), timeout)
        assert item.type == aiohttp.WSMsgType.BINARY, item
        return decode_frame(item.data)

    async def expect(
        self, want: Callable[[m.AnyMessage], bool], timeout: float = ANSWER_WAIT
    ) -> m.AnyMessage:
        return (await self.expect_with_payload(want, timeout))[0]

    async def expect_with_payload(
        self, want: Callable[[m.AnyMessage], bool], timeout: float = ANSWER_WAIT
    ) -> tuple[m.AnyMessage, bytes]:
        """The first frame ``want`` accepts; the others are kept for later."""
        for i, (msg, payload) in enumerate(self.pending):
            if want(msg):
                del self.pending[i]
                return msg, payload
        async with asyncio.timeout(timeout):
            while True:
                msg, payload = await self.frame(timeout)
                if want(msg):
                    return msg, payload
                if not isinstance(msg, m.Ping):
                    self.pending.append((msg, payload))

    async def result(self, mid: str) -> m.MsgResult:
        res = await self.expect(lambda f: isinstance(f, m.MsgResult) and f.id == mid)
        assert isinstance(res, m.MsgResult)
        return res

    async def settled(self) -> None:
        """Every frame sent before has been handled (the hub handles a
        channel's frames in order and answers a ticket request)."""
        rid = secrets.token_hex(4)
        await self.put(m.TicketRequest(rid=rid))
        await self.expect(lambda f: isinstance(f, m.TicketGrant) and f.rid == rid)

    async def closed(self) -> m.AnyMessage | None:
        """Read until the hub closes the channel; its Error, if it sent one."""
        error = None
        async with asyncio.timeout(ANSWER_WAIT):
            while True:
                item = await self.ws.receive()
                if item.type != aiohttp.WSMsgType.BINARY:
                    return error
                msg, _ = decode_frame(item.data)
                if isinstance(msg, m.Error):
                    error = msg


async def gone_from_hub(asker: RawHost, hid: str) -> None:
    """Wait until the hub has noticed that host ``hid`` went."""
    async with asyncio.timeout(ANSWER_WAIT):
        while (await asker.resolve("host:" + hid)).reason != "no_host":
            await asyncio.sleep(0.02)


async def recorded(hub: Hub, token: str, kind: str, actor: str) -> list[dict[str, Any]]:
    """The events of ``kind`` by ``actor``, once there is one (they are
    written in the background)."""
    async with asyncio.timeout(ANSWER_WAIT):
        while True:
            found = [e for e in events(hub, token, kind) if e["actor"] == actor]
            if found:
                return found
            await asyncio.sleep(0.05)


def reg(app: str, interest: int, peer: str = "*") -> m.MsgReg:
    return m.MsgReg(app=app, interest=interest, peer=peer)


# --- a hub with accounts ----------------------------------------------------------


def login(hub: Hub, name: str, password: str) -> str:
    status, body = rest(hub, "POST", "/v1/login", {"user": name, "password": password})
    assert status == 200, body
    return str(body["token"])


class Accounts:
    """admin, and users made on demand, each with one login per call."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.admin = login(hub, "admin", ADMIN_PASSWORD)
        self.made: set[str] = set()
        self.identities: dict[str, Ed25519PrivateKey] = {}

    def identity(self, name: str) -> Ed25519PrivateKey:
        """One identity key per account (a device), shared by its hosts: an
        account holds only so many."""
        return self.identities.setdefault(name, Ed25519PrivateKey.generate())

    def token(self, name: str) -> str:
        if name == "admin":
            return login(self.hub, "admin", ADMIN_PASSWORD)
        if name not in self.made:
            status, body = rest(
                self.hub,
                "POST",
                "/v1/users",
                {"name": name, "password": f"{name}-password-1"},
                token=self.admin,
            )
            assert status in (200, 201), body
            self.made.add(name)
        return login(self.hub, name, f"{name}-password-1")


def events(hub: Hub, token: str, kind: str) -> list[dict[str, Any]]:
    status, body = rest(hub, "GET", f"/v1/admin/events?kind={kind}&limit=1000", token=token)
    assert status == 200, body
    return list(body["events"])


def metric(hub: Hub, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{hub.url}/metrics", context=insecure_ssl(), timeout=10) as resp:
        text = resp.read().decode()
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


def rss(hub: Hub) -> int:
    assert hub.proc is not None
    text = Path(f"/proc/{hub.proc.pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert found
    return int(found.group(1)) * 1024
