"""Limits a hostile client meets: frame types without data carry no payload,
per-account caps on channels and streams, an idle data connection is closed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from freight.protocol import messages as m
from freight.protocol.frames import FrameDecoder, encode_frame
from tests.hostile import control_ws, token_of
from tests.support import Client, Hub, random_file


def _decode(data: bytes) -> m.AnyMessage:
    dec = FrameDecoder()
    dec.feed(data)
    frame = dec.next_frame()
    assert frame is not None
    return frame[0]


def test_a_payload_on_a_control_frame_is_refused(tmp_path: Path, hub: Hub, client: Client) -> None:
    token = token_of(client)

    async def scenario() -> tuple[m.AnyMessage, aiohttp.WSMsgType]:
        session, ws = await control_ws(hub, token)
        try:
            await ws.send_bytes(encode_frame(m.Hello(version=1)))
            assert isinstance(_decode((await ws.receive()).data), m.Welcome)
            # A Ping the hub would ignore, carrying 1 MiB it would have queued.
            await ws.send_bytes(encode_frame(m.Ping(len=1 << 20), bytes(1 << 20)))
            reply = _decode((await asyncio.wait_for(ws.receive(), 10)).data)
            closing = await asyncio.wait_for(ws.receive(), 10)
            return reply, closing.type
        finally:
            await session.close()

    reply, closing = asyncio.run(scenario())
    assert isinstance(reply, m.Error)
    assert reply.code == "remote_protocol_error"
    assert "ping frames carry no payload" in reply.message
    assert closing in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    src = random_file(tmp_path / "after", 50_000)  # everyone else is served
    client.run("push", str(src), "--quiet")
    assert [f["name"] for f in json.loads(client.run("ls", "--json").stdout)] == ["after"]
