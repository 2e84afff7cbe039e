"""The manners a transfer job can take, each a small adapter behind one
interface (docs/protocol.md §16): ``relay`` (a one-time code through the
hub, :mod:`.codes`), ``direct`` (the receiver's listener and a one-time
ticket, ``freight.transport.directjob``) and ``ref`` (data stored on the
hub under a single-use link, :mod:`.references`).

A sender's adapter makes the offer that goes in the proposal, then moves
the bytes once the receiver accepted; a receiver's adapter says why it
cannot be used here (or ""), makes the completion that goes in its
acceptance, then receives and returns the byte count and BLAKE3 digest of
what it holds (see :class:`Tapped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, cast

from ..engine.hashing import hash_fd
from ..errors import ConfigError, NotLoggedIn, TLSError, UsageError
from ..protocol import sendrecv as wire
from ..protocol.jobs import Propose, tree_digest
from ..tasks import Supervisor
from ..transport.directjob import DirectListener, dial_direct
from .config import ClientConfig
from .receiving import Consent, Destination, receive_entries, refuse_to_replace
from .references import fetch_reference, put_reference
from .sendrecv import Entry, Reporter, send_entries

DIRECT_DIAL_TIMEOUT = 1.0  # a direct attempt that cannot connect falls back within this
DIRECT_ACCEPT_TIMEOUT = 30.0
REF_EXPIRES = 3600.0


@dataclass
class SendSide:
    """What a sender's adapter works with."""

    config: ClientConfig
    hub: str | None
    paths: list[Path]
    entries: list[Entry]
    reporter: Reporter
    ttl: float = 3600.0


@dataclass
class ReceiveSide:
    """What a receiver's adapter works with."""

    config: ClientConfig
    hub: str | None
    dest: Path
    reporter: Reporter
    consent: Consent = refuse_to_replace
    bind: str | None = None
    accept_timeout: float = DIRECT_ACCEPT_TIMEOUT
    # References to any HTTPS server, not only a hub's link: the receiver
    # would fetch whatever URL a sender names, so only when asked for.
    any_url: bool = False


