"""A userspace delay line, for kernels without ``sch_netem`` (``tc qdisc add
... netem`` says "unknown qdisc").

Run inside a network namespace as ``python tests/delayline.py DEV MS``: it
creates the TUN device DEV and sends every packet read from it back into
it MS milliseconds later. The namespace's routes send traffic for the far
end into DEV; a policy rule routes what comes back out of DEV onwards
(see :func:`tests.shapedpath.ShapedPath.add_delay`), so each packet on that
route is delayed once. A queue longer than MAX_PACKETS drops, as a router
would. It prints ``ready`` once the device exists and runs until killed.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import sys
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKETS = 20000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


async def run(name: str, delay: float) -> None:
    loop = asyncio.get_running_loop()
    fd = open_tun(name)
    held: deque[tuple[float, bytes]] = deque()
    timer: asyncio.TimerHandle | None = None
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def release() -> None:
        nonlocal timer
        timer = None
        now = loop.time()
        while held and held[0][0] <= now:
            try:
                os.write(fd, held.popleft()[1])
            except BlockingIOError:
                break  # the kernel's backlog is full: a drop, as on a wire
        if held:
            timer = loop.call_at(held[0][0], release)

    def readable() -> None:
        nonlocal timer
        due = loop.time() + delay
        for _ in range(256):  # a burst at a time, then let timers run
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                break
            if len(held) < MAX_PACKETS:
                held.append((due, packet))
        if held and timer is None:
            timer = loop.call_at(held[0][0], release)

    loop.add_reader(fd, readable)
    print("ready", flush=True)
    await stop.wait()
    os.close(fd)


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], float(sys.argv[2]) / 1000))
