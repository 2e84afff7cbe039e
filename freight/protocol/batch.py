"""Batches of small files (docs/protocol.md 6.13), sans-I/O.

A push of many small files does not open one stream per file: the sender
packs up to :data:`MAX_BATCH_FILES` files of at most
:data:`SMALL_FILE_BYTES` each (at most :data:`MAX_BATCH_BYTES` in all) into
one :class:`~.messages.PutFiles` frame on a stream id of its own. The
payload is the *manifest* (``manifest`` bytes of JSON: a list of
:class:`BatchEntry`, each file's name, size, mtime and BLAKE3) followed by
the files' bytes in manifest order. The receiver stores all of them or
none and answers :class:`~.messages.PutFilesAck` once every file is
durable and digest-checked, or :class:`~.messages.Abort`; a sender that
heard neither sends the same batch again (storing it twice gives the same
files). A pull asks for a batch with :class:`~.messages.GetFiles` (its
payload the JSON list of names) and gets one PutFiles back.

:func:`encode_batch` and :func:`decode_batch` are the two halves; the
decoder takes nothing on trust: counts, sizes, the sum of sizes against the
payload, names (unique, no control characters; the hub checks them against
its own rules too) and digests are checked before any byte is stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Final

import msgspec

from .errors import IntegrityError, RemoteProtocolError
from .limits import (
    MAX_BATCH_BYTES,
    MAX_BATCH_FILES,
    MAX_MANIFEST_BYTES,
    MAX_NAME_CHARS,
    SMALL_FILE_BYTES,
)
from .messages import GetFiles, PutFiles

Digest = Annotated[str, msgspec.Meta(min_length=64, max_length=64, pattern=r"^[0-9a-f]+$")]


class BatchEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of a batch: its stored name, size, mtime and BLAKE3."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
    size: Annotated[int, msgspec.Meta(ge=0, le=SMALL_FILE_BYTES)]
    mtime: Annotated[float, msgspec.Meta(ge=0)]
    digest: Digest


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(
    Annotated[list[BatchEntry], msgspec.Meta(min_length=1, max_length=MAX_BATCH_FILES)]
)
_NAMES: Final = msgspec.json.Decoder(
    Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]],
        msgspec.Meta(min_length=1, max_length=MAX_BATCH_FILES),
    ]
)


def encode_request(sid: str, names: Sequence[str]) -> tuple[GetFiles, bytes]:
    """The frame asking for the files ``names`` as one batch."""
    if not names or len(names) > MAX_BATCH_FILES:
        raise ValueError("a batch request names 1 to MAX_BATCH_FILES files")
    payload = _ENCODER.encode(list(names))
    return GetFiles(sid=sid, len=len(payload)), payload


def decode_request(payload: bytes | memoryview) -> list[str]:
    """The names a GetFiles asks for: 1 to MAX_BATCH_FILES, none twice."""
    if len(payload) > MAX_MANIFEST_BYTES:
        raise RemoteProtocolError("a batch request over its size limit")
    try:
        names = _NAMES.decode(payload)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"a bad batch request: {exc}") from None
    except msgspec.DecodeError:
        raise RemoteProtocolError("a batch request that is not JSON") from None
    if len(set(names)) != len(names):
        raise RemoteProtocolError("a batch request naming the same file twice")
    return names


def fits(count: int, size: int, more: int) -> bool:
    """Whether a file of ``more`` bytes still fits a batch holding
    ``count`` files of ``size`` bytes."""
    return count < MAX_BATCH_FILES and size + more <= MAX_BATCH_BYTES


def encode_batch(
    sid: str, entries: Sequence[BatchEntry], blobs: Sequence[bytes]
) -> tuple[PutFiles, bytes]:
    """The frame carrying ``entries`` and their bytes ``blobs``."""
    if not entries or len(entries) != len(blobs):
        raise ValueError("a batch needs one blob per entry, and at least one")
    if len(entries) > MAX_BATCH_FILES or sum(len(b) for b in blobs) > MAX_BATCH_BYTES:
        raise ValueError("a batch over its limits")
    for e, b in zip(entries, blobs, strict=True):
        if e.size != len(b):
            raise ValueError(f"{e.name}: size {e.size} but {len(b)} bytes")
    manifest = _ENCODER.encode(list(entries))
    payload = b"".join([manifest, *blobs])
    return PutFiles(sid=sid, manifest=len(manifest), len=len(payload)), payload


def decode_batch(msg: PutFiles, payload: bytes | memoryview) -> list[tuple[BatchEntry, memoryview]]:
    """The files of a batch, each with a view of its bytes; every limit is
    checked first (:class:`RemoteProtocolError`), and digests are not:
    :func:`check_digest` per file, where the bytes are hashed anyway."""
    view = memoryview(payload)
    if msg.manifest > len(view) or msg.manifest > MAX_MANIFEST_BYTES:
        raise RemoteProtocolError("a batch whose manifest overruns its payload")
    try:
        entries = _DECODER.decode(view[: msg.manifest])
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"a batch with a bad manifest: {exc}") from None
    except msgspec.DecodeError:
        raise RemoteProtocolError("a batch whose manifest is not JSON") from None
    total = sum(e.size for e in entries)
    if total > MAX_BATCH_BYTES or msg.manifest + total != len(view):
        raise RemoteProtocolError(
            f"a batch whose files hold {total} bytes in a payload of {len(view) - msg.manifest}"
        )
    names = {e.name for e in entries}
    if len(names) != len(entries):
        raise RemoteProtocolError("a batch naming the same file twice")
    if any(not math.isfinite(e.mtime) for e in entries):
        raise RemoteProtocolError("a batch with a time that is not a number")
    out: list[tuple[BatchEntry, memoryview]] = []
    at = msg.manifest
    for e in entries:
        out.append((e, view[at : at + e.size]))
        at += e.size
    return out


def check_digest(entry: BatchEntry, actual: str) -> None:
    """``actual`` is the BLAKE3 of the bytes received for ``entry``."""
    if actual != entry.digest:
        raise IntegrityError(f"{entry.name} arrived with a different digest; push it again")
