"""The local messaging socket's frames: bytes in, typed messages out, for any
split of the stream; malformed and oversized input raises typed protocol
errors only."""

from __future__ import annotations

import itertools
import json
import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol.errors import (
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from freight.protocol.msglocal import (
    MAX_LOCAL_HEADER,
    MAX_MESSAGE_BODY,
    PAYLOAD_TYPES,
    SPOOLED,
    AnyLocal,
    LAppInfo,
    LApps,
    LAppsList,
    LDeliver,
    LDone,
    LError,
    LHello,
    LocalDecoder,
    LRegister,
    LRegistered,
    LRequest,
    LResult,
    LSend,
    LTaken,
    LUnregister,
    LWelcome,
    encode_local,
    parse_local,
)

HID = "0123456789abcdef0123456789abcdef"
HID2 = "fedcba9876543210fedcba9876543210"
MID = "00112233445566778899aabbccddeeff"
TICKET = HID + ".1f"

SAMPLES: list[tuple[AnyLocal, bytes]] = [
    (LHello(version=1, client="test"), b""),
    (LWelcome(version=1, hid=HID, account="alice"), b""),
    (LRegister(rid="r1", app="sensors", interest=0xFFFF0000, peer="bob"), b""),
    (LRegistered(rid="r1", ticket=TICKET), b""),
    (LUnregister(rid="r2", ticket=TICKET), b""),
    (LDone(rid="r2"), b""),
    (
        LSend(
            rid="s1",
            dest="host:" + HID2,
            app="sensors",
            type=0x00120000,
            ticket=HID2 + ".2",
            from_ticket=TICKET,
            reply_to=MID,
            timeout=2.5,
            len=5,
        ),
        b"hello",
    ),
    (LSend(rid="s2", dest="bob", app="a", type=1, wait=False, len=2), b"hi"),
    (LResult(rid="s1", id=MID, count=2), b""),
    (LResult(rid="s2", id=MID, reason=SPOOLED), b""),
    (LResult(rid="s2", id=MID, reason="no_app", message="nobody"), b""),
    (LRequest(rid="q1", dest="bob", app="sensors", type=1, timeout=5, len=3), b"ask"),
    (
        LDeliver(
            ticket=TICKET,
            id=MID,
            frm=HID2,
            account="bob",
            app="sensors",
            type=0x00120000,
            from_ticket=HID2 + ".3",
            len=4,
        ),
        b"\x00\xffok",
    ),
    (LDeliver(rid="q1", id=MID, frm=HID2, account="bob", app="sensors", type=1), b""),
    (LTaken(ticket=TICKET, ids=[MID]), b""),
    (LApps(rid="a1"), b""),
    (
        LAppsList(
            rid="a1",
            apps=[LAppInfo(ticket=TICKET, app="sensors", interest=3, stats={"queued": 1})],
            counters={"sent": 4},
        ),
        b"",
    ),
    (LError(rid="r9", code="no_recipient", message="nobody there"), b""),
    (LError(code="remote_protocol_error", message="bad frame"), b""),
]
STREAM = b"".join(encode_local(msg, body) for msg, body in SAMPLES)


def raw_frame(header: bytes | str, payload: bytes = b"") -> bytes:
    """A frame built by hand, as wrong as a test likes."""
    if isinstance(header, str):
        header = header.encode()
    return struct.pack(">I", len(header)) + header + payload


def test_samples_cover_every_type() -> None:
    every = set(AnyLocal.__args__)  # type: ignore[attr-defined]
    assert {type(msg) for msg, _ in SAMPLES} == every


@pytest.mark.parametrize(("msg", "body"), SAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(msg: AnyLocal, body: bytes) -> None:
    frame = encode_local(msg, body)
    dec = LocalDecoder()
    dec.feed(frame)
    assert list(dec) == [(msg, body)]
    assert dec.buffered == 0
    header = frame[4 : 4 + struct.unpack(">I", frame[:4])[0]]
    assert json.loads(header)["t"] == msg.__struct_config__.tag


def test_stream_decodes_byte_by_byte() -> None:
    dec = LocalDecoder()
    out = []
    for i in range(len(STREAM)):
        dec.feed(STREAM[i : i + 1])
        out += list(dec)
    assert out == SAMPLES


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_stream_decodes_however_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    dec = LocalDecoder()
    out = []
    for a, b in itertools.pairwise(bounds):
        dec.feed(STREAM[a:b])
        out += list(dec)
    assert out == SAMPLES
    assert dec.buffered == 0


def test_encode_refuses_len_that_does_not_match_the_body() -> None:
    with pytest.raises(LocalProtocolError):
        encode_local(LSend(rid="s", dest="bob", app="a", type=1, len=2), b"abc")


def test_encode_refuses_a_body_over_the_limit() -> None:
    body = bytes(MAX_MESSAGE_BODY + 1)
    with pytest.raises(LocalProtocolError):
        encode_local(LSend(rid="s", dest="bob", app="a", type=1, len=len(body)), body)


def test_a_body_of_exactly_the_limit_passes() -> None:
    body = bytes(MAX_MESSAGE_BODY)
    msg = LSend(rid="s", dest="bob", app="a", type=1, len=len(body))
    dec = LocalDecoder()
    dec.feed(encode_local(msg, body))
    assert dec.next_frame() == (msg, body)


def test_a_send_waits_unless_it_says_not_to() -> None:
    """An application written before ``wait`` existed is answered as before."""
    for header, wait in ((b'{"t":"send","rid":"s","dest":"bob","app":"a","type":1}', True),
                         (b'{"t":"send","rid":"s","dest":"bob","app":"a","type":1,"wait":false}', False)):  # fmt: skip
        dec = LocalDecoder()
        dec.feed(len(header).to_bytes(4, "big") + header)
        msg, _ = dec.next_frame()
        assert isinstance(msg, LSend)
        assert msg.wait is wait


def test_oversized_header_is_refused_from_its_length_alone() -> None:
    dec = LocalDecoder()
    dec.feed(struct.pack(">I", MAX_LOCAL_HEADER + 1))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_oversized_body_is_refused_from_the_header() -> None:
    header = json.dumps(
        {"t": "send", "rid": "s", "dest": "bob", "app": "a", "type": 1, "len": MAX_MESSAGE_BODY + 1}
    )
    dec = LocalDecoder()
    dec.feed(raw_frame(header))  # no body follows: refused before waiting for it
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_a_broken_decoder_stays_broken() -> None:
    dec = LocalDecoder()
    dec.feed(raw_frame('{"t":"nonsense"}'))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()
    with pytest.raises(RemoteProtocolError):
        dec.feed(encode_local(LApps(rid="a")))
    assert dec.buffered == 0


@pytest.mark.parametrize(
    "header",
    [
        '{"t":"register","rid":"r","app":"a","interest":0}',  # interest 0 matches nothing
        '{"t":"send","rid":"r","dest":"bob","app":"a","type":0}',  # type 0 likewise
        '{"t":"send","rid":"r","dest":"bob","app":"a","type":4294967296}',
        '{"t":"send","rid":"r","dest":"bob","app":"a b","type":1}',
        '{"t":"send","rid":"r","dest":"bob","app":"a","type":1,"timeout":0}',
        '{"t":"register","rid":"","app":"a","interest":1}',
        '{"t":"taken","ticket":"' + TICKET + '","ids":[]}',
        '{"t":"taken","ticket":"x.1","ids":["' + MID + '"]}',
        '{"t":"apps","rid":"a","len":3}',  # no payload on an apps frame
        '{"t":"hello"}',
        "[]",
        "\xff",
    ],
)
def test_malformed_headers_are_remote_protocol_errors(header: str) -> None:
    dec = LocalDecoder()
    dec.feed(raw_frame(header.encode("utf-8", "surrogateescape"), b"abc"))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_wire_protocol_messages_are_not_local_ones() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_local(b'{"t":"msg_send","id":"' + MID.encode() + b'"}')


def test_payload_types_are_the_ones_with_bodies() -> None:
    assert set(PAYLOAD_TYPES) == {LSend, LRequest, LDeliver}


# --- fuzz: only typed protocol errors escape ---------------------------------

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TAGS = [t.__struct_config__.tag for t in AnyLocal.__args__]  # type: ignore[attr-defined]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
FIELDS = ["rid", "app", "interest", "peer", "dest", "type", "ticket", "ids", "len", "id"]
headers = st.builds(
    lambda tag, fields: json.dumps({"t": tag, **fields}).encode(),
    st.sampled_from(TAGS),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
)
frames = st.builds(
    lambda h, p: struct.pack(">I", len(h)) + h + p, headers | st.binary(max_size=80), st.binary()
)


@FUZZ
@given(stream=st.lists(frames | st.binary(max_size=50), max_size=6), cut=st.integers(1, 64))
def test_hostile_streams_raise_only_protocol_errors(stream: list[bytes], cut: int) -> None:
    data = b"".join(stream)
    dec = LocalDecoder(max_header=512, max_payload=256)
    try:
        for i in range(0, len(data), cut):
            dec.feed(data[i : i + cut])
            for msg, body in dec:
                assert len(body) == msg.len
                assert msg.len <= 256
                assert isinstance(msg, AnyLocal.__args__)  # type: ignore[attr-defined]
    except ProtocolError:
        return
    assert dec.buffered < 4 + 512 + 256 + cut


@FUZZ
@given(header=st.binary(max_size=300) | headers)
def test_parse_local_raises_only_remote_protocol_errors(header: bytes) -> None:
    try:
        msg = parse_local(header)
    except RemoteProtocolError:
        return
    # What decodes encodes back to an equal message.
    assert msgspec.json.decode(msgspec.json.encode(msg), type=AnyLocal) == msg


def test_an_error_crossing_the_socket_reads_as_it_was_raised() -> None:
    from freight.client.msglocal import _error
    from freight.errors import PeerAbsent, code_to_error

    for raised in (PeerAbsent("no answer within the timeout"), PeerAbsent("x", hint="do y")):
        sent = _error(raised)
        got = code_to_error(sent.code, sent.message, hint="")
        assert got.user_message() == raised.user_message()
        assert type(got) is PeerAbsent
