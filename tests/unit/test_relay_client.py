"""The SDK's relay endpoint (RelayClient / Connection) driven by frames.

No hub and no sockets: a RelayClient whose ``send_frame`` records what it
would send is fed the frames a hub would deliver, honest or not; the peer is
played by the protocol machines themselves.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from freight.client.config import ClientConfig
from freight.client.listener import code_handshake
from freight.client.relay import RECORD_MESSAGE, Connection, Listener, RelayClient
from freight.client.session import HubSession
from freight.errors import CodeBurned, ConnectionEnded, SenderRestarted
from freight.protocol import messages as m
from freight.protocol.e2e import (
    ACCEPT,
    DIAL,
    CodeHandshake,
    IdentityHandshake,
    PeerKeyRejected,
    identity_context,
    public_of,
)
from freight.protocol.errors import IntegrityError

NAMEPLATE = "7"
CODE = f"{NAMEPLATE}-crossbow-gazelle-tulip"
APP = f"code:{NAMEPLATE}"
HUB_FP = "SHA256:" + "ab" * 32
MAX_CODE_GUESSES = 3  # failed claims a code survives (docs/protocol.md 12.4)


class Recorder:
    """A RelayClient with its outgoing frames captured instead of sent."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client
        self.frames: list[tuple[m.Message, bytes]] = []

        async def send_frame(msg: m.Message, payload: bytes = b"") -> None:
            self.frames.append((msg, payload))

        client.send_frame = send_frame  # type: ignore[method-assign]

    def take(self, cid: str, kind: type[m.Message] = m.Relay) -> list[tuple[m.Message, bytes]]:
        """Frames of ``kind`` sent for ``cid`` since the last take (of any kind)."""
        mine = [(f, p) for f, p in self.frames if getattr(f, "cid", None) == cid]
        self.frames = [(f, p) for f, p in self.frames if getattr(f, "cid", None) != cid]
        return [(f, p) for f, p in mine if isinstance(f, kind)]

    async def deliver(self, msg: m.AnyMessage, payload: bytes = b"") -> None:
        await self.client._dispatch(msg, payload)


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[Recorder]:
    session = HubSession("https://127.0.0.1:9", fingerprint=HUB_FP)
    client = RelayClient(session, ClientConfig(tmp_path))
    yield Recorder(client)
    await session.aclose()


def offering(wire: Recorder) -> Listener:
    """The state ``RelayClient.offer`` leaves behind once the hub granted."""
    offer = Listener(wire.client, "")
    offer.nameplate, offer.code = NAMEPLATE, CODE
    wire.client.offers[NAMEPLATE] = offer
    return offer


def linked(cid: str, role: str, *, peer: str = "mallory", rejoined: bool = False) -> m.Linked:
    return m.Linked(
        cid=cid, peer=peer, app=APP, role=role, window=1 << 22, rejoined=rejoined, keys=[]
    )


def relay_h(cid: str, payload: bytes) -> tuple[m.Relay, bytes]:
    return m.Relay(cid=cid, kind="h", len=len(payload)), payload


async def guess_and_leave(wire: Recorder, how: str) -> list[bytes]:
    """One claim by a guesser that links, sends its SPAKE2 message, reads
    the sender's records and goes (``how``: hangup, relink, wrong)."""
    cid = secrets.token_hex(12)
    await wire.deliver(linked(cid, ACCEPT))
    guesser = CodeHandshake(f"{NAMEPLATE}-wrong-guess-here", DIAL, APP.encode())
    await wire.deliver(*relay_h(cid, guesser.take()[0]))
    got = [p for _, p in wire.take(cid)]
    if how == "wrong":
        guesser.receive(got[0])
        await wire.deliver(*relay_h(cid, guesser.take()[0]))
    elif how == "relink":
        # The link breaks mid-handshake and the hub links the claim again.
        await wire.deliver(linked(cid, ACCEPT, rejoined=True))
        got += [p for _, p in wire.take(cid)]
        await wire.deliver(m.Hangup(cid=cid, code="closed", by="peer"))
    else:
        await wire.deliver(m.Hangup(cid=cid, code="closed", by="peer"))
    return got


