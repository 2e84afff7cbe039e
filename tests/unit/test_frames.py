"""Frame codec: round trips, incremental decoding, limits and malformed input."""

from __future__ import annotations

import json
import random
import struct

import msgspec
import pytest
from protocol_samples import ALL_MESSAGE_TYPES, SAMPLES, SID

from freight.protocol import (
    FrameDecoder,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    decode_frame,
    encode_frame,
    encode_header,
)
from freight.protocol import messages as m
from freight.protocol.frames import decode_frames, parse_header

STREAM = b"".join(encode_frame(msg, payload) for msg, payload in SAMPLES)


def raw_frame(header: bytes | str, payload: bytes = b"") -> bytes:
    """A frame built by hand, so that it can be as wrong as we like."""
    if isinstance(header, str):
        header = header.encode()
    return struct.pack(">I", len(header)) + header + payload


def drain(dec: FrameDecoder) -> list[tuple[m.Message, bytes]]:
    return list(dec)


# --- round trips -------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(msg) for msg, _ in SAMPLES} == set(ALL_MESSAGE_TYPES)


@pytest.mark.parametrize(("msg", "payload"), SAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(msg: m.Message, payload: bytes) -> None:
    frame = encode_frame(msg, payload)
    assert decode_frame(frame) == (msg, payload)
    # The header alone is the length prefix plus JSON tagged with "t".
    header = encode_header(msg)
    assert frame == header + payload
    (hlen,) = struct.unpack(">I", header[:4])
    assert hlen == len(header) - 4
    assert json.loads(header[4:])["t"] == msg.__struct_config__.tag


def test_encode_frame_refuses_len_that_does_not_match_payload() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(m.Hello(version=1, len=2), b"abc")
    with pytest.raises(LocalProtocolError):
        encode_frame(m.Hello(version=1), b"x")


def test_decoder_yields_every_frame_of_a_stream() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM)
    assert drain(dec) == SAMPLES
    assert dec.buffered == 0
    assert dec.next_frame() is None


# --- incremental decoding ----------------------------------------------------


def test_decoder_split_at_every_point_yields_identical_frames() -> None:
    for cut in range(len(STREAM) + 1):
        dec = FrameDecoder()
        dec.feed(STREAM[:cut])
        frames = drain(dec)
        dec.feed(STREAM[cut:])
        frames += drain(dec)
        assert frames == SAMPLES, f"split at {cut}"
        assert dec.buffered == 0


def test_decoder_fed_one_byte_at_a_time() -> None:
    dec = FrameDecoder()
    frames = []
    for i in range(len(STREAM)):
        dec.feed(STREAM[i : i + 1])
        frames += drain(dec)
    assert frames == SAMPLES


