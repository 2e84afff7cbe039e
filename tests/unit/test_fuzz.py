"""Property-based fuzzing of everything that parses bytes from the peer.

The rule everywhere: hostile input may only ever raise ``ProtocolError`` (or
the subclass named), never anything else, and never grow memory unboundedly.
"""

from __future__ import annotations

import json
import re
import struct
import zlib

import msgspec
import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_samples import ALL_MESSAGE_TYPES, SAMPLES, SID

from freight.protocol import (
    Compressor,
    FrameDecoder,
    IntegrityError,
    ProtocolError,
    RemoteProtocolError,
    State,
    StreamReceiver,
    decode_frame,
    decompress,
    encode_frame,
)
from freight.protocol import messages as m
from freight.protocol.frames import encode_json, parse_header
from freight.protocol.seal import (
    CLIENT_TO_HUB,
    KIND_HEADER,
    KIND_PAYLOAD,
    TAG_BYTES,
    Opener,
    SealedFrameDecoder,
    Sealer,
    derive_key,
    end_to_end_sealed,
)
from freight.protocol.stream import DataReceived

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_HEADER = 256
MAX_PAYLOAD = 1024
BOUND = 4 + MAX_HEADER + MAX_PAYLOAD

# --- frames ---------------------------------------------------------------------

sample_frames = st.sampled_from([encode_frame(msg, p) for msg, p in SAMPLES])
junk_headers = st.builds(lambda h: struct.pack(">I", len(h)) + h, st.binary(max_size=300))
big_payload = st.builds(
    lambda n: encode_frame(m.Data(sid="s", seq=0, offset=0, raw=n, len=n), b"p" * n),
    st.integers(0, 1500),
)
byte_soup = st.lists(
    st.one_of(sample_frames, junk_headers, big_payload, st.binary(max_size=50)), max_size=12
).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, stream: st.SearchStrategy[bytes]) -> list[bytes]:
    """A byte string split at arbitrary points."""
    data = draw(stream)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@FUZZ
@given(chunks=chunked(st.binary(max_size=3000) | byte_soup))
def test_decoder_only_raises_protocol_errors_and_stays_bounded(chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_header=MAX_HEADER, max_payload=MAX_PAYLOAD)
    try:
        for chunk in chunks:
            dec.feed(chunk)
            for msg, payload in dec:
                assert isinstance(msg, ALL_MESSAGE_TYPES)
                assert len(payload) == msg.len <= MAX_PAYLOAD
            assert dec.buffered <= BOUND
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as again:
            dec.feed(b"")
            dec.next_frame()
        assert again.value is exc
        assert dec.buffered == 0


@FUZZ
@given(chunks=chunked(st.lists(sample_frames, max_size=8).map(b"".join)))
def test_decoder_decodes_valid_frames_however_split(chunks: list[bytes]) -> None:
    dec = FrameDecoder()
    frames = []
    for chunk in chunks:
        dec.feed(chunk)
        frames += list(dec)
    assert b"".join(encode_frame(msg, p) for msg, p in frames) == b"".join(chunks)
    assert dec.buffered == 0


@FUZZ
@given(data=st.binary(max_size=2000) | byte_soup)
def test_decode_frame_only_raises_protocol_errors(data: bytes) -> None:
    try:
        msg, payload = decode_frame(data, max_header=MAX_HEADER, max_payload=MAX_PAYLOAD)
    except ProtocolError:
        return
    assert len(payload) == msg.len
    check_invariants(msg)


@FUZZ
@given(header=st.binary(max_size=500))
def test_parse_header_only_raises_remote_protocol_errors(header: bytes) -> None:
    try:
        msg = parse_header(header, max_payload=MAX_PAYLOAD)
    except RemoteProtocolError:
        return
    check_invariants(msg)