@pytest.mark.parametrize("how", ["hangup", "wrong", "relink"])
async def test_the_sender_stops_after_three_failed_claims_whatever_the_hub_says(
    wire: Recorder, how: str
) -> None:
    """The hub here never says ``code_burned`` (it may be the guesser): the
    sending process counts on its own and ends the offer at the third."""
    offer = offering(wire)
    for attempt in range(MAX_CODE_GUESSES):
        got = await guess_and_leave(wire, how)
        assert all(len(p) == 65 for p in got), "the sender confirmed before the claimant"
        conn = await asyncio.wait_for(offer.accept(), 1)
        assert conn.closed and not conn.established.is_set()
        expected = attempt + 1 if how != "relink" else min(2 * attempt + 2, MAX_CODE_GUESSES)
        assert offer.failures == expected
        if offer.failures >= MAX_CODE_GUESSES:
            break
    with pytest.raises(CodeBurned, match="code burned"):
        await asyncio.wait_for(offer.accept(), 1)
    assert NAMEPLATE not in wire.client.offers  # no more claims are taken


async def test_a_verified_claim_is_no_failure_even_when_relinked(wire: Recorder) -> None:
    offer = offering(wire)
    cid = secrets.token_hex(12)
    await wire.deliver(linked(cid, ACCEPT, peer="bob"))
    receiver = CodeHandshake(CODE, DIAL, APP.encode())
    await wire.deliver(*relay_h(cid, receiver.take()[0]))
    ((_, first),) = wire.take(cid)
    receiver.receive(first)
    await wire.deliver(*relay_h(cid, receiver.take()[0]))
    sent = wire.take(cid, m.Message)
    # The hub hears the claim was verified before the sender's own proof goes.
    assert [type(f) for f, _ in sent] == [m.CodeOk, m.Relay]
    receiver.receive(sent[1][1])
    assert receiver.keys is not None
    conn = await asyncio.wait_for(offer.accept(), 1)
    await asyncio.wait_for(conn.wait_established(), 1)
    # The receiver's link breaks and comes back, then the receiver leaves.
    await wire.deliver(linked(cid, ACCEPT, peer="bob", rejoined=True))
    assert m.CodeOk in [type(f) for f, _ in wire.take(cid, m.Message)]
    await wire.deliver(m.Hangup(cid=cid, code="peer_gone", by="hub"))
    with pytest.raises(ConnectionEnded):
        await conn.recv()
    assert offer.failures == 0


async def test_the_claimant_sends_its_confirmation_first(wire: Recorder) -> None:
    cid = secrets.token_hex(12)
    conn = Connection(
        wire.client, cid, DIAL, "", APP, lambda c: CodeHandshake(CODE, DIAL, APP.encode())
    )
    wire.client.conns[cid] = conn
    sender = CodeHandshake(CODE, ACCEPT, APP.encode())
    await wire.deliver(linked(cid, DIAL, peer="admin"))
    ((_, spake),) = wire.take(cid)
    await wire.deliver(*relay_h(cid, sender.take()[0]))
    ((_, confirmation),) = wire.take(cid)
    sender.receive(spake)
    assert sender.take() == []
    sender.receive(confirmation)
    await wire.deliver(*relay_h(cid, sender.take()[0]))
    await asyncio.wait_for(conn.wait_established(), 1)
    assert conn.fingerprint and conn.fingerprint == sender.keys.fingerprint  # type: ignore[union-attr]


# --- identity connections: who is bound, and who may come back ------------------

ALICE = Ed25519PrivateKey.generate()
BOB = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()


async def identity_client(tmp_path: Path, name: str, key: Ed25519PrivateKey, pin: str) -> Recorder:
    session = HubSession("https://127.0.0.1:9", fingerprint=pin)
    client = RelayClient(session, ClientConfig(tmp_path / name))
    client.identity = key
    return Recorder(client)


def id_linked(
    cid: str, role: str, peer: str, me: str, keys: list[Ed25519PrivateKey], **kw: object
) -> m.Linked:
    return m.Linked(
        cid=cid,
        peer=peer,
        app="ssh",
        role=role,
        window=1 << 22,
        keys=[public_of(k).hex() for k in keys],
        me=me,
        hub=HUB_FP,
        **kw,  # type: ignore[arg-type]
    )


