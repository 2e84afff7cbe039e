"""The sealed reference format: round trips in pieces of any size, and
every alteration, reordering, truncation or extension refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.protocol import IntegrityError, LocalProtocolError
from freight.protocol.refseal import (
    HEADER_BYTES,
    MIN_CHUNK,
    TAG_BYTES,
    RefOpener,
    RefSealer,
    open_all,
    seal_all,
    sealed_size,
)

KEY = bytes(range(32))
CHUNK = MIN_CHUNK
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def chunks_of(sealed: bytes, chunk: int = CHUNK) -> tuple[bytes, list[bytes]]:
    """The header and the sealed chunks of a reference."""
    head, body = sealed[:HEADER_BYTES], sealed[HEADER_BYTES:]
    step = chunk + TAG_BYTES
    return head, [body[i : i + step] for i in range(0, len(body), step)]


def opened_in_pieces(key: bytes, sealed: bytes, cuts: list[int]) -> bytes:
    opener = RefOpener(key)
    out: list[bytes] = []
    at = 0
    for cut in [*sorted(c % (len(sealed) + 1) for c in cuts), len(sealed)]:
        out += opener.feed(sealed[at:cut])
        at = max(at, cut)
    out.append(opener.finish())
    return b"".join(out)


@FUZZ
@given(
    plain=st.binary(max_size=5 * CHUNK + 3),
    feeds=st.lists(st.integers(0, 6 * CHUNK), max_size=8),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
)
def test_round_trip_in_pieces_of_any_size(plain: bytes, feeds: list[int], cuts: list[int]) -> None:
    sealer = RefSealer(KEY, CHUNK)
    parts: list[bytes] = []
    at = 0
    for cut in sorted(f % (len(plain) + 1) for f in feeds):
        parts += sealer.feed(plain[at:cut])
        at = max(at, cut)
    parts += sealer.feed(plain[at:])
    parts += sealer.finish()
    sealed = b"".join(parts)
    assert len(sealed) == sealed_size(len(plain), CHUNK)
    assert opened_in_pieces(KEY, sealed, cuts) == plain


def test_a_stream_of_whole_chunks_ends_with_a_full_last_chunk() -> None:
    plain = os.urandom(3 * CHUNK)
    sealed = seal_all(KEY, plain, CHUNK)
    _, chunks = chunks_of(sealed)
    assert len(chunks) == 3
    assert open_all(KEY, sealed) == plain


@FUZZ
@given(
    plain=st.binary(min_size=1, max_size=4 * CHUNK),
    where=st.integers(0, 10**9),
    flip=st.integers(1, 255),
)
def test_any_altered_byte_fails(plain: bytes, where: int, flip: int) -> None:
    sealed = bytearray(seal_all(KEY, plain, CHUNK))
    sealed[where % len(sealed)] ^= flip
    with pytest.raises(IntegrityError):
        open_all(KEY, bytes(sealed))


@FUZZ
@given(plain=st.binary(max_size=4 * CHUNK), cut=st.integers(0, 10**9))
def test_any_truncation_fails(plain: bytes, cut: int) -> None:
    sealed = seal_all(KEY, plain, CHUNK)
    with pytest.raises(IntegrityError):
        open_all(KEY, sealed[: cut % len(sealed)])


@FUZZ
@given(plain=st.binary(min_size=CHUNK + 1, max_size=5 * CHUNK), data=st.data())
def test_reordered_dropped_or_repeated_chunks_fail(plain: bytes, data: st.DataObject) -> None:
    head, chunks = chunks_of(seal_all(KEY, plain, CHUNK))
    changed = data.draw(
        st.lists(st.sampled_from(range(len(chunks))), min_size=1, max_size=len(chunks) + 2).filter(
            lambda order: order != list(range(len(chunks)))
        )
    )
    with pytest.raises(IntegrityError):
        open_all(KEY, head + b"".join(chunks[i] for i in changed))


@FUZZ
@given(plain=st.binary(max_size=3 * CHUNK), extra=st.binary(min_size=1, max_size=CHUNK + 40))
def test_bytes_after_the_end_fail(plain: bytes, extra: bytes) -> None:
    sealed = seal_all(KEY, plain, CHUNK)
    with pytest.raises(IntegrityError):
        open_all(KEY, sealed + extra)


def test_whole_last_chunk_dropped_at_a_boundary_fails() -> None:
    plain = os.urandom(3 * CHUNK + 5)
    head, chunks = chunks_of(seal_all(KEY, plain, CHUNK))
    with pytest.raises(IntegrityError, match="does not authenticate"):
        open_all(KEY, head + b"".join(chunks[:-1]))


def test_a_wrong_key_fails() -> None:
    sealed = seal_all(KEY, b"secret data", CHUNK)
    with pytest.raises(IntegrityError):
        open_all(bytes(32), sealed)


@FUZZ
@given(garbage=st.binary(max_size=3 * CHUNK))
def test_garbage_fails_with_integrity_error(garbage: bytes) -> None:
    with pytest.raises(IntegrityError):
        open_all(KEY, garbage)


def test_hostile_chunk_sizes_in_the_header_are_refused() -> None:
    sealed = bytearray(seal_all(KEY, b"x", CHUNK))
    sealed[HEADER_BYTES - 4 : HEADER_BYTES] = (1 << 31).to_bytes(4, "big")
    with pytest.raises(IntegrityError, match="impossible chunk size"):
        open_all(KEY, bytes(sealed))


def test_keys_must_have_32_bytes_and_streams_end_once() -> None:
    with pytest.raises(LocalProtocolError):
        RefSealer(b"short")
    sealer = RefSealer(KEY, CHUNK)
    sealer.finish()
    with pytest.raises(LocalProtocolError):
        sealer.feed(b"more")
