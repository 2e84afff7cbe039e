"""Freight's sans-I/O protocol core: frames, messages, machines, codecs.

Nothing here does I/O, reads a clock or imports asyncio/socket/ssl/time;
everything else in Freight is built on top of it.
"""

from __future__ import annotations

from . import messages
from .bucket import TokenBucket
from .codec import Compressor, decompress
from .errors import (
    FrameTooLarge,
    FreightError,
    IntegrityError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    VersionMismatch,
)
from .frames import FrameDecoder, decode_frame, encode_frame, encode_header
from .limits import PROTOCOL_VERSION
from .retry import RetryPolicy, RetryState
from .seal import Opener, Sealer
from .stream import State, StreamReceiver, StreamSender

__all__ = [
    "PROTOCOL_VERSION",
    "Compressor",
    "FrameDecoder",
    "FrameTooLarge",
    "FreightError",
    "IntegrityError",
    "LocalProtocolError",
    "Opener",
    "ProtocolError",
    "RemoteProtocolError",
    "RetryPolicy",
    "RetryState",
    "Sealer",
    "State",
    "StreamReceiver",
    "StreamSender",
    "TokenBucket",
    "VersionMismatch",
    "decode_frame",
    "decompress",
    "encode_frame",
    "encode_header",
    "messages",
]
