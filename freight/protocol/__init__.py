"""Freight's sans-I/O protocol core: frames, messages, machines, codecs.

Nothing here does I/O, reads a clock or imports asyncio/socket/ssl/time;
everything else in Freight is built on top of it.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


# Where each name lives, loaded on first use (PEP 562): a module that needs
# one part (freight.errors needs .errors) does not pay for the others
# (cryptography for .seal, zstandard for .codec).
_LAZY = {
    "messages": "messages",
    "TokenBucket": "bucket",
    "Compressor": "codec",
    "decompress": "codec",
    "FrameTooLarge": "errors",
    "FreightError": "errors",
    "IntegrityError": "errors",
    "LocalProtocolError": "errors",
    "ProtocolError": "errors",
    "RemoteProtocolError": "errors",
    "VersionMismatch": "errors",
    "FrameDecoder": "frames",
    "decode_frame": "frames",
    "encode_frame": "frames",
    "encode_header": "frames",
    "PROTOCOL_VERSION": "limits",
    "RetryPolicy": "retry",
    "RetryState": "retry",
    "Opener": "seal",
    "Sealer": "seal",
    "State": "stream",
    "StreamReceiver": "stream",
    "StreamSender": "stream",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _submodule(where)
    return module if name == where else getattr(module, name)


def _submodule(name: str) -> ModuleType:
    # Spelled out, not importlib: the imports stay visible to the checks of
    # this package's purity and of import cycles.
    if name == "bucket":
        import freight.protocol.bucket

        return freight.protocol.bucket
    if name == "codec":
        import freight.protocol.codec

        return freight.protocol.codec
    if name == "errors":
        import freight.protocol.errors

        return freight.protocol.errors
    if name == "frames":
        import freight.protocol.frames

        return freight.protocol.frames
    if name == "limits":
        import freight.protocol.limits

        return freight.protocol.limits
    if name == "messages":
        import freight.protocol.messages

        return freight.protocol.messages
    if name == "retry":
        import freight.protocol.retry

        return freight.protocol.retry
    if name == "seal":
        import freight.protocol.seal

        return freight.protocol.seal
    if name == "stream":
        import freight.protocol.stream

        return freight.protocol.stream
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