def test_decoder_random_splits() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        cuts = sorted(rng.sample(range(len(STREAM)), rng.randint(1, 30)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        dec = FrameDecoder()
        frames = []
        for piece in pieces:
            dec.feed(memoryview(piece))
            frames += drain(dec)
        assert frames == SAMPLES


def blob(n: int) -> m.Data:
    """A Data header for ``n`` payload bytes (only data frames carry any)."""
    return m.Data(sid=SID, seq=0, offset=0, raw=n, len=n)


def test_decoder_waits_for_the_whole_payload() -> None:
    msg, payload = blob(5), b"12345"
    frame = encode_frame(msg, payload)
    dec = FrameDecoder()
    dec.feed(frame[:-1])
    assert dec.next_frame() is None
    dec.feed(frame[-1:])
    assert dec.next_frame() == (msg, payload)


# --- limits --------------------------------------------------------------------


def test_header_over_limit_is_refused_from_the_length_prefix_alone() -> None:
    dec = FrameDecoder(max_header=100)
    dec.feed(struct.pack(">I", 101))  # nothing of the header itself has arrived
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    assert dec.buffered == 0


def test_header_at_limit_is_accepted() -> None:
    header = msgspec.json.encode(m.Hello(version=1, agent="x" * 50))
    dec = FrameDecoder(max_header=len(header))
    dec.feed(raw_frame(header))
    assert dec.next_frame() == (m.Hello(version=1, agent="x" * 50), b"")


def test_payload_over_limit_is_refused_before_the_payload_arrives() -> None:
    dec = FrameDecoder(max_payload=1000)
    dec.feed(encode_header(m.Data(sid=SID, seq=0, offset=0, raw=1001, len=1001)))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    assert dec.buffered == 0


def test_payload_at_limit_is_accepted() -> None:
    msg = blob(1000)
    dec = FrameDecoder(max_payload=1000)
    dec.feed(encode_frame(msg, b"p" * 1000))
    assert dec.next_frame() == (msg, b"p" * 1000)


def test_default_limits_refuse_a_huge_len() -> None:
    with pytest.raises(FrameTooLarge):
        parse_header(b'{"t":"relay","cid":"c","kind":"d","len":18446744073709551616}')
    with pytest.raises(FrameTooLarge):
        decode_frame(encode_header(blob(16 * 1024 * 1024 + 1)))


def test_decode_frame_applies_its_limits() -> None:
    frame = encode_frame(blob(10), b"0123456789")
    with pytest.raises(FrameTooLarge):
        decode_frame(frame, max_payload=9)
    with pytest.raises(FrameTooLarge):
        decode_frame(frame, max_header=len(encode_header(blob(10))) - 5)


PAYLOAD_TYPES = (m.Data, m.Relay, m.PutFiles, m.GetFiles, m.MsgSend, m.MsgDeliver, m.ProbeData)


@pytest.mark.parametrize(
    "msg",
    [msg for msg, _ in SAMPLES if not isinstance(msg, PAYLOAD_TYPES)],
    ids=lambda x: type(x).__name__,
)
def test_a_payload_on_a_frame_type_without_data_is_refused(msg: m.Message) -> None:
    # Only data, relay and batch frames carry bytes: a 16 MiB Ping would otherwise
    # be buffered by every queue on its way like a data frame.
    fields = {k: v for k, v in msgspec.to_builtins(msg).items() if k != "t"}
    with_payload = type(msg)(**{**fields, "len": 3})
    with pytest.raises(RemoteProtocolError, match="carry no payload"):
        decode_frame(encode_frame(with_payload, b"abc"))
    dec = FrameDecoder()
    dec.feed(encode_header(with_payload))  # refused before the payload arrives
    with pytest.raises(RemoteProtocolError, match="carry no payload"):
        dec.next_frame()


def test_zero_length_header_is_refused() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


# --- malformed headers ------------------------------------------------------------

MALFORMED = {
    "not json": b"hello",
    "truncated json": b'{"t":"hello","version":1',
    "invalid utf-8": b'{"t":"hello","agent":"\xff\xfe","version":1}',
    "array": b'["hello", 1]',
    "bare number": b"42",
    "null": b"null",
    "no t": b'{"version":1}',
    "unknown t": b'{"t":"teleport","version":1}',
    "t not a string": b'{"t":1,"version":1}',
    "missing field": b'{"t":"hello"}',
    "string for int": b'{"t":"hello","version":"1"}',
    "float for int": b'{"t":"hello","version":1.5}',
    "bool for int": b'{"t":"hello","version":true}',
    "int for string": b'{"t":"welcome","version":1,"node":7}',
    "int for bool": b'{"t":"end_ack","sid":"a","total":1,"verified":1}',
    "negative len": b'{"t":"hello","version":1,"len":-1}',
    "negative version": b'{"t":"hello","version":-1}',
    "negative offset": b'{"t":"keepalive","sid":"a","offset":-5}',
    "negative size": b'{"t":"start","sid":"a","name":"f","size":-1}',
    "negative expires": b'{"t":"ticket","rid":"r","ticket":"","secret":"","expires_in":-1.0}',
    "sid with space": b'{"t":"keepalive","sid":"a b","offset":0}',
    "sid with slash": b'{"t":"keepalive","sid":"../etc","offset":0}',
    "empty sid": b'{"t":"keepalive","sid":"","offset":0}',
    "sid too long": b'{"t":"keepalive","sid":"' + b"a" * 65 + b'","offset":0}',
    "sid not ascii": b'{"t":"keepalive","sid":"\xc3\xa9","offset":0}',
    "empty name": b'{"t":"pull","sid":"a","name":""}',
    "unknown level": b'{"t":"start_ack","sid":"a","level":"ultra","rate":0,"checkpoint":0}',
    "unknown codec": b'{"t":"data","sid":"a","seq":0,"offset":0,"raw":1,"codec":3}',
    "hex upper case": b'{"t":"end","sid":"a","total":0,"digest":"ABCD"}',
    "text too long": b'{"t":"hello","version":1,"agent":"' + b"x" * 4097 + b'"}',
    "float out of range": b'{"t":"start","sid":"a","name":"f","size":0,"mtime":1e999}',
}


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_header_is_a_remote_protocol_error(header: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_header(header)
    with pytest.raises(RemoteProtocolError):
        decode_frame(raw_frame(header))
    dec = FrameDecoder()
    dec.feed(raw_frame(header))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_decoder_keeps_raising_after_an_error() -> None:
    dec = FrameDecoder()
    good = encode_frame(m.Hello(version=1))
    dec.feed(good + raw_frame(b"garbage") + good)
    assert dec.next_frame() == (m.Hello(version=1), b"")
    with pytest.raises(RemoteProtocolError) as first:
        dec.next_frame()
    # The rest of the stream cannot be trusted, even a good frame after it.
    with pytest.raises(RemoteProtocolError) as again:
        dec.next_frame()
    assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        dec.feed(good)
    with pytest.raises(RemoteProtocolError):
        list(dec)


def test_decoder_keeps_raising_after_a_limit_error() -> None:
    dec = FrameDecoder(max_header=10)
    dec.feed(b"\x00\x00\x00\x0b")
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    with pytest.raises(FrameTooLarge):
        dec.feed(encode_frame(m.Hello(version=1)))


# --- decode_frame holds exactly one frame --------------------------------------


def test_decode_frame_with_trailing_bytes_fails() -> None:
    frame = encode_frame(m.Hello(version=1))
    with pytest.raises(RemoteProtocolError):
        decode_frame(frame + b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode_frame(frame + frame)


def test_decode_frame_with_missing_bytes_fails() -> None:
    frame = encode_frame(blob(4), b"abcd")
    for cut in range(len(frame)):
        with pytest.raises(RemoteProtocolError):
            decode_frame(frame[:cut])


# --- several frames in one WebSocket message ------------------------------------------------


def test_decode_frames_yields_every_frame_of_a_message_in_order() -> None:
    got = decode_frames(STREAM)
    assert got == [(msg, bytes(payload)) for msg, payload in SAMPLES]
    assert decode_frames(encode_frame(*SAMPLES[0])) == [(SAMPLES[0][0], bytes(SAMPLES[0][1]))]


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9])
def test_decode_frames_refuses_a_message_ending_inside_a_frame(cut: int) -> None:
    two = encode_frame(blob(10), b"0123456789") * 2
    with pytest.raises(RemoteProtocolError, match="ends inside a frame"):
        decode_frames(two[:-cut])


def test_decode_frames_refuses_an_empty_message() -> None:
    with pytest.raises(RemoteProtocolError, match="empty message"):
        decode_frames(b"")


def test_decode_frames_applies_the_limits_to_every_frame() -> None:
    message = encode_frame(blob(1), b"x") + encode_frame(blob(10), b"0123456789")
    assert len(decode_frames(message, max_payload=10)) == 2
    with pytest.raises(FrameTooLarge):
        decode_frames(message, max_payload=9)
    with pytest.raises(FrameTooLarge):
        decode_frames(message, max_header=len(encode_header(blob(10))) - 5)
    with pytest.raises(RemoteProtocolError, match="empty frame header"):
        decode_frames(message + b"\0\0\0\0")
