"""The direct manner's byte pipe on loopback: what arrives is what was sent,
the one-time ticket admits exactly one sender holding it, and whatever else
dials (a wrong ticket, a wrong secret, garbage, silence) is dropped without
spending it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.errors import UsageError
from freight.protocol import messages as m
from freight.protocol.limits import PROTOCOL_VERSION
from freight.protocol.seal import preamble
from freight.transport.channel import ChannelClosed
from freight.transport.dataconn import DataConnProtocol, DataPathUnavailable
from freight.transport.directjob import (
    MAX_MESSAGE,
    STAGGER,
    ByteConn,
    DirectListener,
    _parse_completion,
    dial_direct,
    format_address,
    parse_address,
)
from freight.transport.ifaddrs import ipv6_addresses, usable

MiB = 1024 * 1024
LOOPBACK = "127.0.0.1:0"

pytestmark = pytest.mark.timeout(30)


async def pair(bind: str = LOOPBACK) -> tuple[DirectListener, ByteConn, ByteConn]:
    listener = await DirectListener.open(bind)
    sender = await dial_direct(listener.completion(), timeout=2)
    receiver = await listener.accept(2)
    return listener, sender, receiver


async def test_64_mib_arrive_identical_and_recv_says_end() -> None:
    listener, sender, receiver = await pair()
    data = os.urandom(64 * MiB)

    async def send() -> None:
        for i in range(0, len(data), MiB):
            await sender.send(data[i : i + MiB])
        await sender.aclose()

    async def receive() -> bytes:
        got = hashlib.sha256()
        while chunk := await receiver.recv():
            assert len(chunk) == MiB  # message boundaries are kept
            got.update(chunk)
        return got.digest()

    _, digest = await asyncio.gather(send(), receive())
    assert digest == hashlib.sha256(data).digest()
    assert await receiver.recv() == b""  # and stays at the end
    await receiver.aclose()
    await listener.aclose()


async def test_both_directions_carry_messages() -> None:
    listener, sender, receiver = await pair()
    await sender.send(b"manifest")
    assert await receiver.recv() == b"manifest"
    await receiver.send(b"holdings")
    assert await sender.recv() == b"holdings"
    await receiver.aclose()
    assert await sender.recv() == b""
    await sender.aclose()
    await listener.aclose()


async def test_default_listener_advertises_loopback_last() -> None:
    async with await DirectListener.open() as listener:
        completion = listener.completion()
        addrs = completion["addrs"]
        assert isinstance(addrs, list)
        port = parse_address(addrs[0])[1]
        hosts = [parse_address(a)[0] for a in addrs]
        loopback = [h for h in hosts if h in ("127.0.0.1", "::1")]
        # The host's own addresses (no link-local, no loopback) first, then
        # loopback: IPv4 first, IPv6 when the host has it.
        assert loopback[0] == "127.0.0.1"
        assert hosts[len(hosts) - len(loopback) :] == loopback
        assert all(usable(ipaddress.ip_address(h)) for h in hosts[: len(hosts) - len(loopback)])
        assert all(parse_address(a)[1] == port for a in addrs)
        assert len(bytes.fromhex(str(completion["ticket"]))) == 16
        assert len(bytes.fromhex(str(completion["secret"]))) == 32
        sender = await dial_direct(completion)
        receiver = await listener.accept(2)
        await sender.send(b"hello")
        assert await receiver.recv() == b"hello"
        await sender.aclose()
        await receiver.aclose()


async def test_pinned_bind_advertises_only_that_address() -> None:
    async with await DirectListener.open("127.0.0.1:0") as listener:
        addrs = listener.completion()["addrs"]
        assert isinstance(addrs, list) and len(addrs) == 1
        assert addrs[0].startswith("127.0.0.1:")


async def test_wrong_ticket_is_refused_and_the_right_one_still_accepted() -> None:
    async with await DirectListener.open(LOOPBACK) as listener:
        wrong = dict(listener.completion(), ticket=os.urandom(16).hex())
        with pytest.raises(DataPathUnavailable, match="refused"):
            await dial_direct(wrong)
        sender = await dial_direct(listener.completion())
        receiver = await listener.accept(2)
        await sender.send(b"x")
        assert await receiver.recv() == b"x"
        assert listener.refused == 1
        await sender.aclose()
        await receiver.aclose()


async def test_right_ticket_with_a_wrong_secret_does_not_spend_it() -> None:
    async with await DirectListener.open(LOOPBACK) as listener:
        forged = dict(listener.completion(), secret=os.urandom(32).hex())
        with pytest.raises(DataPathUnavailable, match="cannot connect directly"):
            await dial_direct(forged)
        sender = await dial_direct(listener.completion())
        receiver = await listener.accept(2)
        assert listener.refused == 1
        await sender.aclose()
        await receiver.aclose()


async def test_garbage_is_dropped_and_the_sender_still_gets_in() -> None:
    async with await DirectListener.open(LOOPBACK) as listener:
        host, port = parse_address(str(listener.addrs[0]))
        # A preamble's worth of garbage is answered with one error frame.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert b"not a Freight data connection" in rest
        writer.close()
        # More of it is cut off (unread bytes make the close a reset).
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(os.urandom(64 * 1024))
        with contextlib.suppress(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        sender = await dial_direct(listener.completion())
        receiver = await listener.accept(2)
        assert listener.refused == 2
        await sender.aclose()
        await receiver.aclose()


async def test_silent_diallers_do_not_lock_the_sender_out() -> None:
    async with await DirectListener.open(LOOPBACK) as listener:
        host, port = parse_address(str(listener.addrs[0]))
        idle = [socket.create_connection((host, port)) for _ in range(40)]
        try:
            sender = await dial_direct(listener.completion(), timeout=2)
            receiver = await listener.accept(2)
            await sender.send(b"in")
            assert await receiver.recv() == b"in"
            await sender.aclose()
            await receiver.aclose()
        finally:
            for s in idle:
                s.close()


async def test_a_second_dial_is_refused() -> None:
    listener, sender, receiver = await pair()
    with pytest.raises(DataPathUnavailable, match="cannot connect directly"):
        await dial_direct(listener.completion())
    with pytest.raises(UsageError, match="already accepted"):
        await listener.accept(1)
    # The first connection is unaffected.
    await sender.send(b"still here")
    assert await receiver.recv() == b"still here"
    await sender.aclose()
    await receiver.aclose()
    await listener.aclose()


async def test_accept_waits_no_longer_than_asked() -> None:
    async with await DirectListener.open(LOOPBACK) as listener:
        started = time.monotonic()
        with pytest.raises(
            DataPathUnavailable, match=r"no sender connected directly within 0\.2 s"
        ):
            await listener.accept(0.2)
        assert time.monotonic() - started < 1.0


async def test_closed_listener_refuses_at_once() -> None:
    listener = await DirectListener.open(LOOPBACK)
    completion = listener.completion()
    await listener.aclose()
    started = time.monotonic()
    with pytest.raises(DataPathUnavailable, match=r"127\.0\.0\.1"):
        await dial_direct(completion)
    assert time.monotonic() - started < 0.5


async def test_a_cut_connection_is_not_an_end() -> None:
    listener, sender, receiver = await pair()
    await sender.send(b"part")
    await sender.proto.aclose()  # no EndStream: the connection just drops
    assert await receiver.recv() == b"part"
    with pytest.raises(ChannelClosed, match="before the other end finished"):
        await receiver.recv()
    await receiver.aclose()
    await listener.aclose()


async def test_message_size_and_closed_side_are_checked() -> None:
    listener, sender, receiver = await pair()
    with pytest.raises(UsageError, match="at most"):
        await sender.send(bytes(MAX_MESSAGE + 1))
    await sender.send(b"")  # nothing: an empty message would read as the end
    await sender.shutdown()
    with pytest.raises(UsageError, match="already closed"):
        await sender.send(b"late")
    assert await receiver.recv() == b""
    await sender.aclose()
    await receiver.aclose()
    await listener.aclose()


async def test_a_receiver_that_stops_reading_stops_the_sender() -> None:
    listener, sender, receiver = await pair()
    block = os.urandom(MiB)
    sent = 0
    blocked = False
    while sent < 256 * MiB:
        try:
            await asyncio.wait_for(sender.send(block), 0.5)
        except TimeoutError:
            blocked = True
            break
        sent += MiB
    assert blocked
    # Bounded: the peer's read queue (4 MiB) plus the kernel's buffers plus
    # our write buffer's high mark, not everything sent.
    assert sent < 48 * MiB
    transport = sender.proto.transport
    assert transport is not None
    assert transport.get_write_buffer_size() < 6 * MiB
    # The receiver reads again: everything arrives, the sender goes on.
    await sender.aclose()
    got = 0
    while chunk := await asyncio.wait_for(receiver.recv(), 5):
        assert chunk == block
        got += len(chunk)
    assert got >= sent
    await receiver.aclose()
    await listener.aclose()


@pytest.mark.parametrize(
    ("completion", "why"),
    [
        ({}, "addrs"),
        ({"addrs": [], "ticket": "00" * 16, "secret": "00" * 32}, "1 to 32 addresses"),
        ({"addrs": "127.0.0.1:1", "ticket": "00" * 16, "secret": "00" * 32}, "1 to 32"),
        ({"addrs": ["127.0.0.1:1"] * 33, "ticket": "00" * 16, "secret": "00" * 32}, "1 to 32"),
        ({"addrs": ["localhost:80"], "ticket": "00" * 16, "secret": "00" * 32}, "IP"),
        ({"addrs": ["127.0.0.1:0"], "ticket": "00" * 16, "secret": "00" * 32}, "HOST:PORT"),
        ({"addrs": ["127.0.0.1:99999"], "ticket": "00" * 16, "secret": "00" * 32}, "HOST"),
        ({"addrs": ["::1:80"], "ticket": "00" * 16, "secret": "00" * 32}, "brackets"),
        ({"addrs": ["[127.0.0.1]:80"], "ticket": "00" * 16, "secret": "00" * 32}, "IPv6"),
        ({"addrs": [7], "ticket": "00" * 16, "secret": "00" * 32}, "string"),
        ({"addrs": ["127.0.0.1:1"], "ticket": "00" * 15, "secret": "00" * 32}, "length"),
        ({"addrs": ["127.0.0.1:1"], "ticket": "zz" * 16, "secret": "00" * 32}, "hex"),
        ({"addrs": ["127.0.0.1:1"], "ticket": 5, "secret": "00" * 32}, "hex strings"),
    ],
)
async def test_malformed_completion_is_refused_with_its_reason(
    completion: dict[str, object], why: str
) -> None:
    with pytest.raises(DataPathUnavailable, match="malformed") as caught:
        await dial_direct(completion)
    assert why in caught.value.message


@pytest.mark.parametrize("bind", ["nowhere:1", "127.0.0.1", "127.0.0.1:x", "192.0.2.250:0"])
async def test_bad_bind_says_what_to_write(bind: str) -> None:
    with pytest.raises(UsageError, match=f"cannot listen on {bind}"):
        await DirectListener.open(bind)


def test_ipv6_interface_table_is_read_and_filtered() -> None:
    text = (
        "fe80000000000000000000fffe000001 02 40 20 80     eth0\n"
        "fd000000000000000000000000000002 02 40 00 80     eth0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "garbage\n"
    )
    found = ipv6_addresses(text)
    assert [str(a) for a in found] == ["fe80::ff:fe00:1", "fd00::2", "::1"]
    assert [str(a) for a in found if usable(a)] == ["fd00::2"]


async def test_a_silent_first_address_costs_one_stagger() -> None:
    # It takes the TCP connection (the kernel's backlog) and never answers.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        async with await DirectListener.open(LOOPBACK) as listener:
            mute = f"127.0.0.1:{silent.getsockname()[1]}"
            completion = dict(listener.completion(), addrs=[mute, *listener.addrs])
            started = time.monotonic()
            sender = await dial_direct(completion, timeout=2.0)
            elapsed = time.monotonic() - started
            receiver = await listener.accept(1)
            assert sender.peer == listener.addrs[0]
            # The second address was tried after the stagger, long before
            # the first would have timed out.
            assert elapsed >= STAGGER
            assert elapsed < 1.0
            await sender.aclose()
            await receiver.aclose()
    finally:
        silent.close()


async def test_every_address_silent_gives_up_at_the_timeout() -> None:
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(6)]
    try:
        completion = {
            "addrs": [f"127.0.0.1:{s.getsockname()[1]}" for s in silent],
            "ticket": os.urandom(16).hex(),
            "secret": os.urandom(32).hex(),
        }
        started = time.monotonic()
        with pytest.raises(DataPathUnavailable, match=r"no answer within 0\.6 s") as caught:
            await dial_direct(completion, timeout=0.6)
        assert time.monotonic() - started < 1.2
        # Three were tried (0, 0.25, 0.5 s), three never reached: all named.
        for s in silent:
            assert f"127.0.0.1:{s.getsockname()[1]}" in caught.value.message
    finally:
        for s in silent:
            s.close()


async def test_accept_after_close_says_so() -> None:
    listener = await DirectListener.open(LOOPBACK)
    waiting = asyncio.ensure_future(listener.accept(5))
    await asyncio.sleep(0)
    await listener.aclose()
    with pytest.raises(DataPathUnavailable, match="listener was closed"):
        await asyncio.wait_for(waiting, 2)
    with pytest.raises(DataPathUnavailable, match="listener was closed"):
        await listener.accept(1)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["addrs", "ticket", "secret", "other"]),
        st.one_of(
            st.text(max_size=80),
            st.lists(st.text(max_size=40), max_size=40),
            st.integers(),
            st.none(),
            st.binary(max_size=40),
        ),
    )
)
def test_any_completion_is_parsed_or_refused_with_the_typed_error(
    completion: dict[str, object],
) -> None:
    try:
        addrs, ticket, secret = _parse_completion(completion)
    except DataPathUnavailable as exc:
        assert exc.message.startswith("the receiver's direct completion is malformed")
    else:
        assert addrs
        assert len(ticket) == 16
        assert len(secret) == 32


@given(st.text(max_size=60))
def test_any_address_text_is_parsed_or_refused_with_value_error(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ValueError:
        return
    assert parse_address(format_address(host, port)) == (host, port)
    assert port > 0


async def test_another_protocol_version_is_told_and_does_not_spend_the_ticket() -> None:
    async with await DirectListener.open(LOOPBACK) as listener:
        host, port = parse_address(str(listener.addrs[0]))
        proto = DataConnProtocol(is_hub=False, secret=listener.secret, ticket_id=listener.ticket)
        await asyncio.get_running_loop().create_connection(lambda: proto, host, port)
        assert proto.transport is not None
        proto.transport.write(preamble(listener.ticket))
        await proto.send(m.Hello(version=PROTOCOL_VERSION + 1))
        answer, _ = await asyncio.wait_for(proto.recv(), 5)
        assert isinstance(answer, m.Error)
        assert answer.message == f"this receiver speaks protocol version {PROTOCOL_VERSION}"
        await proto.aclose()
        sender = await dial_direct(listener.completion())
        receiver = await listener.accept(2)
        await sender.aclose()
        await receiver.aclose()


async def test_wildcard_ipv4_bind_advertises_ipv4_only_loopback_last() -> None:
    async with await DirectListener.open("0.0.0.0:0") as listener:
        addrs = [str(a) for a in listener.addrs]
        port = parse_address(addrs[-1])[1]
        assert addrs[-1] == f"127.0.0.1:{port}"
        assert not [a for a in addrs if a.startswith("[")]
        sender = await dial_direct(listener.completion())
        receiver = await listener.accept(2)
        await sender.aclose()
        assert await receiver.recv() == b""
        await receiver.aclose()


async def test_abort_reaches_the_other_end_with_its_reason() -> None:
    listener, sender, receiver = await pair()
    await sender.send(b"first")
    await sender.abort("the source changed while being sent")
    assert await receiver.recv() == b"first"
    with pytest.raises(ChannelClosed, match="the other end gave up: the source changed"):
        await receiver.recv()
    await receiver.aclose()
    await listener.aclose()
