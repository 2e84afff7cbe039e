"""asyncio adapters that move protocol bytes: frame channels (WebSocket and
sealed data connections) and a per-stream multiplexer. What drives the
stream machines against files is the engine (:mod:`freight.engine`).

The names below load on first use (PEP 562): a module that needs the
channel does not pay for the data connection's ciphers or for aiohttp."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .channel import ChannelClosed, FrameChannel, Mux, Port
    from .dataconn import DataConnChannel, open_data_connection
    from .ws import WSChannel

__all__ = [
    "ChannelClosed",
    "DataConnChannel",
    "FrameChannel",
    "Mux",
    "Port",
    "WSChannel",
    "open_data_connection",
]

_LAZY = {
    "ChannelClosed": "channel",
    "FrameChannel": "channel",
    "Mux": "channel",
    "Port": "channel",
    "DataConnChannel": "dataconn",
    "open_data_connection": "dataconn",
    "WSChannel": "ws",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_submodule(where), name)


def _submodule(name: str) -> ModuleType:
    # Spelled out, not importlib: the imports stay visible to the check of
    # import cycles.
    if name == "channel":
        import freight.transport.channel

        return freight.transport.channel
    if name == "dataconn":
        import freight.transport.dataconn

        return freight.transport.dataconn
    if name == "ws":
        import freight.transport.ws

        return freight.transport.ws
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