async def shuttle(a: Recorder, b: Recorder, cid: str) -> None:
    """Carry relay records between two clients until neither has any."""
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for msg, payload in src.take(cid):
                await dst.deliver(msg, payload)
                moved = True
        if not moved:
            return


async def identity_pair(
    tmp_path: Path, *, pins: tuple[str, str] = (HUB_FP, HUB_FP), bob_sees: str = "alice"
) -> tuple[Connection, Connection, Recorder, Recorder]:
    """alice dials bob's "ssh"; the hub tells bob the dialer is ``bob_sees``."""
    a = await identity_client(tmp_path, "alice", ALICE, pins[0])
    b = await identity_client(tmp_path, "bob", BOB, pins[1])
    listener = Listener(b.client, "ssh")
    b.client.listeners["ssh"] = listener
    cid = secrets.token_hex(12)
    dialer = Connection(a.client, cid, DIAL, "bob", "ssh", a.client._identity_handshake)
    a.client.conns[cid] = dialer
    await a.deliver(id_linked(cid, DIAL, "bob", "alice", [BOB]))
    await b.deliver(id_linked(cid, ACCEPT, bob_sees, "bob", [ALICE]))
    acceptor = await asyncio.wait_for(listener.accept(), 1)
    await shuttle(a, b, cid)
    return dialer, acceptor, a, b


async def test_identity_connection_binds_what_each_end_was_told(tmp_path: Path) -> None:
    dialer, acceptor, _, _ = await identity_pair(tmp_path)
    assert dialer.established.is_set() and acceptor.established.is_set()
    assert dialer.fingerprint == acceptor.fingerprint
    for kw in ({"pins": (HUB_FP, "SHA256:" + "cd" * 32)}, {"bob_sees": "carol"}):
        d, a, _, _ = await identity_pair(tmp_path, **kw)  # type: ignore[arg-type]
        assert not d.established.is_set() and not a.established.is_set()
        assert isinstance(d.error, PeerKeyRejected), kw


@pytest.mark.parametrize("end", [DIAL, ACCEPT])
async def test_a_rejoin_linked_to_another_account_is_refused(tmp_path: Path, end: str) -> None:
    dialer, acceptor, a, b = await identity_pair(tmp_path)
    conn, wire = (dialer, a) if end == DIAL else (acceptor, b)
    me, peer = ("alice", "mallory") if end == DIAL else ("bob", "mallory")
    await wire.deliver(id_linked(conn.cid, end, peer, me, [MALLORY], rejoined=True))
    assert conn.closed and isinstance(conn.error, PeerKeyRejected)
    hangups = wire.take(conn.cid, m.Hangup)
    assert [f.code for f, _ in hangups] == ["peer_key_rejected"]  # type: ignore[attr-defined]


async def test_a_handshake_started_again_must_come_from_the_same_device(tmp_path: Path) -> None:
    """Bob's end saw alice's identity key in message 1, then the link broke.
    On the new link the hub lists another key for alice (mallory's): a
    handshake signed with it is refused."""
    b = await identity_client(tmp_path, "bob", BOB, HUB_FP)
    b.client.listeners["ssh"] = listener = Listener(b.client, "ssh")
    cid = secrets.token_hex(12)
    context = identity_context(cid, "ssh", "alice", "bob", HUB_FP)
    await b.deliver(id_linked(cid, ACCEPT, "alice", "bob", [ALICE, MALLORY]))
    conn = await asyncio.wait_for(listener.accept(), 1)
    alice = IdentityHandshake(ALICE, DIAL, context, [public_of(BOB)])
    await b.deliver(*relay_h(cid, alice.take()[0]))
    assert len(b.take(cid)) == 1  # bob answered: message 2
    await b.deliver(id_linked(cid, ACCEPT, "alice", "bob", [ALICE, MALLORY], rejoined=True))
    mallory = IdentityHandshake(MALLORY, DIAL, context, [public_of(BOB)])
    await b.deliver(*relay_h(cid, mallory.take()[0]))
    assert b.take(cid) == []  # no message 2 for her
    assert conn.closed and isinstance(conn.error, PeerKeyRejected)