# --- structured fuzzing of headers --------------------------------------------------

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
TAGS = [t.__struct_config__.tag for t in ALL_MESSAGE_TYPES]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 3, 2**63, 2**64, MAX_PAYLOAD, MAX_PAYLOAD + 1])
    | st.floats()
    | st.text(max_size=70)
    | st.sampled_from(["", "a", "a b", "x" * 65, "none", "fast", "max", "ABCD", "ab", *TAGS])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def check_invariants(msg: m.Message) -> None:
    """What a decoded header guarantees to the code that uses it."""
    assert isinstance(msg, ALL_MESSAGE_TYPES)
    assert 0 <= msg.len <= MAX_PAYLOAD
    for name in msg.__struct_fields__:
        value = getattr(msg, name)
        if isinstance(value, int | float):
            assert value >= 0, name
            assert value == value and value != float("inf"), name  # finite
        if name in ("sid", "rid", "code"):
            # Empty means "not about a stream/request" where the type allows it.
            optional = (
                isinstance(msg, m.Error | m.Linked) and name in ("sid", "rid") and value == ""
            )
            assert optional or ID_RE.match(value), (name, value)
        if name in ("level", "want_level"):
            assert value in m.LEVELS
    if isinstance(msg, m.Data):
        assert msg.codec in (m.CODEC_NONE, m.CODEC_ZSTD, m.CODEC_ZLIB)
    # Whatever we accept, we can send on again unchanged.
    assert decode_frame(encode_frame(msg, bytes(msg.len))) == (msg, bytes(msg.len))


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    msg, _ = draw(st.sampled_from(SAMPLES))
    fields = msgspec.to_builtins(msg)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*fields, "t", "len", "sid", "extra"]))
        action = draw(st.sampled_from(["set", "set", "delete"]))
        if action == "delete":
            fields.pop(key, None)
        else:
            fields[key] = draw(json_values)
    return json.dumps(fields).encode()


@FUZZ
@given(header=mutated_headers())
def test_mutated_headers_are_refused_or_valid(header: bytes) -> None:
    try:
        msg = parse_header(header, max_payload=MAX_PAYLOAD)
    except RemoteProtocolError:
        return
    check_invariants(msg)


# --- decompression --------------------------------------------------------------------

ZSTD_HEADER_MAX = 18  # magic + descriptor + window + dict id + 8-byte content size


@st.composite
def codec_inputs(draw: st.DrawFn) -> tuple[int, bytes, int, bytes, bool]:
    raw = draw(
        st.binary(max_size=3000)
        | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 800))
    )
    codec = draw(st.integers(-1, 3))
    if codec == m.CODEC_ZSTD:
        cctx = zstandard.ZstdCompressor(write_content_size=draw(st.booleans()))
        wire = cctx.compress(raw)
    elif codec == m.CODEC_ZLIB:
        wire = zlib.compress(raw)
    else:
        wire = raw
    mutation = draw(st.sampled_from(["none", "none", "truncate", "flip", "append", "random"]))
    if mutation == "truncate":
        wire = wire[: draw(st.integers(0, len(wire)))]
    elif mutation == "flip" and len(wire) > ZSTD_HEADER_MAX:
        i = draw(st.integers(0, len(wire) - 1))
        wire = wire[:i] + bytes([wire[i] ^ draw(st.integers(1, 255))]) + wire[i + 1 :]
    elif mutation == "append":
        wire += draw(st.binary(min_size=1, max_size=20))
    elif mutation == "random":
        wire = draw(st.binary(max_size=3000))
    raw_len = draw(st.just(len(raw)) | st.integers(0, 2 * len(raw) + 10))
    return codec, wire, raw_len, raw, mutation == "none"


@FUZZ
@given(case=codec_inputs())
def test_decompress_only_raises_integrity_errors(case: tuple[int, bytes, int, bytes, bool]) -> None:
    codec, wire, raw_len, raw, intact = case
    try:
        out = decompress(codec, wire, raw_len)
    except IntegrityError:
        assert not (intact and raw_len == len(raw) and codec in (0, 1, 2))
        return
    assert len(out) == raw_len
    if intact and codec in (0, 1, 2):
        assert out == raw


