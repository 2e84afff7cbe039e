"""Limits a hostile client meets: frame types without data carry no payload,
per-account caps on channels and streams, an idle data connection is closed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from freight.protocol import messages as m
from freight.protocol.frames import FrameDecoder, encode_frame
from freight.transport.channel import ChannelClosed
from freight.transport.dataconn import open_data_connection
from tests.collectsupport import hub_metric
from tests.hostile import attach, control_ws, insecure_ssl, recv_frame, ticket, token_of
from tests.support import Client, Hub, random_file, same_bytes


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


def test_an_idle_data_connection_is_closed(tmp_path: Path, hubs: object) -> None:
    hub = hubs("--data-idle-timeout", "1.5")  # type: ignore[operator]
    client = Client(tmp_path / "client", hub)
    client.login()
    token = token_of(client)

    async def scenario() -> float:
        session, ws, welcome = await attach(hub, token)
        try:
            assert isinstance(welcome, m.Welcome)
            grant = await ticket(ws)
            data = await open_data_connection(
                "127.0.0.1",
                hub.port,
                ticket_id=bytes.fromhex(grant.ticket),
                secret=bytes.fromhex(grant.secret),
            )
            started = time.monotonic()
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(data.recv(), 10)  # nothing sent: the hub hangs up
            return time.monotonic() - started
        finally:
            await session.close()

    took = asyncio.run(scenario())
    assert took > 1.0
    assert took < 5


def test_an_account_holds_only_so_many_connections_and_streams(
    tmp_path: Path, hubs: object
) -> None:
    hub = hubs("--account-connections", "3", "--account-streams", "2")  # type: ignore[operator]
    client = Client(tmp_path / "client", hub)
    client.login()
    token = token_of(client)

    async def connections() -> m.AnyMessage:
        held = [await attach(hub, token) for _ in range(3)]
        try:
            assert all(isinstance(w, m.Welcome) for _, _, w in held)
            session, _, refused = await attach(hub, token)
            await session.close()
            await held[0][0].close()  # one goes: room for another
            await asyncio.sleep(0.5)
            session, _, again = await attach(hub, token)
            await session.close()
            assert isinstance(again, m.Welcome)
            return refused
        finally:
            for session, _, _ in held:
                await session.close()

    refused = asyncio.run(connections())
    assert isinstance(refused, m.Error) and refused.code == "limit_reached"
    assert refused.message == (
        "admin already has 3 connections open at the hub, the most an account may have"
    )

    async def streams() -> list[m.AnyMessage]:
        session, ws, _ = await attach(hub, token)
        try:
            answers = []
            for sid in ("s1", "s2", "s3"):
                await ws.send_bytes(encode_frame(m.StartStream(sid=sid, name=sid, size=10)))
                answers.append(await recv_frame(ws))
            return answers
        finally:
            await session.close()

    one, two, three = asyncio.run(streams())
    assert isinstance(one, m.StartStreamAck) and isinstance(two, m.StartStreamAck)
    assert isinstance(three, m.Abort) and three.sid == "s3" and three.code == "limit_reached"
    assert "admin already has 2 streams open" in three.message

    # A CLI transfer refused for the same reason says so and is not retried.
    async def push_while_full() -> tuple[int, str]:
        held = [await attach(hub, token) for _ in range(3)]
        try:
            src = random_file(tmp_path / "refused", 10_000)
            res = await asyncio.to_thread(client.run, "push", str(src), check=False, timeout=60)
            return res.returncode, res.stderr
        finally:
            for session, _, _ in held:
                await session.close()

    code, stderr = asyncio.run(push_while_full())
    assert code == 7, stderr
    assert "admin already has 3 connections open at the hub" in stderr

    # Room for the control channel but not for a data connection: the
    # stream falls back to frames inside the WebSocket and completes.
    async def push_with_one_place_left() -> None:
        held = [await attach(hub, token) for _ in range(2)]
        try:
            await asyncio.to_thread(client.run, "push", str(src), "--quiet", timeout=60)
        finally:
            for session, _, _ in held:
                await session.close()

    refusals = 'freight_refused_total{limit="account_connections"}'
    before = hub_metric(hub, refusals)
    src = random_file(tmp_path / "fits", 300_000)
    asyncio.run(push_with_one_place_left())
    assert hub_metric(hub, refusals) == before + 1  # the data connection
    client.run("pull", "fits", str(tmp_path / "fits.back"))
    assert same_bytes(src, tmp_path / "fits.back")


def test_a_node_takes_only_so_many_attachments_a_second(tmp_path: Path, hubs: object) -> None:
    """After a node's failure its clients come back to the others: a node
    takes ``--attach-rate`` control channels a second (one every 10 s here),
    answers the rest 429 with a Retry-After, and a client waits its turn."""
    hub = hubs("--attach-rate", "0.1")  # type: ignore[operator]
    client = Client(tmp_path / "client", hub)
    client.login()
    token = token_of(client)
    refusals = 'freight_refused_total{limit="attach_rate"}'

    async def crowd() -> tuple[m.AnyMessage, aiohttp.WSServerHandshakeError, int, str, dict]:
        session, _, welcome = await attach(hub, token)
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as ws_refused:
                await control_ws(hub, token)
            headers = {"Authorization": f"Bearer {token}"}
            url = f"{hub.url}/v1/attach/http"
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.post(url, ssl=insecure_ssl()) as resp,
            ):
                retry = resp.headers.get("Retry-After", "")
                return welcome, ws_refused.value, resp.status, retry, await resp.json()
        finally:
            await session.close()

    welcome, ws_refused, status, retry, body = asyncio.run(crowd())
    assert isinstance(welcome, m.Welcome)
    assert ws_refused.status == 429
    assert ws_refused.headers is not None and ws_refused.headers["Retry-After"] == "2"
    assert (status, retry, body["error"]["code"]) == (429, "2", "rate_limited")
    assert "try again in a moment" in body["error"]["message"]
    # A push now is refused too, waits as told (with jitter) and goes through.
    before = hub_metric(hub, refusals)
    src = random_file(tmp_path / "waited", 100_000)
    started = time.monotonic()
    client.run("push", str(src), "--quiet", timeout=60)
    assert time.monotonic() - started >= 1.5
    assert hub_metric(hub, refusals) > before
    (stored,) = (hub.data / "files").glob("*/waited")
    assert same_bytes(src, stored)