async def test_connections_waiting_to_be_accepted_are_bounded(wire: Recorder) -> None:
    """A listener whose application does not accept: dialers beyond the
    bound are turned away (busy) instead of piling up."""
    from freight.client.listener import MAX_PENDING

    wire.client.identity = BOB
    wire.client.listeners["ssh"] = listener = Listener(wire.client, "ssh")
    cids = [secrets.token_hex(12) for _ in range(MAX_PENDING + 5)]
    for cid in cids:
        await wire.deliver(id_linked(cid, ACCEPT, "alice", "bob", [ALICE]))
    assert len(wire.client.conns) == MAX_PENDING
    refused = [f for f, _ in wire.frames if isinstance(f, m.Hangup)]
    assert [(f.cid, f.code) for f in refused] == [(cid, "busy") for cid in cids[MAX_PENDING:]]
    first = await asyncio.wait_for(listener.accept(), 1)
    assert first.cid == cids[0]


async def test_a_burst_of_connections_reaches_a_listener_whose_application_accepts(
    wire: Recorder,
) -> None:
    """More connections linked in one go than the bound (1,000 opened at once
    through a forward): the application's accept loop gets its turn before
    any is turned away as busy."""
    from freight.client.listener import MAX_PENDING

    wire.client.identity = BOB
    wire.client.listeners["ssh"] = listener = Listener(wire.client, "ssh")
    accepted: list[str] = []

    async def application() -> None:
        while True:
            accepted.append((await listener.accept()).cid)

    task = asyncio.create_task(application())
    try:
        cids = [secrets.token_hex(12) for _ in range(3 * MAX_PENDING)]
        for cid in cids:
            await wire.deliver(id_linked(cid, ACCEPT, "alice", "bob", [ALICE]))
        await asyncio.sleep(0)
    finally:
        task.cancel()
    assert [f for f, _ in wire.frames if isinstance(f, m.Hangup)] == []
    assert accepted == cids


async def test_a_dial_linked_right_after_listen_is_answered_reaches_the_listener(
    wire: Recorder,
) -> None:
    """The hub binds waiting dials the moment it takes a Listen, so their
    Linked can arrive right behind its Done, before listen() has resumed:
    the connection must reach the listener, not be hung up as "no longer
    listening" (seen as a dialer that never connected under load)."""
    wire.client.identity = Ed25519PrivateKey.generate()
    wire.client.attached.set()
    task = asyncio.create_task(wire.client.listen("later"))
    async with asyncio.timeout(5):
        while not wire.frames:
            await asyncio.sleep(0)
    (request, _), *_ = wire.frames
    assert isinstance(request, m.Listen)
    cid = secrets.token_hex(12)
    # Both frames in one go, as the reader hands them over.
    await wire.deliver(m.Done(rid=request.rid))
    await wire.deliver(
        m.Linked(cid=cid, peer="admin", app="later", role=ACCEPT, window=1 << 22, keys=[])
    )
    listener = await asyncio.wait_for(task, 5)
    assert wire.take(cid, m.Hangup) == []
    conn = await asyncio.wait_for(listener.accept(), 5)
    assert conn.cid == cid and conn.peer == "admin"


@pytest.mark.parametrize(
    ("code", "error"),
    [("sender_restarted", SenderRestarted), ("receiver_restarted", ConnectionEnded)],
)
async def test_a_hangup_becomes_the_error_its_code_names(
    wire: Recorder, code: str, error: type[Exception]
) -> None:
    """The CLI resumes on the hub's code (SenderRestarted), never on its words."""
    conn = Connection(wire.client, "c9", DIAL, "", APP, lambda c: CodeHandshake(CODE, DIAL, b""))
    wire.client.conns["c9"] = conn
    await wire.deliver(m.Hangup(cid="c9", code=code, message="whatever the words", by="hub"))
    assert conn.closed and type(conn.error) is error
    with pytest.raises(error):
        await conn.recv()


async def test_a_sender_whose_writes_never_block_still_sees_pause_in_time(
    tmp_path: Path,
) -> None:
    """The hub's Pause may arrive while a sender's writes never block (a lane
    whose buffers take everything): the sender must look at it before its
    next record, not after pouring its whole credit window into the hub."""
    dialer, _, a, _ = await identity_pair(tmp_path)
    a.take(dialer.cid)
    block = bytes(64 * 1024)

    async def push() -> None:
        while True:
            await dialer.send(block)

    async def hub_says_pause() -> None:  # the reader task taking the frame
        await a.deliver(m.Pause(cid=dialer.cid))

    pusher = asyncio.create_task(push())
    reader = asyncio.create_task(hub_says_pause())
    await reader
    for _ in range(10):
        await asyncio.sleep(0)
    sent = len(a.take(dialer.cid))
    pusher.cancel()
    await asyncio.gather(pusher, return_exceptions=True)
    assert dialer.paused
    assert sent <= 2, f"{sent} records went after Pause had arrived"


