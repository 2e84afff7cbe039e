"""The messages of ``freight send`` / ``receive`` and of the agents' file
manager's copies (docs/protocol.md §12.5), typed and checked on decoding.

Each message is one relayed record whose first byte names its kind:

* ``M`` sender → receiver: :class:`Manifest` (JSON).
* ``W`` receiver → sender: :class:`Holdings` (JSON), one pair per entry.
* ``F`` sender → receiver: ``index (u32) ‖ offset (u64) ‖ bytes``.
* ``E`` sender → receiver: :class:`FileEnd` (JSON).
* ``B`` sender → receiver: ``count (u32)`` then per file ``index (u32) ‖
  length (u32) ‖ held (u8) ‖ BLAKE3 (32 bytes) ‖ bytes``.
* ``X`` sender → receiver: ``raw (u32) ‖ codec (u8) ‖ packed``, an ``F`` or
  ``B`` message compressed (:func:`unpack` undoes it, bounded by ``raw``).
* ``Z`` sender → receiver: no body.
* ``K`` receiver → sender: :class:`Verdict` (JSON).

A peer is whoever holds the code or an admin's login; anything it sends
that does not fit these types raises :class:`MalformedTransfer`, never a
``KeyError``, ``TypeError`` or ``struct.error``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from . import codec as _codec
from .errors import ProtocolError, RemoteProtocolError
from .limits import MAX_TEXT_CHARS
from .messages import CODEC_NONE, LEVELS

MAX_PATH_CHARS: Final = 4096  # PATH_MAX on Linux
MAX_ENTRIES: Final = 1_000_000
# Modification times within ±2^34 s of 1970 (years 1425 to 2514): every
# filesystem's range and os.utime's, so a hostile value cannot overflow.
MAX_MTIME: Final = float(1 << 34)

U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
Size = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Mode = Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
Mtime = Annotated[float, msgspec.Meta(ge=-MAX_MTIME, le=MAX_MTIME)]
RelPath = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
OptDigest = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
# A compression level, or "" where an end has no say (and an older peer,
# which never sends the field).
Level = Literal["", "none", "fast", "max"]
# What one ``X`` message may unpack to: a relayed record's largest message.
MAX_PACKED_RAW: Final = 8 * 1024 * 1024


class MalformedTransfer(RemoteProtocolError):
    """The other end sent a send/receive message that does not fit the protocol."""

    code = "malformed_transfer"


class WireEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One file or folder: a relative POSIX path (checked by the receiver
    against its destination), the sender's mode bits (the receiver keeps
    only 0o777 of them), size (0 for folders) and modification time."""

    path: RelPath
    type: Literal["file", "dir"]
    mode: Mode
    size: Size = 0
    mtime: Mtime = 0.0


class Manifest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The list of entries, and the compression level the sender would
    like (``want``; the receiver chooses, as for streams)."""

    entries: Annotated[list[WireEntry], msgspec.Meta(max_length=MAX_ENTRIES)]
    want: Level = ""


class Holdings(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Per entry of the manifest: (bytes the receiver holds, BLAKE3 of
    them); (0, "") for folders and for files it holds nothing of. ``level``
    is the compression the receiver chose ("": none, an older receiver that
    cannot unpack ``X``); ``rate`` the most bytes per second of file data it
    takes (0: no limit)."""

    have: Annotated[list[tuple[Size, OptDigest]], msgspec.Meta(max_length=MAX_ENTRIES)]
    level: Level = ""
    rate: Size = 0


class FileEnd(msgspec.Struct, frozen=True, kw_only=True):
    index: U32
    digest: Digest


