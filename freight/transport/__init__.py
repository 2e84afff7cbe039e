"""asyncio adapters that move protocol bytes: frame channels (WebSocket and
sealed data connections), a per-stream multiplexer, and the stream engines
that drive the sans-I/O machines against files."""

from __future__ import annotations

from .channel import ChannelClosed, FrameChannel, Mux, Port
from .dataconn import DataConnChannel, open_data_connection
from .streaming import Acceptance, Sink, Source, run_receiver, run_sender
from .ws import WSChannel

__all__ = [
    "Acceptance",
    "ChannelClosed",
    "DataConnChannel",
    "FrameChannel",
    "Mux",
    "Port",
    "Sink",
    "Source",
    "WSChannel",
    "open_data_connection",
    "run_receiver",
    "run_sender",
]
