"""Garbage and oversize frames: the hub answers with an error, closes that
connection, and keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from pathlib import Path

import aiohttp

from freight.protocol import messages as m
from freight.protocol.frames import FrameDecoder, encode_frame
from freight.protocol.limits import MAX_HEADER_BYTES
from freight.protocol.seal import MAGIC
from tests.support import Client, Hub, random_file, same_bytes


def read_error_frame(sock: socket.socket) -> m.Error:
    dec = FrameDecoder()
    while True:
        data = sock.recv(65536)
        assert data, "hub closed without an error frame"
        dec.feed(data)
        frame = dec.next_frame()
        if frame is not None:
            msg, _ = frame
            assert isinstance(msg, m.Error)
            return msg


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the hub has closed (a reset counts: it did not read our garbage)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_garbage_bytes_get_an_error_and_others_are_served(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
        err = read_error_frame(s)
        assert err.code == "remote_protocol_error"
        assert "not a Freight data connection" in err.message
        assert closed_by_peer(s)

    # An unknown ticket on a well-formed preamble is refused the same way.
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
        s.sendall(MAGIC + b"\x00" * 16)
        assert "unknown or expired reception ticket" in read_error_frame(s).message

    src = random_file(tmp_path / "after", 100_000)
    client.run("push", str(src), "--quiet")
    client.run("pull", "after", str(tmp_path / "back"))
    assert same_bytes(src, tmp_path / "back")


async def _control_ws(hub: Hub, token: str) -> tuple[aiohttp.ClientSession, object]:
    ssl_ctx = ssl.create_default_context()
    ssl_ctx.check_hostname = False
    ssl_ctx.verify_mode = ssl.CERT_NONE
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    ws = await session.ws_connect(f"{hub.url}/v1/control", ssl=ssl_ctx)
    return session, ws


def _token(client: Client) -> str:
    cfg = json.loads((client.config / "config.json").read_text())
    return str(cfg["hubs"][cfg["hub"]]["token"])


def test_oversize_and_malformed_frames_on_the_control_channel(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    token = _token(client)

    async def scenario(payload: bytes) -> m.Error:
        session, ws = await _control_ws(hub, token)
        try:
            await ws.send_bytes(encode_frame(m.Hello(version=1)))  # type: ignore[attr-defined]
            welcome = await ws.receive()  # type: ignore[attr-defined]
            assert b"welcome" in welcome.data
            await ws.send_bytes(payload)  # type: ignore[attr-defined]
            reply = await ws.receive()  # type: ignore[attr-defined]
            dec = FrameDecoder()
            dec.feed(reply.data)
            frame = dec.next_frame()
            assert frame is not None
            err = frame[0]
            assert isinstance(err, m.Error)
            closing = await ws.receive()  # type: ignore[attr-defined]
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return err
        finally:
            await session.close()

    oversize = struct.pack(">I", MAX_HEADER_BYTES + 1) + b"{" * 16
    err = asyncio.run(scenario(oversize))
    assert err.code == "frame_too_large"
    assert "exceeds the limit" in err.message

    malformed = struct.pack(">I", 9) + b'{"t":"zz"}'[:9]
    err = asyncio.run(scenario(malformed))
    assert err.code == "remote_protocol_error"

    # Everyone else is still served.
    src = random_file(tmp_path / "ok", 50_000)
    client.run("push", str(src), "--quiet")
    assert [f["name"] for f in json.loads(client.run("ls", "--json").stdout)] == ["ok"]


def test_version_mismatch_is_explained(hub: Hub, client: Client) -> None:
    token = _token(client)

    async def scenario() -> m.Error:
        session, ws = await _control_ws(hub, token)
        try:
            await ws.send_bytes(encode_frame(m.Hello(version=99)))  # type: ignore[attr-defined]
            reply = await ws.receive()  # type: ignore[attr-defined]
            dec = FrameDecoder()
            dec.feed(reply.data)
            frame = dec.next_frame()
            assert frame is not None and isinstance(frame[0], m.Error)
            return frame[0]
        finally:
            await session.close()

    err = asyncio.run(scenario())
    assert err.code == "version_mismatch"
    assert "client speaks protocol 99" in err.message
