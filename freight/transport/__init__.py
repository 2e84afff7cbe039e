"""asyncio adapters that move protocol bytes: frame channels (WebSocket and
sealed data connections) and a per-stream multiplexer. What drives the
stream machines against files is the engine (:mod:`freight.engine`)."""

from __future__ import annotations

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