async def test_a_handshake_record_that_overtakes_linked_waits_for_it(tmp_path: Path) -> None:
    # The claimant's Linked comes on the control channel, the sender's first
    # SPAKE2 message on the lane, read by another task: the record may
    # arrive first. It waits for Linked instead of ending the connection.
    sender = Recorder(
        RelayClient(
            HubSession("https://127.0.0.1:9", fingerprint=HUB_FP), ClientConfig(tmp_path / "s")
        )
    )
    offering(sender)
    claimant = Recorder(
        RelayClient(
            HubSession("https://127.0.0.1:9", fingerprint=HUB_FP), ClientConfig(tmp_path / "c")
        )
    )
    cid = secrets.token_hex(12)
    conn = Connection(claimant.client, cid, DIAL, "alice", APP, code_handshake(CODE))
    claimant.client.conns[cid] = conn
    await sender.deliver(linked(cid, ACCEPT, peer="bob"))
    early = sender.take(cid)
    assert early  # the sender spoke first
    for msg, payload in early:
        await claimant.deliver(msg, payload)  # before the claimant's own Linked
    assert conn.error is None and not claimant.take(cid, m.Hangup)
    await claimant.deliver(linked(cid, DIAL, peer="alice"))
    await shuttle(claimant, sender, cid)
    assert conn.established.is_set() and conn.error is None
    for client in (sender, claimant):
        await client.client.session.aclose()


async def test_a_tampered_record_is_an_integrity_error_even_while_the_hangup_is_written(
    tmp_path: Path,
) -> None:
    """The end that refuses a tampered record hangs up; the Hangup's write
    may wait (a channel that batches waits for the loop turn and its lock).
    An application reading in that moment must already be told why
    (IntegrityError), not a bare "the connection is closed"."""
    dialer, acceptor, _, b = await identity_pair(tmp_path)
    b.take(acceptor.cid)
    writing, gate = asyncio.Event(), asyncio.Event()
    real = b.client.send_frame

    async def slow_send(msg: m.Message, payload: bytes = b"") -> None:
        writing.set()
        await gate.wait()
        await real(msg, payload)

    b.client.send_frame = slow_send  # type: ignore[method-assign]
    assert dialer.session is not None
    seq, sealed = dialer.session.seal(RECORD_MESSAGE + b"transfer 100 to mallory")
    tampered = bytearray(sealed)
    tampered[len(tampered) // 2] ^= 0x01
    record = m.Relay(cid=acceptor.cid, kind="d", seq=seq, len=len(tampered))
    delivery = asyncio.create_task(b.deliver(record, bytes(tampered)))
    await asyncio.wait_for(writing.wait(), 5)
    with pytest.raises(IntegrityError, match="failed authentication"):
        await asyncio.wait_for(acceptor.recv(), 5)
    gate.set()
    await asyncio.wait_for(delivery, 5)
    with pytest.raises(IntegrityError, match="failed authentication"):
        await acceptor.recv()
    ((hangup, _),) = b.take(acceptor.cid, m.Hangup)
    assert hangup.code == "integrity_error"  # type: ignore[attr-defined]


def test_a_hang_up_as_aborted_is_a_connection_ended_not_a_stream_abort() -> None:
    # A sender waits for its receiver again after ConnectionEnded; a
    # receiver stopped with Ctrl-C hangs up "aborted", which must read so.
    from freight.client.connection import _ended
    from freight.errors import CodeBurned, ConnectionEnded

    exc = _ended("aborted", "the transfer stopped before it finished", "peer")
    assert type(exc) is ConnectionEnded
    assert (
        exc.message == "the other end ended the connection: the transfer stopped before it finished"
    )
    assert type(_ended("closed", "", "hub")) is ConnectionEnded
    assert type(_ended("code_burned", "burned", "hub")) is CodeBurned
