"""The sealed format of a by-reference transfer: a byte stream encrypted
with a fresh 32-byte key that travels only inside the end-to-end sealed
job proposal, so the hub that stores the ciphertext cannot read it.

Layout (docs/protocol.md §17.3)::

    header   "FRREF1\\n\\0" (8 bytes) + chunk size (4 bytes, big-endian)
    chunk 0  AES-256-GCM(plaintext[0:C])      + 16-byte tag
    chunk 1  AES-256-GCM(plaintext[C:2C])     + 16-byte tag
    ...
    last     AES-256-GCM(plaintext[kC:])      + 16-byte tag   (1..C bytes)

Every chunk but the last holds exactly ``C`` plaintext bytes; the last
holds what remains, 1 to ``C`` bytes (0 only for an empty stream), and is
always there, so the end is always marked. The nonce of chunk ``n`` is
``n`` as 12 big-endian bytes; the associated data is the header and one
byte, 1 for the last chunk and 0 for the others. Altered, reordered,
dropped, repeated or appended chunks, a stream cut anywhere (on a chunk
boundary too) and a wrong key all fail with :class:`IntegrityError`.

Sans-I/O: :class:`RefSealer` turns plaintext into ciphertext pieces,
:class:`RefOpener` ciphertext into plaintext, fed in pieces of any size.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import IntegrityError, LocalProtocolError

MAGIC: Final = b"FRREF1\n\x00"
KEY_BYTES: Final = 32
TAG_BYTES: Final = 16
HEADER_BYTES: Final = len(MAGIC) + 4
DEFAULT_CHUNK: Final = 1 << 20
MIN_CHUNK: Final = 1 << 10
MAX_CHUNK: Final = 16 << 20

_SIZE: Final = struct.Struct(">I")
_MIDDLE: Final = b"\x00"
_LAST: Final = b"\x01"
Buffer = bytes | bytearray | memoryview


def header(chunk: int) -> bytes:
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise LocalProtocolError(f"chunk size must be {MIN_CHUNK} to {MAX_CHUNK} bytes")
    return MAGIC + _SIZE.pack(chunk)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


def _aead(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise LocalProtocolError(f"a reference key has {KEY_BYTES} bytes")
    return AESGCM(key)


def sealed_size(plain: int, chunk: int = DEFAULT_CHUNK) -> int:
    """The ciphertext length of ``plain`` plaintext bytes."""
    chunks = max(1, -(-plain // chunk))
    return HEADER_BYTES + plain + chunks * TAG_BYTES


class RefSealer:
    """Plaintext in, ciphertext out: :meth:`feed` as data comes,
    :meth:`finish` once (it seals the last chunk)."""

    def __init__(self, key: bytes, chunk: int = DEFAULT_CHUNK) -> None:
        self._aead = _aead(key)
        self.chunk = chunk
        self._header = header(chunk)
        self._pending = bytearray()
        self._counter = 0
        self._started = False
        self._finished = False

    def _seal(self, data: Buffer, last: bool) -> bytes:
        ad = self._header + (_LAST if last else _MIDDLE)
        out = self._aead.encrypt(_nonce(self._counter), data, ad)
        self._counter += 1
        return out

    def _start(self, out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            out.append(self._header)

    def feed(self, data: Buffer) -> list[bytes]:
        """Ciphertext of every chunk that ``data`` completes. A full chunk
        is sealed only once more data follows it (it may be the last)."""
        if self._finished:
            raise LocalProtocolError("the reference stream is finished")
        out: list[bytes] = []
        self._start(out)
        self._pending += data
        at = 0
        with memoryview(self._pending) as view:
            while len(view) - at > self.chunk:
                out.append(self._seal(view[at : at + self.chunk], last=False))
                at += self.chunk
        del self._pending[:at]
        return out

    def finish(self) -> list[bytes]:
        """The last chunk (what is pending, maybe nothing)."""
        if self._finished:
            raise LocalProtocolError("the reference stream is finished")
        out: list[bytes] = []
        self._start(out)
        self._finished = True
        out.append(self._seal(self._pending, last=True))
        self._pending = bytearray()
        return out


class RefOpener:
    """Ciphertext in, plaintext out. :meth:`feed` returns the plaintext of
    chunks known not to be the last; :meth:`finish` opens the last one and
    fails if the stream was cut."""

    def __init__(self, key: bytes) -> None:
        self._aead = _aead(key)
        self._buf = bytearray()
        self._header: bytes | None = None
        self.chunk = 0
        self._counter = 0
        self._finished = False

    def _open(self, data: Buffer, last: bool) -> bytes:
        assert self._header is not None
        ad = self._header + (_LAST if last else _MIDDLE)
        try:
            out = self._aead.decrypt(_nonce(self._counter), data, ad)
        except InvalidTag:
            raise IntegrityError(
                f"the reference's chunk {self._counter} does not authenticate: "
                "it was altered, reordered or cut, or the key is wrong"
            ) from None
        self._counter += 1
        return out

    def _read_header(self) -> bool:
        if self._header is not None:
            return True
        if len(self._buf) < HEADER_BYTES:
            return False
        head = bytes(self._buf[:HEADER_BYTES])
        if head[: len(MAGIC)] != MAGIC:
            raise IntegrityError("not a sealed reference: its first bytes are wrong")
        (chunk,) = _SIZE.unpack_from(head, len(MAGIC))
        if not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise IntegrityError(f"a sealed reference with an impossible chunk size {chunk}")
        self._header, self.chunk = head, chunk
        del self._buf[:HEADER_BYTES]
        return True

    def feed(self, data: Buffer) -> list[bytes]:
        if self._finished:
            raise IntegrityError("data after the end of the sealed reference")
        self._buf += data
        out: list[bytes] = []
        if not self._read_header():
            return out
        sealed = self.chunk + TAG_BYTES
        at = 0
        with memoryview(self._buf) as view:
            # A whole sealed chunk with more after it cannot be the last one.
            while len(view) - at > sealed:
                out.append(self._open(view[at : at + sealed], last=False))
                at += sealed
        del self._buf[:at]
        return out

    def finish(self) -> bytes:
        """The last chunk's plaintext; IntegrityError if the stream is cut."""
        if self._finished:
            raise LocalProtocolError("the reference stream is finished")
        self._finished = True
        if not self._read_header():
            raise IntegrityError("the sealed reference is cut short: no header")
        if len(self._buf) < TAG_BYTES:
            raise IntegrityError("the sealed reference is cut short")
        out = self._open(self._buf, last=True)
        self._buf = bytearray()
        return out


def seal_all(key: bytes, plain: bytes, chunk: int = DEFAULT_CHUNK) -> bytes:
    """One whole plaintext sealed (tests, small references)."""
    sealer = RefSealer(key, chunk)
    return b"".join(sealer.feed(plain) + sealer.finish())


def open_all(key: bytes, sealed: bytes) -> bytes:
    """One whole sealed reference opened; IntegrityError if anything is wrong."""
    opener = RefOpener(key)
    parts = opener.feed(sealed)
    parts.append(opener.finish())
    return b"".join(parts)
