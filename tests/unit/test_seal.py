"""AEAD records on data connections: round trips, tampering, limits, preamble."""

from __future__ import annotations

import random

import pytest
from protocol_samples import SAMPLES, data_msg

from freight.protocol import (
    FrameTooLarge,
    IntegrityError,
    LocalProtocolError,
    Opener,
    RemoteProtocolError,
    Sealer,
)
from freight.protocol import messages as m
from freight.protocol.frames import encode_json
from freight.protocol.seal import (
    CLIENT_TO_HUB,
    HUB_TO_CLIENT,
    KIND_HEADER,
    KIND_PAYLOAD,
    PREAMBLE_BYTES,
    TAG_BYTES,
    SealedFrameDecoder,
    derive_key,
    end_to_end_sealed,
    parse_preamble,
    preamble,
)

SECRET = bytes(range(32))
TICKET = bytes(range(100, 116))


def pair(direction: bytes = CLIENT_TO_HUB) -> tuple[Sealer, Opener]:
    """The two ends of one direction, each deriving the key on its own."""
    return (
        Sealer(derive_key(SECRET, TICKET, direction)),
        Opener(derive_key(SECRET, TICKET, direction)),
    )


def wire(sealer: Sealer, msg: m.Message, payload: bytes = b"") -> bytes:
    raw = end_to_end_sealed(msg)
    return b"".join(sealer.seal_frame(encode_json(msg), payload, raw=raw))


def test_relay_payload_crosses_unsealed_after_its_sealed_header() -> None:
    """An end-to-end sealed payload is not sealed again per hop: the header
    record announces it, the bytes follow as they are, and a change to them
    is the far end's to detect (its AEAD), while the header stays protected."""
    sealer, _ = pair()
    payload = b"\xaa" * 40
    msg = m.Relay(cid="c-1", kind="d", seq=5, len=len(payload))
    data = wire(sealer, msg, payload)
    assert data.endswith(payload)
    dec = decoder()
    dec.feed(data[:-1])
    assert dec.next_frame() is None  # waits for the whole payload
    dec.feed(data[-1:])
    assert dec.next_frame() == (msg, payload)
    # The sealed header still may not be touched.
    bad = bytearray(wire(sealer, msg, payload))
    bad[6] ^= 1
    dec2 = decoder()
    dec2.feed(bytes(data) + bytes(bad))
    assert dec2.next_frame() == (msg, payload)
    with pytest.raises(RemoteProtocolError):
        dec2.next_frame()


def decoder(direction: bytes = CLIENT_TO_HUB, **kw: int) -> SealedFrameDecoder:
    return SealedFrameDecoder(Opener(derive_key(SECRET, TICKET, direction)), **kw)


@pytest.mark.parametrize("direction", [CLIENT_TO_HUB, HUB_TO_CLIENT])
def test_every_sample_round_trips_through_the_decoder(direction: bytes) -> None:
    sealer, _ = pair(direction)
    dec = decoder(direction)
    data = b"".join(wire(sealer, msg, payload) for msg, payload in SAMPLES)
    dec.feed(data)
    assert [dec.next_frame() for _ in SAMPLES] == list(SAMPLES)
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_decoder_accepts_any_split_of_the_byte_stream() -> None:
    sealer, _ = pair()
    data = b"".join(wire(sealer, msg, payload) for msg, payload in SAMPLES)
    for step in (1, 3, 17, 1000):
        dec = decoder()
        frames = []
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            while (f := dec.next_frame()) is not None:
                frames.append(f)
        assert frames == list(SAMPLES)


def test_payload_travels_in_its_own_record() -> None:
    sealer, _ = pair()
    msg, payload = next((mm, p) for mm, p in SAMPLES if p)
    records = sealer.seal_frame(encode_json(msg), payload)
    assert len(records) == 4  # header prefix, header body, payload prefix, payload body
    assert int.from_bytes(records[2], "big") == len(payload) + TAG_BYTES
    assert len(sealer.seal_frame(encode_json(m.Hello(version=1)))) == 2