# --- sealed records -------------------------------------------------------------------

KEY = derive_key(bytes(32), bytes(16), CLIENT_TO_HUB)
SEAL_BOUND = 4 + max(MAX_HEADER, MAX_PAYLOAD) + TAG_BYTES


def sealed(frames: list[tuple[m.Message, bytes]]) -> bytes:
    sealer = Sealer(KEY)
    return b"".join(
        b"".join(sealer.seal_frame(encode_json(msg), p, raw=end_to_end_sealed(msg)))
        for msg, p in frames
    )


# Relay payloads cross a data connection unsealed (they are sealed end to
# end; the far end detects tampering): the hop only vouches for the rest.
HOP_SEALED = [(msg, p) for msg, p in SAMPLES if not (end_to_end_sealed(msg) and p)]


def small_decoder() -> SealedFrameDecoder:
    return SealedFrameDecoder(
        Opener(KEY), max_header=MAX_HEADER, max_payload=MAX_PAYLOAD, initial=1024
    )


@FUZZ
@given(
    prefix=st.binary(min_size=4, max_size=4),
    body=st.binary(max_size=400),
    kind=st.sampled_from([KIND_HEADER, KIND_PAYLOAD]),
)
def test_opener_refuses_random_records(prefix: bytes, body: bytes, kind: bytes) -> None:
    with pytest.raises(IntegrityError):
        Opener(KEY).open(prefix, body, kind)


@FUZZ
@given(chunks=chunked(st.binary(max_size=3000)))
def test_sealed_decoder_only_raises_protocol_errors(chunks: list[bytes]) -> None:
    decoder = small_decoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while decoder.next_frame() is not None:
                raise AssertionError("random bytes opened as a sealed frame")
            assert decoder.buffered <= SEAL_BOUND
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decoder.next_frame()


@FUZZ
@given(
    frames=st.lists(st.sampled_from(HOP_SEALED), max_size=6),
    pos=st.integers(0, 10**6),
    xor=st.integers(1, 255),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
)
def test_tampered_sealed_stream_never_yields_a_wrong_frame(
    frames: list[tuple[m.Message, bytes]], pos: int, xor: int, cuts: list[int]
) -> None:
    data = bytearray(sealed(frames))
    if data:
        data[pos % len(data)] ^= xor
    decoder = small_decoder()
    got: list[tuple[m.Message, bytes]] = []
    points = sorted(c % (len(data) + 1) for c in cuts)
    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            decoder.feed(bytes(data[a:b]))
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
            assert decoder.buffered <= SEAL_BOUND
    except ProtocolError:
        pass
    # Whatever got through is exactly what was sent, and the damage never does.
    assert got == frames[: len(got)]
    assert len(got) < len(frames) or not frames


@FUZZ
@given(frames=st.lists(st.sampled_from(SAMPLES), max_size=8), data=st.data())
def test_sealed_stream_decodes_however_split(
    frames: list[tuple[m.Message, bytes]], data: st.DataObject
) -> None:
    stream = sealed(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = SealedFrameDecoder(Opener(KEY), initial=64)
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[a:b])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == frames


# --- the receiving stream machine --------------------------------------------------------

CHUNK = 512
SOURCE = b"".join(b"%05d " % i for i in range(2000))  # 12000 bytes, compressible
sids = st.sampled_from([SID, SID, SID, "other"])
small = st.integers(0, 4 * CHUNK)


def data_with_payload(
    sid: str, seq: int, offset: int, raw: int, codec: int, honest: bool, junk: bytes
) -> tuple[m.Message, bytes]:
    """A Data frame: honest (real bytes of SOURCE, real checksum) or junk."""
    if honest:
        chunk = SOURCE[offset : offset + raw]
        codec, payload = Compressor("fast" if codec else "none").compress(chunk)
        xxh = xxhash.xxh3_64_intdigest(chunk)
        return m.Data(
            sid=sid, seq=seq, offset=offset, raw=len(chunk), codec=codec, xxh=xxh, len=len(payload)
        ), payload
    return m.Data(sid=sid, seq=seq, offset=offset, raw=raw, codec=codec, len=len(junk)), junk


