"""AEAD records on data connections: round trips, tampering, limits, preamble."""

from __future__ import annotations

import pytest
from protocol_samples import SAMPLES

from freight.protocol import (
    FrameTooLarge,
    IntegrityError,
    LocalProtocolError,
    Opener,
    RemoteProtocolError,
    Sealer,
    encode_frame,
)
from freight.protocol.seal import (
    CLIENT_TO_HUB,
    HUB_TO_CLIENT,
    MAX_RECORD_BYTES,
    PREAMBLE_BYTES,
    TAG_BYTES,
    derive_key,
    parse_preamble,
    preamble,
)

SECRET = bytes(range(32))
TICKET = bytes(range(100, 116))
FRAMES = [encode_frame(msg, payload) for msg, payload in SAMPLES]


def pair(direction: bytes = CLIENT_TO_HUB) -> tuple[Sealer, Opener]:
    """The two ends of one direction, each deriving the key on its own."""
    return (
        Sealer(derive_key(SECRET, TICKET, direction)),
        Opener(derive_key(SECRET, TICKET, direction)),
    )


def split(record: bytes) -> tuple[bytes, bytes]:
    return record[:4], record[4:]


@pytest.mark.parametrize("direction", [CLIENT_TO_HUB, HUB_TO_CLIENT])
def test_round_trip(direction: bytes) -> None:
    sealer, opener = pair(direction)
    for frame in FRAMES:
        prefix, body = split(sealer.seal(frame))
        assert opener.record_length(prefix) == len(body) == len(frame) + TAG_BYTES
        assert opener.open(prefix, body) == frame


def test_empty_frame_round_trips() -> None:
    sealer, opener = pair()
    prefix, body = split(sealer.seal(b""))
    assert opener.record_length(prefix) == TAG_BYTES
    assert opener.open(prefix, body) == b""


def test_records_hide_the_frame() -> None:
    sealer, _ = pair()
    frame = encode_frame(*SAMPLES[0])
    record = sealer.seal(frame)
    assert b"freight/0.1" not in record
    assert b"hello" not in record


def test_same_frame_seals_differently_each_time() -> None:
    sealer, _ = pair()
    assert sealer.seal(FRAMES[0])[4:] != sealer.seal(FRAMES[0])[4:]


def test_directions_and_tickets_give_different_keys() -> None:
    c2h = derive_key(SECRET, TICKET, CLIENT_TO_HUB)
    h2c = derive_key(SECRET, TICKET, HUB_TO_CLIENT)
    other_ticket = derive_key(SECRET, bytes(16), CLIENT_TO_HUB)
    other_secret = derive_key(bytes(32), TICKET, CLIENT_TO_HUB)
    assert len({c2h, h2c, other_ticket, other_secret}) == 4
    assert all(len(k) == 32 for k in (c2h, h2c))
    assert derive_key(SECRET, TICKET, CLIENT_TO_HUB) == c2h  # deterministic


def test_record_of_one_direction_does_not_open_in_the_other() -> None:
    sealer, _ = pair(CLIENT_TO_HUB)
    _, opener = pair(HUB_TO_CLIENT)
    with pytest.raises(IntegrityError):
        opener.open(*split(sealer.seal(FRAMES[0])))


@pytest.mark.parametrize(("secret", "ticket"), [(SECRET[:31], TICKET), (SECRET, TICKET + b"x")])
def test_derive_key_refuses_wrong_lengths(secret: bytes, ticket: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        derive_key(secret, ticket, CLIENT_TO_HUB)


# --- tampering ------------------------------------------------------------------


def test_replayed_record_fails() -> None:
    sealer, opener = pair()
    record = sealer.seal(FRAMES[0])
    opener.open(*split(record))
    with pytest.raises(IntegrityError):
        opener.open(*split(record))


def test_reordered_records_fail() -> None:
    sealer, opener = pair()
    first, second = sealer.seal(FRAMES[0]), sealer.seal(FRAMES[1])
    with pytest.raises(IntegrityError):
        opener.open(*split(second))
    # A failed record does not advance the receiving side.
    assert opener.open(*split(first)) == FRAMES[0]
    assert opener.open(*split(second)) == FRAMES[1]


def test_dropped_record_fails() -> None:
    sealer, opener = pair()
    sealer.seal(FRAMES[0])  # lost on the way
    with pytest.raises(IntegrityError):
        opener.open(*split(sealer.seal(FRAMES[1])))


def test_truncated_body_fails() -> None:
    sealer, opener = pair()
    prefix, body = split(sealer.seal(FRAMES[0]))
    for cut in (0, 1, TAG_BYTES - 1, TAG_BYTES, len(body) - 1):
        with pytest.raises(IntegrityError):
            opener.open(prefix, body[:cut])


def test_modified_length_prefix_fails() -> None:
    sealer, opener = pair()
    prefix, body = split(sealer.seal(FRAMES[0]))
    n = int.from_bytes(prefix, "big")
    with pytest.raises(IntegrityError):
        opener.open((n + 1).to_bytes(4, "big"), body)
    with pytest.raises(IntegrityError):
        opener.open((n - 1).to_bytes(4, "big"), body[:-1])


@pytest.mark.parametrize("where", [0, 10, -TAG_BYTES - 1, -1])
def test_flipped_bit_fails(where: int) -> None:
    sealer, opener = pair()
    prefix, body = split(sealer.seal(FRAMES[3]))
    bad = bytearray(body)
    bad[where] ^= 0x01
    with pytest.raises(IntegrityError):
        opener.open(prefix, bytes(bad))


# --- record length ------------------------------------------------------------------


def test_record_length_limits() -> None:
    opener = Opener(derive_key(SECRET, TICKET, CLIENT_TO_HUB), max_record=1000)
    assert opener.record_length((1000).to_bytes(4, "big")) == 1000
    assert opener.record_length(TAG_BYTES.to_bytes(4, "big")) == TAG_BYTES
    with pytest.raises(FrameTooLarge):
        opener.record_length((1001).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        opener.record_length(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        opener.record_length((TAG_BYTES - 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError):
        opener.record_length(b"\x00\x00\x00\x00")


def test_default_record_limit_fits_the_largest_frame() -> None:
    opener = Opener(derive_key(SECRET, TICKET, CLIENT_TO_HUB))
    largest = 4 + 64 * 1024 + 16 * 1024 * 1024 + TAG_BYTES
    assert opener.record_length(largest.to_bytes(4, "big")) == largest == MAX_RECORD_BYTES
    with pytest.raises(FrameTooLarge):
        opener.record_length((largest + 1).to_bytes(4, "big"))


# --- preamble ------------------------------------------------------------------------


def test_preamble_round_trip() -> None:
    data = preamble(TICKET)
    assert len(data) == PREAMBLE_BYTES
    assert parse_preamble(data) == TICKET


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"FRD1",
        b"FRD1" + TICKET[:-1],
        b"FRD1" + TICKET + b"x",
        b"FRD2" + TICKET,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(9),  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost",
    ],
)
def test_preamble_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_preamble(garbage)
