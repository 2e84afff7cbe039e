"""Frames over a WebSocket: one binary message carries one frame."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from ..protocol.errors import RemoteProtocolError
from ..protocol.frames import decode_frame, encode_header
from ..protocol.limits import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES
from ..protocol.messages import Message
from .channel import ChannelClosed, Frame

WS_MAX_MESSAGE = 4 + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES


class WSChannel:
    """Wraps an aiohttp client or server WebSocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()

    async def send(self, msg: Message, payload: bytes = b"") -> None:
        head = encode_header(msg)
        try:
            async with self._lock:
                await self.ws.send_bytes(head + payload if payload else head)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ChannelClosed(f"websocket lost: {exc}") from None

    async def recv(self) -> Frame:
        while True:
            try:
                item = await self.ws.receive()
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise ChannelClosed(f"websocket lost: {exc}") from None
            if item.type == WSMsgType.BINARY:
                return decode_frame(item.data)
            if item.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                raise ChannelClosed("websocket closed")
            if item.type == WSMsgType.ERROR:
                raise ChannelClosed(f"websocket error: {self.ws.exception()}")
            if item.type == WSMsgType.TEXT:
                raise RemoteProtocolError("text message on a frame channel")
            # PING/PONG are handled by aiohttp; loop.

    async def aclose(self) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await self.ws.close()
