"""The batch frame of small files, fed bytes: round trips, every limit, and
random payloads that may only fail with a typed protocol error."""

from __future__ import annotations

import blake3
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.protocol import messages as m
from freight.protocol.batch import (
    BatchEntry,
    check_digest,
    decode_batch,
    decode_request,
    encode_batch,
    encode_request,
    fits,
)
from freight.protocol.errors import IntegrityError, RemoteProtocolError
from freight.protocol.frames import decode_frame, encode_frame
from freight.protocol.limits import MAX_BATCH_BYTES, MAX_BATCH_FILES, SMALL_FILE_BYTES


def entry(name: str, data: bytes, mtime: float = 1.0) -> BatchEntry:
    return BatchEntry(
        name=name, size=len(data), mtime=mtime, digest=blake3.blake3(data).hexdigest()
    )


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20))
def test_a_batch_round_trips_through_a_frame(blobs: list[bytes]) -> None:
    entries = [entry(f"d/f{i}", b) for i, b in enumerate(blobs)]
    msg, payload = encode_batch("b-1", entries, blobs)
    got, got_payload = decode_frame(encode_frame(msg, payload))
    assert isinstance(got, m.PutFiles)
    files = decode_batch(got, got_payload)
    assert [e for e, _ in files] == entries
    assert [bytes(v) for _, v in files] == blobs
    for e, v in files:
        check_digest(e, blake3.blake3(v).hexdigest())


@given(st.integers(min_value=0, max_value=200), st.binary(max_size=400))
def test_random_payloads_fail_only_with_a_protocol_error(manifest: int, payload: bytes) -> None:
    msg = m.PutFiles(sid="b", manifest=max(2, manifest), len=len(payload))
    try:
        files = decode_batch(msg, payload)
    except RemoteProtocolError:
        return
    # What decodes accounts for every byte of the payload.
    assert msg.manifest + sum(len(v) for _, v in files) == len(payload)
    assert all(len(v) == e.size for e, v in files)


def test_limits_are_checked_before_any_byte_is_used() -> None:
    ok = entry("a", b"hello")
    msg, payload = encode_batch("b", [ok], [b"hello"])
    with pytest.raises(RemoteProtocolError, match="5 bytes in a payload of 6"):
        decode_batch(msg, payload + b"!")
    with pytest.raises(RemoteProtocolError, match="same file twice"):
        decode_batch(*encode_batch("b", [ok, ok], [b"hello", b"hello"]))
    # A size beyond the small-file limit never decodes.
    raw = b'[{"name":"a","size":%d,"mtime":0,"digest":"%s"}]' % (SMALL_FILE_BYTES + 1, b"0" * 64)
    with pytest.raises(RemoteProtocolError, match="bad manifest"):
        decode_batch(m.PutFiles(sid="b", manifest=len(raw), len=len(raw)), raw)
    with pytest.raises(IntegrityError, match="different digest"):
        check_digest(ok, blake3.blake3(b"HELLO").hexdigest())


def test_what_fits_a_batch() -> None:
    assert fits(0, 0, SMALL_FILE_BYTES)
    assert not fits(MAX_BATCH_FILES, 0, 0)
    assert not fits(1, MAX_BATCH_BYTES - 10, 11)
    with pytest.raises(ValueError):
        encode_batch("b", [entry("a", b"x")], [b"xy"])


@given(st.binary(max_size=300))
def test_random_requests_fail_only_with_a_protocol_error(payload: bytes) -> None:
    try:
        names = decode_request(payload)
    except RemoteProtocolError:
        return
    # What decodes is what was sent, and a request the hub can serve.
    assert names == msgspec.json.decode(payload)
    assert names, "an empty request decoded"
    assert len(set(names)) == len(names), "a name twice decoded"
    assert len(names) <= MAX_BATCH_FILES


def test_a_request_round_trips_and_is_bounded() -> None:
    msg, payload = encode_request("b", ["a", "d/b"])
    got, got_payload = decode_frame(encode_frame(msg, payload))
    assert isinstance(got, m.GetFiles)
    assert decode_request(got_payload) == ["a", "d/b"]
    with pytest.raises(RemoteProtocolError, match="same file twice"):
        decode_request(b'["a","a"]')
    with pytest.raises(RemoteProtocolError, match="bad batch request"):
        decode_request(b"[]")
    with pytest.raises(RemoteProtocolError, match="not JSON"):
        decode_request(b"[nope")
