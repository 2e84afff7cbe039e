"""AEAD sealing of frames on an out-of-band data connection.

A data connection is authorised by a one-time reception ticket (id + secret)
that the client obtained over the authenticated TLS control channel. Both ends
derive one AES-256-GCM key per direction from the secret with HKDF-SHA256
(salt = ticket id). A frame travels as one *header record* and, when its
payload is not empty, one *payload record*; each record is
``[4-byte length][ciphertext + 16-byte tag]``. The nonce is the record
counter of that direction (new ticket → new keys, so a nonce never repeats),
and the associated data is the length prefix plus the record kind (``H`` or
``P``). Sealing header and payload separately lets both ends encrypt and
decrypt straight from and into their I/O buffers, with no copy to glue a
frame together. Reordered, replayed, truncated or altered records fail to
open; see docs/protocol.md "Data connections" for the full argument.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import FrameTooLarge, IntegrityError, LocalProtocolError, RemoteProtocolError
from .frames import parse_header
from .limits import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES
from .messages import AnyMessage, Message, Relay


def end_to_end_sealed(msg: Message) -> bool:
    """Whether ``msg``'s payload is already sealed end to end, so that a data
    connection seals only its header: sealing relayed data and
    acknowledgement records again per hop would cost four more AES-GCM passes
    per relayed byte and protect nothing more (the far end authenticates
    every byte; docs/protocol.md 12.1). Handshake records are not sealed end
    to end (identity keys, SPAKE2 messages): they are sealed per hop like
    any other payload."""
    return isinstance(msg, Relay) and msg.kind != "h"


MAGIC: Final = b"FRD2"  # first bytes of a data connection; TLS starts with 0x16
TICKET_ID_BYTES: Final = 16
TICKET_SECRET_BYTES: Final = 32
TAG_BYTES: Final = 16
PREAMBLE_BYTES: Final = len(MAGIC) + TICKET_ID_BYTES
CLIENT_TO_HUB: Final = b"freight data v2 client->hub"
HUB_TO_CLIENT: Final = b"freight data v2 hub->client"
KIND_HEADER: Final = b"H"
KIND_PAYLOAD: Final = b"P"

_LEN: Final = struct.Struct(">I")
Buffer = bytes | bytearray | memoryview


def derive_key(secret: bytes, ticket_id: bytes, direction: bytes) -> bytes:
    if len(secret) != TICKET_SECRET_BYTES or len(ticket_id) != TICKET_ID_BYTES:
        raise LocalProtocolError("ticket id or secret has the wrong length")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ticket_id, info=direction).derive(secret)


def preamble(ticket_id: bytes) -> bytes:
    """What the dialling side writes first on a data connection."""
    return MAGIC + ticket_id


def parse_preamble(data: bytes) -> bytes:
    """The ticket id from a data-connection preamble."""
    if len(data) != PREAMBLE_BYTES or not data.startswith(MAGIC):
        raise RemoteProtocolError("not a Freight data connection")
    return data[len(MAGIC) :]


class Sealer:
    """Seals outgoing frames of one direction."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0

    def _record(self, data: Buffer, kind: bytes) -> tuple[bytes, bytes]:
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        prefix = _LEN.pack(len(data) + TAG_BYTES)
        return prefix, self._aead.encrypt(nonce, data, prefix + kind)

    def seal_frame(
        self, header: bytes, payload: Buffer = b"", *, raw: bool = False
    ) -> list[Buffer]:
        """Records for one frame: ``header`` is the JSON header (no length
        prefix), ``payload`` the bytes it announces. Write them in order.
        ``raw`` (for :func:`end_to_end_sealed` frames only) sends the payload as it is,
        right after the header record that announces its length."""
        out: list[Buffer] = list(self._record(header, KIND_HEADER))
        if payload:
            if raw:
                out.append(payload)
            else:
                out.extend(self._record(payload, KIND_PAYLOAD))
        return out