class SenderManner(Protocol):
    name: str

    async def offer(self) -> dict[str, Any]: ...

    async def move(self, completion: dict[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


class ReceiverManner(Protocol):
    name: str

    def unavailable(self) -> str: ...

    async def complete(self, proposal: Propose) -> dict[str, Any]: ...

    async def move(self, offer: dict[str, Any], completion: dict[str, Any]) -> tuple[int, str]: ...

    async def aclose(self) -> None: ...


# --- what both ends hash ---------------------------------------------------------------


def _file_digest(path: Path) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    try:
        size = os.fstat(fd).st_size
        hasher, reached = hash_fd(fd)
        if reached != size:
            raise UsageError(f"{path} changed while being hashed; send it again")
        return size, hasher.hexdigest()
    finally:
        os.close(fd)


def entries_digest(entries: list[Entry]) -> tuple[int, str]:
    """(bytes, tree digest) of the files a sender offers (in a worker thread)."""
    items = []
    for e in entries:
        if e.type == "file" and e.source is not None:
            size, digest = _file_digest(e.source)
            items.append((e.path, size, digest))
    return sum(s for _, s, _ in items), tree_digest(items)


class Tapped:
    """A connection whose incoming messages are read on the way (§12.5): the
    list of files and the digest the sender gives for each, which
    :func:`receive_entries` checks every written file against. So the
    receiver's tree digest costs no second reading of what it wrote."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.entries: list[wire.WireEntry] = []
        self.digests: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def send(self, data: bytes) -> None:
        await self.conn.send(data)

    async def recv(self) -> bytes:
        data: bytes = await self.conn.recv()
        kind, inner = data[:1], data
        with contextlib.suppress(wire.MalformedTransfer):  # receive_entries refuses it
            if kind == b"X":  # a compressed batch carries digests too
                inner = wire.unpack(data)
                kind = inner[:1]
            if kind == b"M":
                self.entries, self.digests = wire.decode(data, wire.Manifest).entries, {}
            elif kind == b"E":
                end = wire.decode(data, wire.FileEnd)
                self.digests[end.index] = end.digest
            elif kind == b"B":
                for f in wire.decode_batch(inner):
                    self.digests[f.index] = f.digest.hex()
        return data

    def digest(self) -> tuple[int, str]:
        """(bytes, tree digest) of the files received ("" if one is missing)."""
        items = []
        for i, e in enumerate(self.entries):
            if e.type == "file":
                if i not in self.digests:
                    return sum(x.size for x in self.entries), ""
                items.append((e.path, e.size, self.digests[i]))
        return sum(s for _, s, _ in items), tree_digest(items)


class _TapClaims:
    """A relay client whose claimed connections are tapped."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.tapped: Tapped | None = None

    async def claim(self, code: str, **kw: Any) -> Tapped:
        self.tapped = Tapped(await self.client.claim(code, **kw))
        return self.tapped


def _hub_login(config: ClientConfig, hub: str | None) -> str:
    """Why this host cannot use the hub; empty when it has a login."""
    from .session import HubSession

    try:
        HubSession.from_config(config, hub)
    except (ConfigError, NotLoggedIn, TLSError):
        return "no hub login on this host"
    return ""


async def _relay_client(config: ClientConfig, hub: str | None) -> Any:
    from .relay import RelayClient
    from .session import HubSession

    client = RelayClient(HubSession.from_config(config, hub), config, data_path="auto")
    started = False
    try:
        await client.start(identity=False)
        started = True
    finally:
        if not started:
            await client.aclose()
    return client


# --- relay ---------------------------------------------------------------------------------


class RelaySender:
    """A one-time code, obtained before proposing: the proposal carries it
    (sealed end to end by the messaging layer); the receiver claims it."""

    name = "relay"

    def __init__(self, side: SendSide) -> None:
        self.side = side
        self.client: Any = None
        self.tasks = Supervisor("job-relay-send")
        self.sending: asyncio.Task[Any] | None = None

    async def offer(self) -> dict[str, Any]:
        from .codes import Offered, send_with_code

        if reason := _hub_login(self.side.config, self.side.hub):
            raise UsageError(reason)
        self.client = await _relay_client(self.side.config, self.side.hub)
        code: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def got(offer: Offered) -> None:
            if not code.done():
                code.set_result(offer.code)

        self.sending = self.tasks.spawn(
            send_with_code(
                self.client, self.side.entries, self.side.reporter, ttl=self.side.ttl, on_code=got
            ),
            name="send",
        )
        await asyncio.wait({code, self.sending}, return_when=asyncio.FIRST_COMPLETED)
        if not code.done():
            await self.sending  # raises what stopped it
            raise UsageError("the hub gave no code")
        return {"code": code.result()}

    async def move(self, completion: dict[str, Any]) -> None:
        assert self.sending is not None
        await self.sending

    async def aclose(self) -> None:
        await self.tasks.aclose()
        if self.client is not None:
            await self.client.aclose()


class RelayReceiver:
    name = "relay"

    def __init__(self, side: ReceiveSide) -> None:
        self.side = side
        self.client: Any = None

    def unavailable(self) -> str:
        return _hub_login(self.side.config, self.side.hub)

    async def complete(self, proposal: Propose) -> dict[str, Any]:
        from .listener import split_code

        code = proposal.offer.get("code")
        if not isinstance(code, str):
            raise UsageError("the proposal carries no code")
        split_code(code)
        # Attached before accepting: the claim goes out as soon as it is accepted.
        self.client = await _relay_client(self.side.config, self.side.hub)
        return {}

    async def move(self, offer: dict[str, Any], completion: dict[str, Any]) -> tuple[int, str]:
        from .codes import receive_with_code

        taps = _TapClaims(self.client)
        dest = Destination.folder(self.side.dest)
        await receive_with_code(
            cast(Any, taps), str(offer["code"]), dest, self.side.reporter, consent=self.side.consent
        )
        assert taps.tapped is not None
        return taps.tapped.digest()

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


# --- direct (freight.transport.directjob: DirectListener, dial_direct) ------------------


class DirectSender:
    name = "direct"

    def __init__(self, side: SendSide) -> None:
        self.side = side

    async def offer(self) -> dict[str, Any]:
        return {}

    async def move(self, completion: dict[str, Any]) -> None:
        conn = await dial_direct(completion, timeout=DIRECT_DIAL_TIMEOUT)
        try:
            await send_entries(conn, self.side.entries, self.side.reporter)
        finally:
            await conn.aclose()

    async def aclose(self) -> None:
        pass


class DirectReceiver:
    name = "direct"

    def __init__(self, side: ReceiveSide) -> None:
        self.side = side
        self.listener: DirectListener | None = None

    def unavailable(self) -> str:
        return ""

    async def complete(self, proposal: Propose) -> dict[str, Any]:
        self.listener = await DirectListener.open(self.side.bind)
        return dict(self.listener.completion())

    async def move(self, offer: dict[str, Any], completion: dict[str, Any]) -> tuple[int, str]:
        assert self.listener is not None  # complete() came first
        conn = Tapped(await self.listener.accept(self.side.accept_timeout))
        try:
            dest = Destination.folder(self.side.dest)
            await receive_entries(
                cast(Any, conn), dest, self.side.reporter, consent=self.side.consent
            )
        finally:
            await conn.aclose()
        return conn.digest()

    async def aclose(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()


# --- by reference (freight.client.references: put_reference, fetch_reference) ----------


class RefSender:
    """The data stored on the hub first, encrypted with a key that travels
    only in the proposal; the offer is the reference. Its declared bytes
    and digest are those of the stored stream (``bytes``, ``blake3``)."""

    name = "ref"

    def __init__(self, side: SendSide) -> None:
        self.side = side

    async def offer(self) -> dict[str, Any]:
        from .api import Client

        async with Client(self.side.hub, config_dir=self.side.config.root) as client:
            ref = await put_reference(
                client, self.side.paths, expires=REF_EXPIRES, reporter=self.side.reporter
            )
        return dict(ref)

    async def move(self, completion: dict[str, Any]) -> None:
        pass  # the receiver fetches; its Result says how that went

    async def aclose(self) -> None:
        pass


# A hub's link: https://HOST[:PORT]/v1/links/TOKEN (the fingerprint travels
# beside it in the offer, never in the URL the receiver requests).
HUB_LINK: Final = re.compile(r"https://[^/?#\s]+/v1/links/[A-Za-z0-9_-]{43}")


class RefReceiver:
    name = "ref"

    def __init__(self, side: ReceiveSide) -> None:
        self.side = side

    def unavailable(self) -> str:
        return ""

    async def complete(self, proposal: Propose) -> dict[str, Any]:
        url = proposal.offer.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise UsageError("the reference is not an https:// URL")
        if not self.side.any_url and (not proposal.offer.get("key") or not HUB_LINK.fullmatch(url)):
            raise UsageError(
                "the reference is not a hub link (this receiver takes other URLs "
                "only with --accept-urls)"
            )
        return {}

    async def move(self, offer: dict[str, Any], completion: dict[str, Any]) -> tuple[int, str]:
        nbytes, digest = await fetch_reference(
            offer, self.side.dest, self.side.reporter, config=self.side.config
        )
        return int(nbytes), str(digest)

    async def aclose(self) -> None:
        pass


SENDERS: dict[str, type[RelaySender | DirectSender | RefSender]] = {
    "relay": RelaySender,
    "direct": DirectSender,
    "ref": RefSender,
}
RECEIVERS: dict[str, type[RelayReceiver | DirectReceiver | RefReceiver]] = {
    "relay": RelayReceiver,
    "direct": DirectReceiver,
    "ref": RefReceiver,
}


def sender_manner(name: str, side: SendSide) -> SenderManner:
    return SENDERS[name](side)


def receiver_manner(name: str, side: ReceiveSide) -> ReceiverManner:
    return RECEIVERS[name](side)


@dataclass
class Declared:
    """What a manner's proposal declares when it differs from the job's
    (by reference: the stored stream's bytes and digest)."""

    bytes: int
    blake3: str


def declared(manner: str, offer: dict[str, Any]) -> Declared | None:
    if manner == "ref" and isinstance(offer.get("bytes"), int) and "blake3" in offer:
        return Declared(int(offer["bytes"]), str(offer["blake3"]))
    return None
