"""Sealed out-of-band data connections (see freight.protocol.seal).

An asyncio BufferedProtocol reads straight into the sealed-frame decoder's
buffer and AES-GCM opens records in place, so a received megabyte is copied
once by the kernel and once by the decryption, nothing more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Callable
from typing import cast

from yarl import URL

from ..errors import NetworkError
from ..protocol.errors import ProtocolError, RemoteProtocolError
from ..protocol.frames import encode_frame, encode_json
from ..protocol.limits import PROTOCOL_VERSION
from ..protocol.messages import Error, Message, Welcome
from ..protocol.seal import (
    CLIENT_TO_HUB,
    HUB_TO_CLIENT,
    PREAMBLE_BYTES,
    Opener,
    SealedFrameDecoder,
    Sealer,
    derive_key,
    end_to_end_sealed,
    parse_preamble,
    preamble,
)
from .channel import ChannelClosed, Frame
from .closing import closing_on_failure
from .flow import FRAME_OVERHEAD, ReadFlow
from .proxy import ProxyError, open_tunnel

# drain() returns only below this: a few frames may queue in user space so
# the sender is not woken for every 64 KiB the socket takes.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024
# Bytes of frames decoded but not yet taken by recv(): reading pauses at
# the first and resumes at the second (a frame's size is the peer's choice,
# so the bound is in bytes, not frames).
READ_QUEUE_HIGH = 4 * 1024 * 1024
READ_QUEUE_LOW = 1024 * 1024

# Given a ticket id, the hub returns (secret, context) or None if unknown.
TicketLookup = Callable[[bytes], tuple[bytes, object] | None]


def tune_socket(sock: socket.socket | None) -> None:
    """No Nagle: bulk frames and small acks should leave at once."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DataConnProtocol(asyncio.BufferedProtocol):
    """Both ends of a data connection. On the hub (``lookup`` given) the
    first 20 bytes are the preamble naming the ticket; keys follow from it."""

    def __init__(
        self,
        *,
        is_hub: bool,
        secret: bytes = b"",
        ticket_id: bytes = b"",
        lookup: TicketLookup | None = None,
    ) -> None:
        self.is_hub = is_hub
        self.lookup = lookup
        self.context: object = None
        self.transport: asyncio.Transport | None = None
        self.decoder: SealedFrameDecoder | None = None
        self.sealer: Sealer | None = None
        self._preamble = bytearray(PREAMBLE_BYTES)
        self._preamble_got = 0
        self._frames: collections.deque[Frame] = collections.deque()
        self._failure: BaseException | None = None
        self._closed = False
        self.flow = ReadFlow(READ_QUEUE_HIGH, READ_QUEUE_LOW)
        # When a frame last arrived or was sent: an idle connection is one
        # doing neither (a slow peer still gets a sender's KeepAlives).
        self.last_active = asyncio.get_running_loop().time()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not is_hub:
            self._keys(secret, ticket_id)

    def _keys(self, secret: bytes, ticket_id: bytes) -> None:
        send_dir, recv_dir = (
            (HUB_TO_CLIENT, CLIENT_TO_HUB) if self.is_hub else (CLIENT_TO_HUB, HUB_TO_CLIENT)
        )
        self.sealer = Sealer(derive_key(secret, ticket_id, send_dir))
        self.decoder = SealedFrameDecoder(Opener(derive_key(secret, ticket_id, recv_dir)))

    # --- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so cast.
        self.transport = cast(asyncio.Transport, transport)
        tune_socket(self.transport.get_extra_info("socket"))
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        if not self.is_hub:
            self.ready.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.decoder is None:  # still reading the preamble: exactly that much
            return memoryview(self._preamble)[self._preamble_got :]
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.last_active = asyncio.get_running_loop().time()
        if self.decoder is None:
            self._preamble_got += nbytes
            if self._preamble_got == PREAMBLE_BYTES:
                self._accept_preamble()
            return
        self.decoder.buffer_updated(nbytes)
        assert self.transport is not None
        try:
            while (frame := self.decoder.next_frame()) is not None:
                self._frames.append(frame)
                self.flow.received(len(frame[1]) + FRAME_OVERHEAD, self.transport)
        except ProtocolError as exc:
            # Every record is sealed: one that does not frame or open was
            # damaged on the way (a middlebox, or someone writing into the
            # connection). Nothing damaged is delivered; the connection is
            # dropped like a cut one, and what runs over it resumes.
            self.transport.abort()
            self._fail(WireDamaged(f"data connection dropped: its bytes arrived damaged ({exc})"))
        self._wake()

    def _accept_preamble(self) -> None:
        try:
            ticket_id = parse_preamble(bytes(self._preamble))
            assert self.lookup is not None
            found = self.lookup(ticket_id)
            if found is None:
                raise RemoteProtocolError("unknown or expired reception ticket")
        except ProtocolError as exc:
            # Not sealed: the peer has no keys we could seal with.
            assert self.transport is not None
            self.transport.write(encode_frame(Error(code=exc.code, message=exc.message)))
            self.transport.close()
            if not self.ready.done():
                self.ready.set_exception(exc)
            return
        secret, self.context = found
        self._keys(secret, ticket_id)
        self.ready.set_result(None)

    def eof_received(self) -> bool:
        self._fail(ChannelClosed("data connection closed by the peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._fail(
            ChannelClosed(f"data connection lost: {exc}" if exc else "data connection closed")
        )
        if not self.ready.done():
            self.ready.set_exception(ChannelClosed("data connection closed before it was ready"))
            self.ready.exception()  # mark retrieved: nobody may be waiting
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- channel API ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        if self._closed or self.transport is None or self.transport.is_closing():
            raise ChannelClosed("data connection closed")
        assert self.sealer is not None
        # Seal and write without an await in between: records must reach the
        # socket in counter order even when several tasks send.
        raw = end_to_end_sealed(msg)
        self.transport.writelines(self.sealer.seal_frame(encode_json(msg), payload, raw=raw))
        self.last_active = asyncio.get_running_loop().time()
        if self._drain is not None and not self._drain.done():
            await self._drain
        if self._closed:
            raise ChannelClosed("data connection lost while sending")

    async def recv(self) -> Frame:
        while not self._frames:
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frame = self._frames.popleft()
        self.flow.consumed(len(frame[1]) + FRAME_OVERHEAD, None if self._closed else self.transport)
        return frame

    async def aclose(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


# The channel type the rest of the code names.
DataConnChannel = DataConnProtocol


class WireDamaged(ChannelClosed):
    """Sealed records arrived that did not frame or open: bytes changed on
    the way. The connection is dropped; transfers on it resume."""

    code = "wire_damaged"


class DataPathUnavailable(NetworkError):
    """A data connection could not be set up (refused, filtered or garbled)."""

    code = "data_path_unavailable"


async def open_data_connection(
    host: str,
    port: int,
    *,
    ticket_id: bytes,
    secret: bytes,
    timeout: float = 10.0,
    proxy: URL | None = None,
) -> DataConnProtocol:
    """Dial the hub's port, present a reception ticket and wait for the hub's
    sealed Welcome, which proves the ticket was accepted and the keys agree.

    With ``proxy`` the connection is a CONNECT tunnel through it; a proxy that
    refuses one (many allow only port 443) makes the data path unavailable,
    so the caller falls back to frames inside the TLS WebSocket."""
    loop = asyncio.get_running_loop()
    proto = DataConnProtocol(is_hub=False, secret=secret, ticket_id=ticket_id)
    try:
        if proxy is None:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: proto, host, port)
        else:
            sock = await open_tunnel(proxy, host, port, timeout=timeout)
            with closing_on_failure(sock):
                await loop.create_connection(lambda: proto, sock=sock)
        assert proto.transport is not None
        proto.transport.write(preamble(ticket_id))
        async with asyncio.timeout(timeout):
            msg, _ = await proto.recv()
    except ProxyError as exc:
        raise DataPathUnavailable(
            f"cannot open a data connection through the proxy: {exc.user_message()}"
        ) from None
    except (OSError, TimeoutError, ChannelClosed) as exc:
        await proto.aclose()
        if isinstance(exc, WireDamaged):
            # The hub answers a refused ticket with an unsealed error frame,
            # which cannot open as a sealed record; a middlebox garbling
            # bytes looks alike.
            raise DataPathUnavailable(
                "the hub refused the data connection (ticket unknown or expired) "
                "or something on the path altered it"
            ) from None
        raise DataPathUnavailable(
            f"cannot open a data connection to {host}:{port}: {exc}"
        ) from None
    if isinstance(msg, Error):  # e.g. the account has as many connections as it may
        await proto.aclose()
        raise DataPathUnavailable(f"the hub refused a data connection: {msg.message}")
    if not isinstance(msg, Welcome) or msg.version != PROTOCOL_VERSION:
        await proto.aclose()
        raise DataPathUnavailable(f"expected a version {PROTOCOL_VERSION} welcome, got {msg}")
    return proto


async def close_when_idle(proto: DataConnProtocol, idle: float) -> None:
    """Close ``proto`` once no frame has arrived or been sent on it for
    ``idle`` seconds (reading paused by our own back-pressure is not idle)."""
    loop = asyncio.get_running_loop()
    while not proto.closed:
        if proto.flow.paused:
            proto.last_active = loop.time()
        left = proto.last_active + idle - loop.time()
        if left <= 0:
            await proto.aclose()
            return
        await asyncio.sleep(left)


async def accept_data_connection(
    sock: socket.socket, lookup: TicketLookup, timeout: float
) -> DataConnProtocol | None:
    """Hub side: wrap an accepted socket, wait for a valid preamble."""
    loop = asyncio.get_running_loop()
    proto = DataConnProtocol(is_hub=True, lookup=lookup)
    await loop.connect_accepted_socket(lambda: proto, sock)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(proto.ready)
    except (ProtocolError, ChannelClosed, TimeoutError):
        with contextlib.suppress(Exception):
            await proto.aclose()
        return None
    return proto
