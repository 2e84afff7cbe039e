"""AEAD sealing of frames on an out-of-band data connection.

A data connection is authorised by a one-time reception ticket (id + secret)
that the client obtained over the authenticated TLS control channel. Both ends
derive one AES-256-GCM key per direction from the secret with HKDF-SHA256
(salt = ticket id). A record is ``[4-byte length][ciphertext + 16-byte tag]``
where the ciphertext seals a whole frame (header and payload, so neither file
names nor offsets are visible), the nonce is the record counter of that
direction (never reused: new ticket → new keys), and the length prefix is the
associated data. Reordered, replayed, truncated or altered records fail to
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
from .limits import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES

MAGIC: Final = b"FRD1"  # first bytes of a data connection; TLS starts with 0x16
TICKET_ID_BYTES: Final = 16
TICKET_SECRET_BYTES: Final = 32
TAG_BYTES: Final = 16
PREAMBLE_BYTES: Final = len(MAGIC) + TICKET_ID_BYTES
MAX_RECORD_BYTES: Final = 4 + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES + TAG_BYTES
CLIENT_TO_HUB: Final = b"freight data v1 client->hub"
HUB_TO_CLIENT: Final = b"freight data v1 hub->client"

_LEN: Final = struct.Struct(">I")


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

    def seal(self, frame: bytes) -> bytes:
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        prefix = _LEN.pack(len(frame) + TAG_BYTES)
        return prefix + self._aead.encrypt(nonce, frame, prefix)


class Opener:
    """Opens incoming records of one direction, in order, exactly once each."""

    def __init__(self, key: bytes, *, max_record: int = MAX_RECORD_BYTES) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self.max_record = max_record

    def record_length(self, prefix: bytes) -> int:
        """Length of the sealed body announced by a 4-byte prefix."""
        n: int = _LEN.unpack(prefix)[0]
        if n < TAG_BYTES:
            raise RemoteProtocolError("sealed record shorter than its tag")
        if n > self.max_record:
            raise FrameTooLarge(f"sealed record of {n} bytes exceeds the limit")
        return n

    def open(self, prefix: bytes, body: bytes) -> bytes:
        nonce = self._counter.to_bytes(12, "big")
        try:
            frame = self._aead.decrypt(nonce, body, prefix)
        except InvalidTag:
            raise IntegrityError(
                "data connection record failed authentication (tampered, replayed or reordered)"
            ) from None
        self._counter += 1
        return frame
