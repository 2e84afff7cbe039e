"""Per-frame compression: none / fast / max with zstd, zlib accepted.

The receiver chooses a level per stream; the sender compresses each frame at
that level and sends it raw whenever compression does not make it smaller
(already-compressed media costs one failed attempt per frame, nothing more).
"""

from __future__ import annotations

import zlib
from typing import Final

import zstandard

from .errors import IntegrityError, LocalProtocolError
from .messages import CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, LEVEL_FAST, LEVEL_MAX, LEVEL_NONE

# zstd levels behind the names. "max" is a strong level that still streams at
# tens of MB/s; zstd's 19+ would make a transfer crawl at a few MB/s.
ZSTD_LEVELS: Final = {LEVEL_FAST: 1, LEVEL_MAX: 12}

# If a sample of a frame does not shrink by at least this factor, the frame
# is sent raw without compressing the rest of it.
_PROBE_BYTES: Final = 64 * 1024
_PROBE_RATIO: Final = 0.97


class Compressor:
    """Compresses frames at one level; reusable across frames of a stream."""

    def __init__(self, level: str) -> None:
        if level not in (LEVEL_NONE, LEVEL_FAST, LEVEL_MAX):
            raise LocalProtocolError(f"unknown compression level {level!r}")
        self.level = level
        self._zstd = (
            zstandard.ZstdCompressor(level=ZSTD_LEVELS[level]) if level != LEVEL_NONE else None
        )

    def compress(self, raw: bytes) -> tuple[int, bytes]:
        """Return ``(codec, wire_bytes)``; raw when compression does not pay."""
        if self._zstd is None or not raw:
            return CODEC_NONE, raw
        if len(raw) > 2 * _PROBE_BYTES:
            probe = self._zstd.compress(raw[:_PROBE_BYTES])
            if len(probe) >= _PROBE_BYTES * _PROBE_RATIO:
                return CODEC_NONE, raw
        packed = self._zstd.compress(raw)
        if len(packed) >= len(raw):
            return CODEC_NONE, raw
        return CODEC_ZSTD, packed


_dctx: Final = zstandard.ZstdDecompressor()


def _zstd(wire: bytes, raw_len: int) -> bytes:
    # A frame header may declare its content size: refuse a lie before
    # allocating anything. Without one, stream and read at most raw_len + 1.
    try:
        declared = zstandard.frame_content_size(wire)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt zstd frame: {exc}") from None
    if declared >= 0 and declared != raw_len:
        raise IntegrityError(f"zstd frame declares {declared} bytes, header says {raw_len}")
    try:
        if declared == raw_len:
            return _dctx.decompress(wire, max_output_size=raw_len)
        with _dctx.stream_reader(wire, read_size=len(wire) or 1) as reader:
            return reader.read(raw_len + 1)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt zstd frame: {exc}") from None


def _zlib(wire: bytes, raw_len: int) -> bytes:
    d = zlib.decompressobj()
    try:
        # max_length=0 would mean "no limit": always ask for one byte more
        # than declared so an overlong frame shows without inflating it.
        out = d.decompress(wire, raw_len + 1)
    except zlib.error as exc:
        raise IntegrityError(f"corrupt zlib frame: {exc}") from None
    return out


def decompress(codec: int, wire: bytes, raw_len: int) -> bytes:
    """Undo ``codec``; output is capped at ``raw_len`` so a hostile frame
    cannot expand into unbounded memory."""
    if codec == CODEC_NONE:
        out = wire
    elif codec == CODEC_ZSTD:
        out = _zstd(wire, raw_len)
    elif codec == CODEC_ZLIB:
        out = _zlib(wire, raw_len)
    else:
        raise IntegrityError(f"unknown codec {codec}")
    if len(out) != raw_len:
        raise IntegrityError(f"frame decodes to {len(out)} or more bytes, header says {raw_len}")
    return out