random_messages = st.one_of(
    st.builds(lambda s, n: (m.StartStream(sid=s, name="f", size=n), b""), sids, small),
    st.builds(
        lambda s, lvl, r, c: (m.StartStreamAck(sid=s, level=lvl, rate=r, checkpoint=c), b""),
        sids,
        st.sampled_from(m.LEVELS),
        small,
        small,
    ),
    st.builds(
        data_with_payload,
        sids,
        st.integers(0, 20),
        small,
        st.integers(0, CHUNK),
        st.integers(0, 2),
        st.booleans(),
        st.binary(max_size=CHUNK),
    ),
    st.builds(lambda s, o: (m.KeepAlive(sid=s, offset=o), b""), sids, small),
    st.builds(
        lambda s, c: (m.KeepAliveAck(sid=s, checkpoint=c, rate=0, level="none"), b""), sids, small
    ),
    st.builds(lambda s, n: (m.EndStream(sid=s, total=n, digest="ab"), b""), sids, small),
    st.builds(lambda s, n: (m.EndStreamAck(sid=s, total=n, verified=True), b""), sids, small),
    st.builds(lambda s: (m.Abort(sid=s, code="x"), b""), sids),
    st.just((m.Hello(version=1), b"")),
)


def honest_step(rx: StreamReceiver, size: int, seq: int, draw: st.DrawFn) -> object:
    """What a well-behaved sender and application would do next."""
    if rx.state is State.IDLE:
        return rx.receive(m.StartStream(sid=SID, name="f", size=size))
    if rx.state is State.STARTING:
        return rx.accept(
            checkpoint=draw(st.integers(0, size)), prefix_digest="", level="fast", rate=0
        )
    if rx.state is State.STREAMING and rx.received < size:
        n = draw(st.integers(1, min(CHUNK, size - rx.received)))
        if rx.received + n - rx.checkpoint > rx.max_unacked:
            return rx.durable(rx.received, rate=0, level="fast")
        msg, payload = data_with_payload(
            SID, seq, rx.received, n, draw(st.integers(0, 1)), True, b""
        )
        return rx.receive(msg, payload)
    if rx.state is State.STREAMING:
        return rx.receive(m.EndStream(sid=SID, total=size, digest="ab"))
    return rx.complete(verified=True, digest="ab")


@FUZZ
@given(data=st.data(), size=st.integers(0, len(SOURCE)))
def test_receiver_only_raises_protocol_errors_and_then_stays_broken(
    data: st.DataObject, size: int
) -> None:
    rx = StreamReceiver(SID, checkpoint_interval=CHUNK)
    seq = 0  # the seq an honest sender would use next
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        honest = data.draw(st.integers(0, 9), label="honest?") < 7
        try:
            if honest:
                ev = honest_step(rx, size, seq, data.draw)
            else:
                msg, payload = data.draw(random_messages, label="message")
                ev = rx.receive(msg, payload)
                if isinstance(ev, DataReceived):
                    seq = msg.seq  # an honest-looking frame got through; follow on from it
        except ProtocolError:
            assert rx.state is State.ERROR
            with pytest.raises(ProtocolError):
                rx.receive(m.KeepAlive(sid=SID, offset=rx.checkpoint))
            assert rx.state is State.ERROR
            return
        assert rx.state is not State.ERROR
        assert 0 <= rx.checkpoint <= rx.received <= rx.size
        if isinstance(ev, DataReceived):
            assert ev.data == SOURCE[ev.offset : ev.offset + len(ev.data)]
            assert rx.received == ev.offset + len(ev.data)
            seq += 1
        if rx.state in (State.DONE, State.ABORTED):
            return
