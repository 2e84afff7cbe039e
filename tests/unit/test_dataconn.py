"""A data connection's receive side: frames the reader has not taken are
bounded in bytes, and reading resumes once it takes them."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from freight.protocol import messages as m
from freight.protocol.frames import encode_json
from freight.protocol.seal import HUB_TO_CLIENT, Sealer, derive_key
from freight.transport.dataconn import DataConnProtocol

FOUR_MIB = 4 << 20
FRAMES = 12


def queued_bytes(proto: DataConnProtocol) -> int:
    return sum(len(payload) for _, payload in proto._frames)


@pytest.mark.timeout(60)
async def test_frames_not_taken_are_bounded_in_bytes() -> None:
    secret, ticket = os.urandom(32), os.urandom(16)
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    proto = DataConnProtocol(is_hub=False, secret=secret, ticket_id=ticket)
    await asyncio.get_running_loop().create_connection(lambda: proto, sock=ours)

    sealer = Sealer(derive_key(secret, ticket, HUB_TO_CLIENT))
    payload = os.urandom(FOUR_MIB)

    def flood() -> None:  # the hub's side, writing as fast as the kernel takes it
        for i in range(FRAMES):
            header = encode_json(
                m.Data(sid="s", seq=i, offset=i * FOUR_MIB, raw=FOUR_MIB, len=FOUR_MIB)
            )
            peer.sendall(b"".join(sealer.seal_frame(header, payload)))

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    try:
        # Until the queue stops growing: reading has paused, the rest waits
        # in the kernel's buffers and the writer is blocked.
        last, steady_since = -1, time.monotonic()
        while time.monotonic() - steady_since < 0.5:
            await asyncio.sleep(0.05)
            now = queued_bytes(proto)
            if now != last:
                last, steady_since = now, time.monotonic()
        assert last <= 4 * 1024 * 1024 + FOUR_MIB  # READ_QUEUE_HIGH plus one frame
        assert writer.is_alive()  # the rest of the flood is held back, not lost
        for i in range(FRAMES):
            msg, data = await asyncio.wait_for(proto.recv(), 20)
            assert isinstance(msg, m.Data) and msg.seq == i and data == payload
        writer.join(20)
        assert not writer.is_alive()
    finally:
        await proto.aclose()
        peer.close()
