"""Relay frames on a lane (a data connection carrying an attachment's relay
records): what each hop seals. The client's DataConnProtocol writes into a
recording transport; the hub's decoder reads the bytes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from freight.protocol import messages as m
from freight.protocol.errors import IntegrityError
from freight.protocol.seal import CLIENT_TO_HUB, Opener, SealedFrameDecoder, derive_key
from freight.transport.dataconn import DataConnProtocol

SECRET = bytes(range(32))
TICKET = bytes(range(100, 116))
CID = "c-0123abcd"
# Handshake records carry identity keys and SPAKE2/X25519 messages in clear
# end to end; a lane must not show them to whoever watches the path.
HANDSHAKE = bytes(range(65))


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def writelines(self, data: Any) -> None:
        for part in data:
            self.written += part

    def write(self, data: Any) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def lane_bytes(msg: m.Message, payload: bytes) -> bytes:
    client = DataConnProtocol(is_hub=False, secret=SECRET, ticket_id=TICKET)
    transport = Recording()
    client.connection_made(transport)
    await client.send(msg, payload)
    return bytes(transport.written)


def hub_decoder() -> SealedFrameDecoder:
    return SealedFrameDecoder(Opener(derive_key(SECRET, TICKET, CLIENT_TO_HUB)))


async def test_handshake_records_are_sealed_per_hop_on_a_lane() -> None:
    msg = m.Relay(cid=CID, kind="h", len=len(HANDSHAKE))
    wire = await lane_bytes(msg, HANDSHAKE)
    assert HANDSHAKE not in wire
    assert HANDSHAKE[:16] not in wire and HANDSHAKE[-16:] not in wire
    dec = hub_decoder()
    dec.feed(wire)
    assert dec.next_frame() == (msg, HANDSHAKE)


@pytest.mark.parametrize("where", [-1, -17, -40])
async def test_a_tampered_handshake_record_on_a_lane_is_refused(where: int) -> None:
    msg = m.Relay(cid=CID, kind="h", len=len(HANDSHAKE))
    wire = bytearray(await lane_bytes(msg, HANDSHAKE))
    wire[where] ^= 0x01  # in the payload's record (tag or body)
    dec = hub_decoder()
    dec.feed(bytes(wire))
    with pytest.raises(IntegrityError):
        dec.next_frame()


@pytest.mark.parametrize("kind", ["d", "a"])
async def test_end_to_end_sealed_records_are_not_sealed_twice(kind: str) -> None:
    """Data and acknowledgement records are AEAD records of the two ends
    already: the lane seals only their header (docs/protocol.md 12.1)."""
    sealed = bytes(range(200, 240))
    msg = m.Relay(cid=CID, kind=kind, seq=3, len=len(sealed))
    wire = await lane_bytes(msg, sealed)
    assert wire.endswith(sealed)
    dec = hub_decoder()
    dec.feed(wire)
    assert dec.next_frame() == (msg, sealed)
