"""Shallow send queues for a connection that measures its path.

A train of probe records must not hide in buffers: whatever the sender
queued when its clock says "stop" still has to cross the path, and at
10 Mbit/s the usual 4 MiB of user-space buffer plus an autotuned socket
buffer would add seconds. Here the asyncio transport pauses at a small
mark and the kernel keeps little unsent data (``TCP_NOTSENT_LOWAT``), while
the bytes in flight (the congestion window) are left to TCP.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Final

SHALLOW_BYTES: Final = 256 * 1024
# Linux's value where the socket module does not name it.
TCP_NOTSENT_LOWAT: Final = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


@contextlib.contextmanager
def shallow_writes(chan: Any, mark: int = SHALLOW_BYTES) -> Iterator[bool]:
    """While inside, ``chan`` (a data connection) queues at most about
    ``mark`` unsent bytes in user space and in the kernel; yields whether it
    could (a channel inside TLS or a WebSocket is left as it is)."""
    transport = getattr(chan, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None or not hasattr(transport, "get_write_buffer_limits"):
        yield False
        return
    low, high = transport.get_write_buffer_limits()
    lowat_set = False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, mark)
        lowat_set = True
    transport.set_write_buffer_limits(high=mark, low=mark // 4)
    try:
        yield True
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)
            if lowat_set:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 0)  # the default
