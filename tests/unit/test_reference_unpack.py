"""Unpacking a sealed reference (client/links.py): hostile records inside a
stream that authenticates are refused, nothing lands outside the folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.client.options import QuietReporter
from freight.client.receiving import Destination, receive_entries
from freight.client.references import _LEN, MAX_RECORD, _UnpackConn
from freight.client.relay import Connection
from freight.client.sendrecv import TransferRefused
from freight.errors import IntegrityError
from freight.protocol import sendrecv as wire
from freight.protocol.refseal import RefOpener, seal_all

KEY = bytes(range(32))


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), 4096):
        yield data[at : at + 4096]


def packed(*records: bytes, tail: bytes = b"") -> bytes:
    return seal_all(KEY, b"".join(_LEN.pack(len(r)) + r for r in records) + tail)


def manifest(*paths: str) -> bytes:
    entries = [wire.WireEntry(path=p, type="file", mode=0o644, size=3, mtime=0.0) for p in paths]
    return wire.encode(wire.Manifest(entries=entries))


def unpack(sealed: bytes, dest: Path) -> _UnpackConn:
    conn = _UnpackConn(pieces(sealed).__aiter__(), RefOpener(KEY))

    async def go() -> None:
        await receive_entries(cast(Connection, conn), Destination.folder(dest), QuietReporter())
        await conn.drain()

    asyncio.run(go())
    return conn


@pytest.mark.parametrize("path", ["../evil", "/etc/evil", "a/../../evil", "a\x00b", "a\\..\\b"])
def test_names_that_would_leave_the_folder_are_refused(tmp_path: Path, path: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(TransferRefused, match="list of files is refused"):
        unpack(packed(manifest(path), b"Z"), dest)
    assert not (tmp_path / "evil").exists()
    assert not Path("/etc/evil").exists()


def test_a_record_longer_than_any_sender_writes_is_refused(tmp_path: Path) -> None:
    sealed = seal_all(KEY, _LEN.pack(MAX_RECORD + 1) + b"x" * 100)
    with pytest.raises(IntegrityError, match="a record of"):
        unpack(sealed, tmp_path / "dest")


def test_a_stream_ending_inside_a_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="ends inside a record"):
        unpack(packed(tail=_LEN.pack(10) + b"abc"), tmp_path / "dest")


def test_bytes_after_the_last_record_are_refused(tmp_path: Path) -> None:
    sealed = packed(wire.encode(wire.Manifest(entries=[])), b"Z", tail=b"\x00\x00")
    with pytest.raises(IntegrityError, match="after the last record"):
        unpack(sealed, tmp_path / "dest")


def test_an_empty_reference_unpacks_to_nothing(tmp_path: Path) -> None:
    conn = unpack(packed(wire.encode(wire.Manifest(entries=[])), b"Z"), tmp_path / "dest")
    assert conn.verdict is not None and conn.verdict.ok
    assert list((tmp_path / "dest").iterdir()) == []


async def _split(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for cut in sorted(set(cuts)):
        yield data[at:cut]
        at = cut
    yield data[at:]


@given(
    st.lists(st.binary(max_size=3000), max_size=12),
    st.lists(st.integers(0, 40_000), max_size=20),
    st.integers(1024, 4096),
)
@settings(max_examples=200, deadline=None)
def test_records_come_out_whole_however_the_stream_is_cut(
    records: list[bytes], cuts: list[int], chunk: int
) -> None:
    """Records span the opener's chunks and the socket's pieces anywhere;
    each comes out whole and in order, then the end, with every byte hashed."""
    plain = b"".join(_LEN.pack(len(r)) + r for r in records)
    sealed = seal_all(KEY, plain, chunk)
    conn = _UnpackConn(_split(sealed, [c % (len(sealed) + 1) for c in cuts]), RefOpener(KEY))

    async def read_all() -> list[bytes]:
        got = []
        while records[len(got) :]:
            got.append(await conn.recv())
        await conn.drain()
        return got

    assert asyncio.run(read_all()) == records
    assert (conn.bytes, conn.plain.hexdigest()) == (len(plain), blake3.blake3(plain).hexdigest())
    assert conn.sealed == len(sealed)