class Verdict(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ok: bool
    error: Text = ""
    files: Size = 0
    bytes: Size = 0


T = TypeVar("T", Manifest, Holdings, FileEnd, Verdict)

_ENCODER: Final = msgspec.json.Encoder()
_DECODERS: Final[dict[bytes, msgspec.json.Decoder[Any]]] = {
    b"M": msgspec.json.Decoder(Manifest),
    b"W": msgspec.json.Decoder(Holdings),
    b"E": msgspec.json.Decoder(FileEnd),
    b"K": msgspec.json.Decoder(Verdict),
}
_KINDS: Final[dict[type, bytes]] = {Manifest: b"M", Holdings: b"W", FileEnd: b"E", Verdict: b"K"}


def encode(msg: Manifest | Holdings | FileEnd | Verdict) -> bytes:
    return _KINDS[type(msg)] + _ENCODER.encode(msg)


def decode(data: bytes, kind: type[T]) -> T:
    """The message of type ``kind`` in ``data`` (kind byte included)."""
    tag = _KINDS[kind]
    if data[:1] != tag:
        raise MalformedTransfer(f"expected message {tag.decode()!r}, got {bytes(data[:1])!r}")
    try:
        msg = _DECODERS[tag].decode(data[1:])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedTransfer(f"malformed {tag.decode()!r} message: {exc}") from None
    assert isinstance(msg, kind)
    return msg


# --- binary messages --------------------------------------------------------------

_CHUNK_HEAD: Final = struct.Struct(">IQ")
_COUNT: Final = struct.Struct(">I")
_SMALL_HEAD: Final = struct.Struct(">IIB32s")
CHUNK_OVERHEAD: Final = 1 + _CHUNK_HEAD.size


def encode_chunk_head(index: int, offset: int) -> bytes:
    """``F`` and its header; the bytes follow."""
    return b"F" + _CHUNK_HEAD.pack(index, offset)


def decode_chunk(data: bytes) -> tuple[int, int, memoryview]:
    """(index, offset, bytes) of an ``F`` message; the bytes are a view into
    ``data``, not a copy of them."""
    if data[:1] != b"F" or len(data) < CHUNK_OVERHEAD:
        raise MalformedTransfer("malformed 'F' message")
    index, offset = _CHUNK_HEAD.unpack_from(data, 1)
    return index, offset, memoryview(data)[CHUNK_OVERHEAD:]


@dataclass(frozen=True, slots=True)
class SmallFile:
    """One file of a ``B`` message: all its bytes (none when ``held``)."""

    index: int
    held: bool
    digest: bytes
    body: bytes


def encode_batch_head(count: int) -> bytes:
    return b"B" + _COUNT.pack(count)


def encode_small_head(index: int, length: int, held: bool, digest: bytes) -> bytes:
    return _SMALL_HEAD.pack(index, length, held, digest)


def decode_batch(data: bytes) -> list[SmallFile]:
    """The files of a ``B`` message, exactly as long as it says."""
    if data[:1] != b"B" or len(data) < 1 + _COUNT.size:
        raise MalformedTransfer("malformed batch of files")
    (count,) = _COUNT.unpack_from(data, 1)
    pos = 1 + _COUNT.size
    # Each file takes at least its header: a count larger than the message
    # could hold is refused before anything is allocated for it.
    if count > (len(data) - pos) // _SMALL_HEAD.size:
        raise MalformedTransfer("malformed batch of files")
    files: list[SmallFile] = []
    for _ in range(count):
        if pos + _SMALL_HEAD.size > len(data):
            raise MalformedTransfer("malformed batch of files")
        index, length, held, digest = _SMALL_HEAD.unpack_from(data, pos)
        pos += _SMALL_HEAD.size
        if held > 1 or (held and length) or pos + length > len(data):
            raise MalformedTransfer("malformed batch of files")
        files.append(SmallFile(index, bool(held), digest, data[pos : pos + length]))
        pos += length
    if pos != len(data):
        raise MalformedTransfer("malformed batch of files")
    return files


# --- compressed messages --------------------------------------------------------------

_PACK_HEAD: Final = struct.Struct(">IB")
PACK_OVERHEAD: Final = 1 + _PACK_HEAD.size


def choose_level(want: str, own: str) -> str:
    """The receiver's choice: its own setting if it has one, else what the
    sender would like, else none."""
    for level in (own, want):
        if level in LEVELS:
            return level
    return "none"


def pack(message: bytes, compressor: _codec.Compressor) -> bytes:
    """``message`` (an ``F`` or ``B``) as an ``X`` when compression makes it
    smaller, else unchanged (incompressible data goes as it is)."""
    if len(message) > MAX_PACKED_RAW:
        return message
    codec, packed = compressor.compress(message)
    if codec == CODEC_NONE or len(packed) + PACK_OVERHEAD >= len(message):
        return message
    return b"X" + _PACK_HEAD.pack(len(message), codec) + packed


def unpack(data: bytes) -> bytes:
    """The ``F`` or ``B`` message inside an ``X``. Never produces more than
    the declared ``raw`` bytes (at most :data:`MAX_PACKED_RAW`), so a
    hostile frame cannot expand without bound."""
    if data[:1] != b"X" or len(data) < PACK_OVERHEAD:
        raise MalformedTransfer("malformed 'X' message")
    raw, codec = _PACK_HEAD.unpack_from(data, 1)
    if not 0 < raw <= MAX_PACKED_RAW or codec == CODEC_NONE:
        raise MalformedTransfer("malformed 'X' message")
    try:
        inner = _codec.decompress(codec, data[PACK_OVERHEAD:], raw)
    except ProtocolError as exc:
        raise MalformedTransfer(f"malformed 'X' message: {exc.message}") from None
    if inner[:1] not in (b"F", b"B"):
        raise MalformedTransfer("an 'X' message must hold an 'F' or 'B' message")
    return inner