def test_records_hide_the_frame() -> None:
    sealer, _ = pair()
    data = wire(sealer, *SAMPLES[0])
    assert b"freight/0.1" not in data
    assert b"hello" not in data


def test_same_frame_seals_differently_each_time() -> None:
    sealer, _ = pair()
    assert wire(sealer, *SAMPLES[0])[4:] != wire(sealer, *SAMPLES[0])[4:]


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
    dec = decoder(HUB_TO_CLIENT)
    dec.feed(wire(sealer, *SAMPLES[0]))
    with pytest.raises(IntegrityError):
        dec.next_frame()


@pytest.mark.parametrize(("secret", "ticket"), [(SECRET[:31], TICKET), (SECRET, TICKET + b"x")])
def test_derive_key_refuses_wrong_lengths(secret: bytes, ticket: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        derive_key(secret, ticket, CLIENT_TO_HUB)


# --- tampering at the record level ---------------------------------------------------


def records(sealer: Sealer, msg: m.Message, payload: bytes = b"") -> list[tuple[bytes, bytes]]:
    parts = sealer.seal_frame(encode_json(msg), payload)
    return [(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]


def test_replayed_record_fails() -> None:
    sealer, opener = pair()
    (rec,) = records(sealer, *SAMPLES[0])
    opener.open(*rec, KIND_HEADER)
    with pytest.raises(IntegrityError):
        opener.open(*rec, KIND_HEADER)


def test_reordered_records_fail() -> None:
    sealer, opener = pair()
    (first,), (second,) = records(sealer, *SAMPLES[0]), records(sealer, *SAMPLES[1])
    with pytest.raises(IntegrityError):
        opener.open(*second, KIND_HEADER)
    # A failed record does not advance the receiving side.
    opener.open(*first, KIND_HEADER)
    opener.open(*second, KIND_HEADER)


def test_dropped_record_fails() -> None:
    sealer, opener = pair()
    records(sealer, *SAMPLES[0])  # lost on the way
    (second,) = records(sealer, *SAMPLES[1])
    with pytest.raises(IntegrityError):
        opener.open(*second, KIND_HEADER)


def test_header_record_cannot_pass_as_a_payload_record() -> None:
    sealer, opener = pair()
    (rec,) = records(sealer, *SAMPLES[0])
    with pytest.raises(IntegrityError):
        opener.open(*rec, KIND_PAYLOAD)


def test_truncated_body_fails() -> None:
    sealer, opener = pair()
    ((prefix, body),) = records(sealer, *SAMPLES[0])
    for cut in (0, 1, TAG_BYTES - 1, TAG_BYTES, len(body) - 1):
        with pytest.raises(IntegrityError):
            opener.open(prefix, body[:cut], KIND_HEADER)


def test_modified_length_prefix_fails() -> None:
    sealer, opener = pair()
    ((prefix, body),) = records(sealer, *SAMPLES[0])
    n = int.from_bytes(prefix, "big")
    with pytest.raises(IntegrityError):
        opener.open((n + 1).to_bytes(4, "big"), body, KIND_HEADER)


@pytest.mark.parametrize("where", [4, 14, -TAG_BYTES - 1, -1])
def test_flipped_bit_in_the_stream_fails(where: int) -> None:
    sealer, _ = pair()
    msg, payload = next((mm, p) for mm, p in SAMPLES if p)
    data = bytearray(wire(sealer, msg, payload))
    data[where] ^= 0x01
    dec = decoder()
    dec.feed(bytes(data))
    with pytest.raises(IntegrityError):
        dec.next_frame()
    with pytest.raises(IntegrityError):  # and it stays broken
        dec.next_frame()


# --- limits ---------------------------------------------------------------------------


def test_oversize_header_record_is_refused_before_buffering() -> None:
    dec = decoder(max_header=100)
    dec.feed((100 + TAG_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_payload_record_must_match_the_header() -> None:
    sealer, _ = pair()
    msg, payload = next((mm, p) for mm, p in SAMPLES if p)
    parts = sealer.seal_frame(encode_json(msg), payload)
    lying = (int.from_bytes(parts[2], "big") + 1).to_bytes(4, "big")
    dec = decoder()
    dec.feed(parts[0] + parts[1] + lying)
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_record_shorter_than_its_tag_is_refused() -> None:
    dec = decoder()
    dec.feed((TAG_BYTES - 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_header_announcing_too_large_a_payload_is_refused() -> None:
    sealer, _ = pair()
    msg = m.Data(sid="s", seq=0, offset=0, raw=10, len=2000)
    dec = decoder(max_payload=1000)
    dec.feed(b"".join(sealer.seal_frame(encode_json(msg))))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_buffer_grows_for_a_large_record_and_stays_bounded() -> None:
    sealer, _ = pair()
    payload = bytes(3 * 1024 * 1024)
    msg = m.Data(sid="s", seq=0, offset=0, raw=len(payload), len=len(payload))
    dec = decoder()
    data = wire(sealer, msg, payload)
    dec.feed(data[:-1])
    assert dec.next_frame() is None
    assert dec.capacity <= len(data) + 128 * 1024
    dec.feed(data[-1:])
    got = dec.next_frame()
    assert got is not None and got[1] == payload


def test_swapped_payloads_fail() -> None:
    sealer, _ = pair()
    a = sealer.seal_frame(encode_json(m.Data(sid="a", seq=0, offset=0, raw=3, len=3)), b"aaa")
    b = sealer.seal_frame(encode_json(m.Data(sid="b", seq=0, offset=0, raw=3, len=3)), b"bbb")
    dec = decoder()
    dec.feed(b"".join([*a[:2], *b[2:]]))
    with pytest.raises(IntegrityError):
        dec.next_frame()


def test_malformed_header_inside_a_valid_record_is_refused() -> None:
    sealer, _ = pair()
    dec = decoder()
    dec.feed(b"".join(sealer.seal_frame(b'{"t":"teleport"}')))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_decoder_keeps_raising_after_an_error() -> None:
    sealer, _ = pair()
    dec = decoder()
    dec.feed(b"\x00\x00\x00\x01" + wire(sealer, m.Hello(version=1)))
    with pytest.raises(RemoteProtocolError) as first:
        dec.next_frame()
    with pytest.raises(RemoteProtocolError) as again:
        dec.next_frame()
    assert again.value is first.value
    assert dec.buffered == 0
    with pytest.raises(RemoteProtocolError):
        dec.feed(wire(sealer, m.Hello(version=1)))
    with pytest.raises(RemoteProtocolError):
        dec.get_buffer()


def test_reading_straight_into_the_decoder_buffer() -> None:
    # The I/O layer's path: get_buffer() → recv_into → buffer_updated().
    sealer, _ = pair()
    stream = b"".join(wire(sealer, msg, payload) for msg, payload in SAMPLES)
    dec = decoder(initial=64)
    rng = random.Random(5)
    frames, pos = [], 0
    while pos < len(stream):
        target = dec.get_buffer()
        n = min(len(target), rng.randint(1, 300), len(stream) - pos)
        assert n > 0
        target[:n] = stream[pos : pos + n]
        target.release()
        dec.buffer_updated(n)
        pos += n
        while (frame := dec.next_frame()) is not None:
            frames.append(frame)
    assert frames == list(SAMPLES)


def test_buffer_stays_bounded_over_many_frames() -> None:
    sealer, _ = pair()
    dec = decoder(max_header=1024, max_payload=64 * 1024, initial=1024)
    record = 4 + 64 * 1024 + TAG_BYTES
    for i in range(50):
        msg, payload = data_msg(bytes(60 * 1024), seq=i)
        data = wire(sealer, msg, payload)
        for k in range(0, len(data), 7000):
            dec.feed(data[k : k + 7000])
            while dec.next_frame() is not None:
                pass
            assert dec.buffered <= record
            assert dec.capacity <= record + 64 * 1024  # one record plus one read
    assert dec.buffered == 0


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
        b"FRD3" + TICKET,
        b"FRD1" + TICKET,  # the previous record format
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(9),  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost",
    ],
)
def test_preamble_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_preamble(garbage)
