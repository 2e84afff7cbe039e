"""What the shared port allows a client that has not proved anything yet:
how many sockets, and how long each phase before a request may take.

Every socket counts against a global cap and a cap per client address from
accept to close; over either it is closed at once. Each phase has a
deadline: the first byte (``listener``), the TLS handshake, the headers of
the first request (armed here when TLS completes, disarmed by the
middleware when a request starts), a request body, and the idle time
between requests (aiohttp's keep-alive, which also bounds the headers of
every later request: it fires while no whole request has arrived).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HTTP_UP_PREFIX = "/v1/attach/http/"  # streamed up bodies have their own pacing


@dataclass(frozen=True)
class PortLimits:
    """The shared port's limits (``freight hub`` options; docs/protocol.md 1.4)."""

    max_connections: int = 10_000
    per_address: int = 1024
    first_byte: float = 10.0
    tls_handshake: float = 15.0
    headers: float = 15.0
    body: float = 60.0
    keepalive: float = 30.0
    data_idle: float = 300.0


class Slot:
    """One accepted socket's place in the counts; released exactly once."""

    def __init__(self, guard: PortGuard, address: str) -> None:
        self.guard = guard
        self.address = address
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.guard._give_back(self.address)


class PortGuard:
    """Counts sockets and arms the header deadline of TLS connections."""

    def __init__(self, limits: PortLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_address: dict[str, int] = {}
        self._awaiting: dict[Any, asyncio.TimerHandle] = {}  # transport -> header deadline

    def take(self, address: str) -> Slot | str:
        """A slot for a socket from ``address``, or which cap refuses it."""
        if self.total >= self.limits.max_connections:
            return "connections"
        if self.by_address.get(address, 0) >= self.limits.per_address:
            return "connections_per_address"
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return Slot(self, address)

    def _give_back(self, address: str) -> None:
        self.total -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)

    def guarded(self, inner: asyncio.Protocol, slot: Slot) -> GuardedProtocol:
        return GuardedProtocol(self, inner, slot)

    def arm_headers(self, transport: Any) -> None:
        loop = asyncio.get_running_loop()
        self._awaiting[transport] = loop.call_later(
            self.limits.headers, self._headers_late, transport
        )

    def _headers_late(self, transport: Any) -> None:
        self._awaiting.pop(transport, None)
        transport.abort()

    def request_started(self, transport: Any) -> None:
        handle = self._awaiting.pop(transport, None)
        if handle is not None:
            handle.cancel()

    def forget(self, transport: Any) -> None:
        """The connection ended: drop its deadline if still armed."""
        self.request_started(transport)


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one TLS connection, wrapped so that the
    connection frees its slot when it ends and its first request's headers
    have a deadline. Everything else is passed through unchanged."""

    def __init__(self, guard: PortGuard, inner: asyncio.Protocol, slot: Slot) -> None:
        self.guard = guard
        self.inner = inner
        self.slot = slot
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)
        self.guard.arm_headers(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self.transport)
        self.slot.release()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def deadlines_middleware(guard: Callable[[web.Request], PortGuard | None]) -> Any:
    """The request's headers are in: disarm the header deadline; a body
    (at most 1 MiB) must then arrive within the body deadline, else the
    connection is dropped."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        g = guard(request)
        if g is not None:
            g.request_started(request.transport)
            if request.body_exists and not request.path.startswith(HTTP_UP_PREFIX):
                try:
                    await asyncio.wait_for(request.read(), g.limits.body)
                except TimeoutError:
                    if request.transport is not None:
                        request.transport.abort()
                    raise web.HTTPRequestTimeout() from None
        return await handler(request)

    return middleware
