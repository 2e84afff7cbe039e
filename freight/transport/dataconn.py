"""Sealed out-of-band data connections (see freight.protocol.seal)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from ..protocol.frames import encode_header, parse_header
from ..protocol.messages import AnyMessage, Message
from ..protocol.seal import (
    CLIENT_TO_HUB,
    HUB_TO_CLIENT,
    Opener,
    Sealer,
    derive_key,
    preamble,
)
from .channel import ChannelClosed, Frame

_READ_LIMIT = 64 * 1024 * 1024
# drain() returns only below this: a few frames may queue in user space so
# the sender is not woken for every 64 KiB the socket takes.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024


def tune_socket(sock: socket.socket | None) -> None:
    """Large buffers and no Nagle: bulk frames should leave at once."""
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)


class DataConnChannel:
    """Frames sealed with per-direction AES-256-GCM keys over plain TCP."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        secret: bytes,
        ticket_id: bytes,
        is_hub: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        send_dir, recv_dir = (
            (HUB_TO_CLIENT, CLIENT_TO_HUB) if is_hub else (CLIENT_TO_HUB, HUB_TO_CLIENT)
        )
        self._sealer = Sealer(derive_key(secret, ticket_id, send_dir))
        self._opener = Opener(derive_key(secret, ticket_id, recv_dir))

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        # Seal and write without an await in between: records must hit the
        # socket in counter order even when several tasks send.
        head = encode_header(msg)
        self.writer.write(self._sealer.seal(head + payload if payload else head))
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(f"data connection lost: {exc}") from None

    async def recv(self) -> Frame:
        try:
            prefix = await self.reader.readexactly(4)
            body = await self.reader.readexactly(self._opener.record_length(prefix))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            raise ChannelClosed(f"data connection closed: {exc}") from None
        frame = self._opener.open(prefix, body)
        hlen = int.from_bytes(frame[:4], "big")
        msg: AnyMessage = parse_header(frame[4 : 4 + hlen])
        payload = frame[4 + hlen :]
        if len(payload) != msg.len:
            from ..protocol.errors import RemoteProtocolError

            raise RemoteProtocolError("sealed frame length differs from its header")
        return msg, payload

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def open_data_connection(
    host: str, port: int, *, ticket_id: bytes, secret: bytes, timeout: float = 10.0
) -> DataConnChannel:
    """Dial the hub's port and present a reception ticket."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=_READ_LIMIT), timeout
    )
    tune_socket(writer.get_extra_info("socket"))
    writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
    writer.write(preamble(ticket_id))
    return DataConnChannel(reader, writer, secret=secret, ticket_id=ticket_id, is_hub=False)
