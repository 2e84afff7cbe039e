"""Per-frame compression: levels, fallback to raw, corrupt input, bombs."""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib

import pytest
import zstandard

from freight.protocol import Compressor, IntegrityError, LocalProtocolError, decompress
from freight.protocol.messages import CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, LEVELS

TEXT = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))
NOISE = random.Random(7).randbytes(300 * 1024)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def test_level_none_never_compresses() -> None:
    assert Compressor("none").compress(TEXT) == (CODEC_NONE, TEXT)


@pytest.mark.parametrize("level", ["fast", "max"])
def test_compressing_levels_use_zstd(level: str) -> None:
    codec, wire = Compressor(level).compress(TEXT)
    assert codec == CODEC_ZSTD
    assert len(wire) < len(TEXT) // 4
    assert decompress(codec, wire, len(TEXT)) == TEXT


def test_unknown_level_is_refused() -> None:
    assert set(LEVELS) == {"none", "fast", "max"}
    with pytest.raises(LocalProtocolError):
        Compressor("ultra")


def test_compressor_is_reusable_across_frames() -> None:
    comp = Compressor("fast")
    for i in range(5):
        chunk = TEXT[i * 1000 : (i + 1) * 1000 + 5000]
        codec, wire = comp.compress(chunk)
        assert decompress(codec, wire, len(chunk)) == chunk


@pytest.mark.parametrize("level", ["fast", "max"])
@pytest.mark.parametrize("size", [1, 100, 64 * 1024, 300 * 1024], ids=lambda n: f"{n}B")
def test_incompressible_data_goes_raw(level: str, size: int) -> None:
    raw = NOISE[:size]
    assert Compressor(level).compress(raw) == (CODEC_NONE, raw)


def test_empty_frame_goes_raw() -> None:
    assert Compressor("max").compress(b"") == (CODEC_NONE, b"")
    assert decompress(CODEC_NONE, b"", 0) == b""


def test_zlib_frames_are_accepted() -> None:
    assert decompress(CODEC_ZLIB, zlib.compress(TEXT, 6), len(TEXT)) == TEXT
    assert decompress(CODEC_ZLIB, zlib.compress(b"", 6), 0) == b""


def test_zstd_frames_without_content_size_are_accepted() -> None:
    wire = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    assert decompress(CODEC_ZSTD, wire, len(TEXT)) == TEXT


# --- corrupt input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "wire"),
    [
        (CODEC_ZSTD, b"definitely not zstd"),
        (CODEC_ZSTD, zstandard.ZstdCompressor().compress(TEXT)[:-10]),
        (CODEC_ZSTD, ZSTD_MAGIC),
        (CODEC_ZSTD, b""),
        (CODEC_ZLIB, b"definitely not zlib"),
        (CODEC_ZLIB, zlib.compress(TEXT)[:-10]),
        (CODEC_ZLIB, b""),
    ],
    ids=[
        *("zstd-garbage", "zstd-truncated", "zstd-magic-only", "zstd-empty"),
        *("zlib-garbage", "zlib-truncated", "zlib-empty"),
    ],
)
def test_corrupt_input_is_an_integrity_error(codec: int, wire: bytes) -> None:
    with pytest.raises(IntegrityError):
        decompress(codec, wire, len(TEXT))


@pytest.mark.parametrize("codec", [-1, 3, 255])
def test_unknown_codec_is_an_integrity_error(codec: int) -> None:
    with pytest.raises(IntegrityError):
        decompress(codec, b"abc", 3)


# --- the declared raw length is enforced -----------------------------------------


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD, CODEC_ZLIB])
@pytest.mark.parametrize("delta", [-1, +1])
def test_declared_raw_length_must_match(codec: int, delta: int) -> None:
    wire = {
        CODEC_NONE: TEXT,
        CODEC_ZSTD: zstandard.ZstdCompressor().compress(TEXT),
        CODEC_ZLIB: zlib.compress(TEXT),
    }[codec]
    with pytest.raises(IntegrityError):
        decompress(codec, wire, len(TEXT) + delta)


def peak_allocation(fn: object, *args: object) -> int:
    """Peak bytes allocated by Python while ``fn(*args)`` runs (it must raise)."""
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            fn(*args)  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zstd_bomb_is_refused_without_inflating_it() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(10 * 1024 * 1024))
    assert len(bomb) < 2000
    assert peak_allocation(decompress, CODEC_ZSTD, bomb, 1000) < 1024 * 1024


def test_zstd_bomb_without_content_size_is_capped() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(10 * 1024 * 1024))
    assert peak_allocation(decompress, CODEC_ZSTD, bomb, 1000) < 1024 * 1024


def test_forged_zstd_content_size_is_an_integrity_error() -> None:
    # Frame header: single segment, 8-byte content size = 2**62; then one empty last raw block.
    forged = ZSTD_MAGIC + bytes([0xE0]) + struct.pack("<Q", 2**62) + b"\x01\x00\x00"
    assert zstandard.frame_content_size(forged) == 2**62
    with pytest.raises(IntegrityError):
        decompress(CODEC_ZSTD, forged, 1000)


def test_zlib_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(bytes(10 * 1024 * 1024), 9)
    assert peak_allocation(decompress, CODEC_ZLIB, bomb, 1000) < 1024 * 1024


def test_zlib_bomb_declared_empty_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(bytes(10 * 1024 * 1024), 9)
    assert peak_allocation(decompress, CODEC_ZLIB, bomb, 0) < 1024 * 1024