class Opener:
    """Opens incoming records of one direction, in order, exactly once each."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0

    def open(self, prefix: Buffer, body: Buffer, kind: bytes) -> bytes:
        nonce = self._counter.to_bytes(12, "big")
        try:
            plain = self._aead.decrypt(nonce, body, bytes(prefix) + kind)
        except InvalidTag:
            raise IntegrityError(
                "data connection record failed authentication (tampered, replayed or reordered)"
            ) from None
        self._counter += 1
        return plain


class SealedFrameDecoder:
    """Incremental decoder of sealed records into frames, bounded like
    :class:`~.frames.FrameDecoder`. It owns its receive buffer so an I/O
    layer can read straight into it (``get_buffer``/``buffer_updated``, the
    shape of asyncio's BufferedProtocol); ``feed`` copies bytes in for tests.
    After a protocol error it stays broken and raises the same error again.
    """

    def __init__(
        self,
        opener: Opener,
        *,
        max_header: int = MAX_HEADER_BYTES,
        max_payload: int = MAX_PAYLOAD_BYTES,
        initial: int = 2 * 1024 * 1024 + 64 * 1024,
    ) -> None:
        self._opener = opener
        self.max_header = max_header
        self.max_payload = max_payload
        self._buf = bytearray(initial)
        self._start = 0
        self._end = 0
        self._need = 4  # bytes of the next record not yet in the buffer
        self._pending: AnyMessage | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return self._end - self._start

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable free space at the end of the buffer, large enough for the
        rest of the record being received."""
        if self._error is not None:
            raise self._error
        want = max(self._need, 64 * 1024)
        if len(self._buf) - self._end < want:
            avail = self._end - self._start
            if self._start > 0 and len(self._buf) - avail >= want:
                # Same-size slice assignment: allowed even while an old view
                # of the buffer is still referenced somewhere.
                self._buf[0:avail] = self._buf[self._start : self._end]
            else:
                new = bytearray(avail + want)
                new[0:avail] = self._buf[self._start : self._end]
                self._buf = new
            self._start, self._end = 0, avail
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes

    def feed(self, data: Buffer) -> None:
        view = memoryview(data)
        while view:
            target = self.get_buffer(len(view))
            n = min(len(target), len(view))
            target[:n] = view[:n]
            target.release()
            self.buffer_updated(n)
            view = view[n:]

    def next_frame(self) -> tuple[AnyMessage, bytes] | None:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            self._start = self._end = 0
            raise

    def _next(self) -> tuple[AnyMessage, bytes] | None:
        while True:
            avail = self._end - self._start
            pending = self._pending
            if pending is not None and end_to_end_sealed(pending):
                size = pending.len
                if avail < size:
                    self._need = size - avail
                    return None
                raw = bytes(self._buf[self._start : self._start + size])
                self._start += size
                self._need = 4
                self._pending = None
                return pending, raw
            if avail < 4:
                self._need = 4 - avail
                return None
            kind = KIND_HEADER if self._pending is None else KIND_PAYLOAD
            prefix = bytes(self._buf[self._start : self._start + 4])
            n = _LEN.unpack(prefix)[0]
            if n < TAG_BYTES:
                raise RemoteProtocolError("sealed record shorter than its tag")
            if self._pending is None:
                if n - TAG_BYTES > self.max_header:
                    raise FrameTooLarge(
                        f"sealed header of {n} bytes exceeds the limit of {self.max_header}"
                    )
            elif n - TAG_BYTES != self._pending.len:
                raise RemoteProtocolError("payload record length differs from its header")
            if avail < 4 + n:
                self._need = 4 + n - avail
                return None
            with memoryview(self._buf) as whole:
                body = whole[self._start + 4 : self._start + 4 + n]
                try:
                    plain = self._opener.open(prefix, body, kind)
                finally:
                    body.release()
            self._start += 4 + n
            self._need = 4
            if self._pending is None:
                msg = parse_header(plain, max_payload=self.max_payload)
                if msg.len == 0:
                    return msg, b""
                self._pending = msg
                continue
            msg, self._pending = self._pending, None
            return msg, plain
