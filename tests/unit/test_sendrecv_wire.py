"""The send/receive messages (freight.protocol.sendrecv): what one end
encodes the other decodes; anything else (random bytes, wrong types,
out-of-range numbers) is MalformedTransfer and nothing else."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol import sendrecv as wire

KINDS = [wire.Manifest, wire.Holdings, wire.FileEnd, wire.Verdict]
DIGEST = "ab" * 32


def test_messages_round_trip() -> None:
    entry = wire.WireEntry(path="a/b é.txt", type="file", mode=0o4755, size=7, mtime=1.5)
    for msg in [
        wire.Manifest(entries=[entry, wire.WireEntry(path="a", type="dir", mode=0o755)]),
        wire.Holdings(have=[(0, ""), (7, DIGEST)]),
        wire.FileEnd(index=3, digest=DIGEST),
        wire.Verdict(ok=False, error="refusing"),
    ]:
        assert wire.decode(wire.encode(msg), type(msg)) == msg
    assert wire.decode_chunk(wire.encode_chunk_head(2, 1 << 40) + b"xyz") == (2, 1 << 40, b"xyz")
    batch = wire.encode_batch_head(2) + wire.encode_small_head(0, 3, False, b"d" * 32) + b"abc"
    batch += wire.encode_small_head(5, 0, True, b"e" * 32)
    assert wire.decode_batch(batch) == [
        wire.SmallFile(0, False, b"d" * 32, b"abc"),
        wire.SmallFile(5, True, b"e" * 32, b""),
    ]


def manifest(**entry: object) -> bytes:
    base: dict[str, object] = {"path": "a", "type": "file", "mode": 0o644, "size": 1, "mtime": 1}
    return b"M" + json.dumps({"entries": [{**base, **entry}]}).encode()


@pytest.mark.parametrize(
    "data",
    [
        manifest(type="link"),
        manifest(size=-1),
        manifest(size="12"),
        manifest(mode=0o10000),
        manifest(mtime=1e300),
        manifest(path=""),
        manifest(path="x" * 5000),
        b'M{"entries": {"a": 1}}',
        b"M{}",
        b"Mnot json",
        b'W{"have": [[1]]}',
        b'W{"have": [[-1, ""]]}',
        b'W{"have": [[1, "xyz"]]}',
        b'X{"entries": []}',
    ],
)
def test_hostile_manifests_and_answers_are_refused(data: bytes) -> None:
    kind = wire.Holdings if data[:1] == b"W" else wire.Manifest
    with pytest.raises(wire.MalformedTransfer):
        wire.decode(data, kind)


@settings(max_examples=400)
@given(kind=st.sampled_from(KINDS), body=st.binary(max_size=300))
def test_any_bytes_decode_or_are_malformed(kind: type, body: bytes) -> None:
    for data in (body, wire.encode(_sample(kind))[:1] + body):
        with contextlib.suppress(wire.MalformedTransfer):
            wire.decode(data, kind)


@settings(max_examples=400)
@given(body=st.binary(max_size=300))
def test_any_bytes_give_chunks_and_batches_or_malformed(body: bytes) -> None:
    for data in (b"F" + body, b"B" + body, body):
        try:
            index, offset, _ = wire.decode_chunk(data)
            assert 0 <= index < 1 << 32 and 0 <= offset < 1 << 64
        except wire.MalformedTransfer:
            pass
        try:
            files = wire.decode_batch(data)
        except wire.MalformedTransfer:
            continue
        assert sum(len(f.body) for f in files) <= len(data)
        assert all(not (f.held and f.body) for f in files)


# Generating nested JSON values is slow on a busy machine; the work is not.
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["path", "type", "mode", "size", "mtime", "extra"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=20),
            st.lists(st.integers(), max_size=3),
        ),
    )
)
def test_any_json_entry_decodes_valid_or_is_malformed(entry: dict[str, object]) -> None:
    data = b"M" + json.dumps({"entries": [entry]}).encode()
    try:
        got = wire.decode(data, wire.Manifest).entries[0]
    except wire.MalformedTransfer:
        return
    assert got.type in ("file", "dir") and 0 <= got.mode <= 0o7777 and got.size >= 0
    assert isinstance(got.path, str) and got.path


def _sample(kind: type) -> wire.Manifest | wire.Holdings | wire.FileEnd | wire.Verdict:
    samples = {
        wire.Manifest: wire.Manifest(entries=[]),
        wire.Holdings: wire.Holdings(have=[]),
        wire.FileEnd: wire.FileEnd(index=0, digest=DIGEST),
        wire.Verdict: wire.Verdict(ok=True),
    }
    return samples[kind]
