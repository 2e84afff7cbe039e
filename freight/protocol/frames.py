"""Frame codec: ``[4-byte big-endian header length][JSON header][payload]``.

The header is a typed :mod:`.messages` message whose ``len`` says how many
payload bytes follow. The decoder is incremental (feed it any split of the
byte stream) and bounded: it never buffers more than one frame's worth of
bytes, limited by ``max_header`` and ``max_payload``.

:class:`HeaderDecoder` is the same machine for any tagged union of framed
headers (the local messaging socket has its own, see :mod:`.msglocal`);
:class:`FrameDecoder` is it for the wire protocol's messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Final, Generic, Protocol, TypeVar

import msgspec

from .errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from .fastcheck import PLANS, PatternMismatch, check
from .limits import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES
from .messages import PAYLOAD_TYPES, AnyMessage, Message

_LEN: Final = struct.Struct(">I")
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AnyMessage)


def encode_json(msg: Message) -> bytes:
    """The JSON header of ``msg`` alone, without the length prefix."""
    return _encoder.encode(msg)


def encode_header(msg: Message) -> bytes:
    """The length prefix and JSON header of ``msg`` (payload not included)."""
    header = _encoder.encode(msg)
    return _LEN.pack(len(header)) + header


def encode_frame(msg: Message, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One whole frame as bytes."""
    if msg.len != len(payload):
        raise LocalProtocolError(
            f"{type(msg).__name__}.len={msg.len} but payload is {len(payload)}"
        )
    return encode_header(msg) + bytes(payload)


class Framed(Protocol):
    """A frame header: ``len`` payload bytes follow it."""

    @property
    def len(self) -> int: ...


M = TypeVar("M", bound=Framed)
# Decodes and validates one JSON header, given the payload limit.
HeaderParser = Callable[[bytes, int], M]


def header_parser(
    decoder: msgspec.json.Decoder[M], payload_types: tuple[type, ...], default_max: int
) -> Callable[..., M]:
    """A function that decodes and validates one JSON header of a tagged
    union: its payload within the limit, and a payload only on the header
    types in ``payload_types``. The wire protocol and the local messaging
    socket each make theirs with it."""

    def parse(header: bytes | memoryview, max_payload: int = default_max) -> M:
        try:
            msg = decoder.decode(header)
            if type(msg) in PLANS:  # the frames sent once per message: fastcheck
                check(msg)
        except (
            msgspec.DecodeError,
            msgspec.ValidationError,
            UnicodeDecodeError,
            PatternMismatch,
        ) as exc:
            raise RemoteProtocolError(f"malformed frame header: {exc}") from None
        if msg.len > max_payload:
            raise FrameTooLarge(f"payload of {msg.len} bytes exceeds the limit of {max_payload}")
        if msg.len and not isinstance(msg, payload_types):
            tag = msg.__struct_config__.tag  # type: ignore[attr-defined]
            raise RemoteProtocolError(f"{tag} frames carry no payload (len={msg.len})")
        return msg

    return parse


# Decode and validate one JSON header of the wire protocol.
parse_header: Final = header_parser(_decoder, PAYLOAD_TYPES, MAX_PAYLOAD_BYTES)


def decode_frame(
    data: bytes, *, max_header: int = MAX_HEADER_BYTES, max_payload: int = MAX_PAYLOAD_BYTES
) -> tuple[AnyMessage, bytes]:
    """Decode exactly one whole frame (as carried by one WebSocket message)."""
    dec = FrameDecoder(max_header=max_header, max_payload=max_payload)
    dec.feed(data)
    frame = dec.next_frame()
    if frame is None or dec.buffered:
        raise RemoteProtocolError("message does not hold exactly one frame")
    return frame


def decode_frames(
    data: bytes, *, max_header: int = MAX_HEADER_BYTES, max_payload: int = MAX_PAYLOAD_BYTES
) -> list[tuple[AnyMessage, bytes]]:
    """Decode the whole frames, one or more, that one WebSocket message
    carries back to back; a message ending inside a frame is malformed."""
    frames: list[tuple[AnyMessage, bytes]] = []
    view = memoryview(data)
    end = len(data)
    at = 0
    while at < end:
        if end - at < 4:
            raise RemoteProtocolError("message ends inside a frame")
        (hlen,) = _LEN.unpack_from(data, at)
        if hlen == 0:
            raise RemoteProtocolError("empty frame header")
        if hlen > max_header:
            raise FrameTooLarge(f"header of {hlen} bytes exceeds the limit of {max_header}")
        at += 4
        if end - at < hlen:
            raise RemoteProtocolError("message ends inside a frame")
        msg = parse_header(view[at : at + hlen], max_payload)
        at += hlen
        if end - at < msg.len:
            raise RemoteProtocolError("message ends inside a frame")
        frames.append((msg, data[at : at + msg.len] if msg.len else b""))
        at += msg.len
    if not frames:
        raise RemoteProtocolError("empty message")
    return frames


class HeaderDecoder(Generic[M]):
    """Incremental decoder of frames whose headers ``parse`` decodes:
    ``feed()`` bytes, then drain ``next_frame()``.

    After a :class:`~.errors.ProtocolError` the decoder is broken for good and
    raises the same error again: a stream with a bad frame cannot be resynced.
    """

    def __init__(
        self,
        parse: HeaderParser[M],
        *,
        max_header: int = MAX_HEADER_BYTES,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.max_header = max_header
        self.max_payload = max_payload
        self._parse = parse
        self._buf = bytearray()
        self._pending: M | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buf += data

    def next_frame(self) -> tuple[M, bytes] | None:
        """The next whole frame, or None when more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def __iter__(self) -> Iterator[tuple[M, bytes]]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def _next(self) -> tuple[M, bytes] | None:
        buf = self._buf
        if self._pending is None:
            if len(buf) < 4:
                return None
            (hlen,) = _LEN.unpack_from(buf)
            if hlen == 0:
                raise RemoteProtocolError("empty frame header")
            if hlen > self.max_header:
                raise FrameTooLarge(
                    f"header of {hlen} bytes exceeds the limit of {self.max_header}"
                )
            if len(buf) < 4 + hlen:
                return None
            self._pending = self._parse(bytes(buf[4 : 4 + hlen]), self.max_payload)
            del buf[: 4 + hlen]
        msg = self._pending
        if len(buf) < msg.len:
            return None
        payload = bytes(buf[: msg.len])
        del buf[: msg.len]
        self._pending = None
        return msg, payload


class FrameDecoder(HeaderDecoder[AnyMessage]):
    """The incremental decoder of the wire protocol's frames (:mod:`.messages`)."""

    def __init__(
        self, *, max_header: int = MAX_HEADER_BYTES, max_payload: int = MAX_PAYLOAD_BYTES
    ) -> None:
        super().__init__(parse_header, max_header=max_header, max_payload=max_payload)
