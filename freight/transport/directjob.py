"""The direct manner of a transfer job: a byte pipe from sender to receiver
with no hub in between.

The receiver opens a :class:`DirectListener` and hands its
:meth:`~DirectListener.completion` (addresses, a one-time ticket id and its
secret) to the sender inside the end-to-end sealed job message; the sender
calls :func:`dial_direct`. The connection is the sealed data connection of
:mod:`freight.transport.dataconn` (every frame AES-256-GCM sealed with
per-direction keys derived from the ticket secret), the receiver playing the
hub's part:

* the dialler writes the preamble (magic and ticket id) and, at once, a
  sealed ``Hello``: only a dialler holding the secret can seal it, so the
  ticket is spent only when that Hello opens — a dialler with a wrong
  ticket, a wrong secret or garbage is dropped and the right one is still
  accepted afterwards;
* the listener answers with a sealed ``Welcome`` (the dialler then knows
  both ends derived the same keys) and stops listening: one connection;
* messages travel as ``Data`` frames (sealed per hop, unlike end-to-end
  sealed relay records), the end of the sending direction as ``EndStream``
  with the byte count, so a cut connection is never mistaken for an end.

Flow control is the data connection's: ``send`` waits while the socket's
write buffer is over its high mark, and the reading side stops reading its
socket once 4 MiB of received frames wait to be taken, so a receiver that
stops reading stops the sender through TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import socket
from typing import Final

from ..errors import UsageError
from ..protocol import messages as m
from ..protocol.errors import ProtocolError, RemoteProtocolError, VersionMismatch
from ..protocol.limits import MAX_PAYLOAD_BYTES, PROTOCOL_VERSION
from ..protocol.seal import TICKET_ID_BYTES, TICKET_SECRET_BYTES, preamble
from ..tasks import Supervisor
from .channel import ChannelClosed
from .dataconn import DataConnProtocol, DataPathUnavailable, WireDamaged
from .ifaddrs import host_addresses

SID: Final = "direct"
# A dialler has this long, from its TCP connection, to present the
# preamble and its sealed Hello.
VET_TIMEOUT: Final = 5.0
# Connections being vetted at once; a newer one pushes out the oldest, so
# idle garbage cannot lock the one sender out.
MAX_PENDING: Final = 16
# Happy Eyeballs (RFC 8305): the next address is tried after this long, or
# at once when the attempts before it failed.
STAGGER: Final = 0.25
MAX_ADDRS: Final = 32
MAX_MESSAGE: Final = MAX_PAYLOAD_BYTES

Address = tuple[str, int]


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, *, any_port: bool = False) -> Address:
    """``"192.0.2.5:40123"`` or ``"[2001:db8::1]:40123"``: an IP literal
    (never a name: nothing to resolve) and a port (0 only with ``any_port``)."""
    host, sep, port = text.rpartition(":")
    low = 0 if any_port else 1
    if not sep or not (port.isascii() and port.isdigit()) or not low <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses")
    elif ipaddress.ip_address(host).version != 4:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets")
    return host, int(port)


class ByteConn:
    """An ordered, sealed message pipe between the two ends of a direct job.

    ``send(data)`` sends one message (at most 16 MiB; an empty one sends
    nothing); ``recv()`` returns the next one, or ``b""`` once the other end
    has closed its sending side (``shutdown``/``aclose``). A connection lost
    before that raises :class:`ChannelClosed`."""

    def __init__(self, proto: DataConnProtocol) -> None:
        self.proto = proto
        self._seq_out = 0
        self._sent = 0
        self._seq_in = 0
        self._received = 0
        self._eof_sent = False
        self._eof_received = False

    @property
    def peer(self) -> str:
        """The other end's address, ``HOST:PORT``."""
        transport = self.proto.transport
        name = transport.get_extra_info("peername") if transport is not None else None
        if not name:
            return ""
        host = str(name[0])
        if host.startswith("::ffff:"):  # IPv4 through a dual-stack socket
            host = host.removeprefix("::ffff:")
        return format_address(host, int(name[1]))

    async def send(self, data: bytes) -> None:
        if self._eof_sent:
            raise UsageError("this direct connection's sending side is already closed")
        n = len(data)
        if n > MAX_MESSAGE:
            raise UsageError(f"a message may be at most {MAX_MESSAGE} bytes; send it in parts")
        if n == 0:
            return
        msg = m.Data(sid=SID, seq=self._seq_out, offset=self._sent, raw=n, len=n)
        self._seq_out += 1
        self._sent += n
        await self.proto.send(msg, data)

    async def recv(self) -> bytes:
        if self._eof_received:
            return b""
        try:
            msg, payload = await self.proto.recv()
        except ChannelClosed:
            raise ChannelClosed(
                "the direct connection ended before the other end finished sending"
            ) from None
        if isinstance(msg, m.Data):
            if msg.seq != self._seq_in or msg.offset != self._received or msg.raw != len(payload):
                raise RemoteProtocolError("direct connection: a message out of sequence")
            self._seq_in += 1
            self._received += len(payload)
            return payload
        if isinstance(msg, m.EndStream):
            if msg.total != self._received:
                raise RemoteProtocolError(
                    f"direct connection: the other end sent {msg.total} bytes, "
                    f"{self._received} arrived"
                )
            self._eof_received = True
            return b""
        if isinstance(msg, m.Abort):
            raise ChannelClosed(f"the other end gave up: {msg.message or msg.code}")
        raise RemoteProtocolError(f"direct connection: unexpected {type(msg).__name__} frame")

    async def shutdown(self) -> None:
        """Close the sending side: the other end's recv() returns b""."""
        if not self._eof_sent:
            self._eof_sent = True
            await self.proto.send(m.EndStream(sid=SID, total=self._sent, digest=""))

    async def abort(self, reason: str) -> None:
        """Give up: the other end's recv() raises ChannelClosed with ``reason``."""
        if not self._eof_sent:
            self._eof_sent = True
            with contextlib.suppress(ChannelClosed, OSError):
                await self.proto.send(m.Abort(sid=SID, code="aborted", message=reason[:1000]))
        await self.proto.aclose()

    async def aclose(self) -> None:
        """Close the sending side (when still open) and the connection."""
        with contextlib.suppress(ChannelClosed, OSError):
            await self.shutdown()
        await self.proto.aclose()

    async def __aenter__(self) -> ByteConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _new_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" takes IPv4 too: one port for both families.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
        sock.listen(MAX_PENDING)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _listening_socket(bind: str | None) -> tuple[socket.socket, list[str]]:
    """The socket and the addresses to advertise, loopback last."""
    if bind is None:
        try:
            sock = _new_socket("::", 0)
        except OSError:  # no IPv6 on this host
            sock = _new_socket("0.0.0.0", 0)
        host = str(sock.getsockname()[0])
    else:
        try:
            host, port = parse_address(bind, any_port=True)
        except ValueError as exc:
            raise UsageError(f"cannot listen on {bind}: {exc} (e.g. 192.0.2.5:0)") from None
        try:
            sock = _new_socket(host, port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {bind}: {exc.strerror or exc}") from None
    port = int(sock.getsockname()[1])
    if host not in ("::", "0.0.0.0"):
        return sock, [format_address(host, port)]
    ipv6 = host == "::"
    addrs = [format_address(str(a), port) for a in host_addresses(ipv6=ipv6)]
    addrs.append(format_address("127.0.0.1", port))
    if ipv6:
        addrs.append(format_address("::1", port))
    return sock, addrs[:MAX_ADDRS]


class DirectListener:
    """The receiving end: listens from :meth:`open` on, accepts one sender
    holding the ticket, then stops listening."""

    def __init__(self, sock: socket.socket, addrs: list[str]) -> None:
        self.addrs = addrs
        self.ticket = os.urandom(TICKET_ID_BYTES)
        self.secret = os.urandom(TICKET_SECRET_BYTES)
        self.refused = 0  # diallers dropped: wrong ticket or secret, garbage, too slow
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._tasks = Supervisor("direct-listener")
        self._pending: dict[DataConnProtocol, asyncio.Task[None]] = {}
        self._taken = False
        self._accepted = False
        self._winner: asyncio.Future[ByteConn] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, bind: str | None = None) -> DirectListener:
        """Listen on ``bind`` (``HOST:PORT``; by default every address, a
        free port)."""
        sock, addrs = _listening_socket(bind)
        listener = cls(sock, addrs)
        try:
            listener._server = await asyncio.get_running_loop().create_server(
                listener._connected, sock=sock
            )
        except OSError:
            sock.close()
            raise
        return listener

    def completion(self) -> dict[str, object]:
        """What the sender needs, JSON-able: addresses, ticket and secret."""
        return {"addrs": list(self.addrs), "ticket": self.ticket.hex(), "secret": self.secret.hex()}

    async def accept(self, timeout: float) -> ByteConn:
        """The one sender's connection, once it has proved its ticket."""
        if self._accepted:
            raise UsageError("this direct listener's one connection was already accepted")
        try:
            conn = await asyncio.wait_for(asyncio.shield(self._winner), timeout)
        except TimeoutError:
            raise DataPathUnavailable(
                f"no sender connected directly within {timeout:g} s"
            ) from None
        self._accepted = True
        return conn

    async def aclose(self) -> None:
        """Stop listening and drop whoever is still being vetted. A
        connection already accepted stays open (its ByteConn owns it)."""
        self._stop_listening()
        await self._tasks.aclose()
        if not self._winner.done():
            self._winner.set_exception(DataPathUnavailable("the direct listener was closed"))
            self._winner.exception()  # retrieved: nobody may be waiting
        elif not self._accepted and self._winner.exception() is None:
            await self._winner.result().aclose()  # won, never taken

    async def __aenter__(self) -> DirectListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals ------------------------------------------------------------

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._sock.close()

    def _lookup(self, ticket_id: bytes) -> tuple[bytes, object] | None:
        if self._taken or not hmac.compare_digest(ticket_id, self.ticket):
            return None
        return self.secret, None

    def _connected(self) -> asyncio.BaseProtocol:
        proto = DataConnProtocol(is_hub=True, lookup=self._lookup)
        if len(self._pending) >= MAX_PENDING:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).cancel()
        self._pending[proto] = self._tasks.spawn(self._vet(proto), name="vet", detached=True)
        return proto

    async def _vet(self, proto: DataConnProtocol) -> None:
        won = handed = False
        try:
            async with asyncio.timeout(VET_TIMEOUT):
                await asyncio.shield(proto.ready)
                msg, _ = await proto.recv()
            if self._taken or not isinstance(msg, m.Hello):
                return
            if msg.version != PROTOCOL_VERSION:
                await proto.send(
                    m.Error(
                        code=VersionMismatch.code,
                        message=f"this receiver speaks protocol version {PROTOCOL_VERSION}",
                    )
                )
                return
            self._taken = won = True
            self._stop_listening()
            # The first sealed frame proves to the dialler that its ticket
            # was accepted and that both ends derived the same keys.
            await proto.send(m.Welcome(version=PROTOCOL_VERSION, node=SID))
            if not self._winner.done():  # else closed meanwhile
                self._winner.set_result(ByteConn(proto))
                handed = True
        except (ProtocolError, ChannelClosed, TimeoutError, OSError):
            if won and not self._winner.done():
                self._winner.set_exception(
                    DataPathUnavailable("the direct sender's connection broke at once")
                )
        finally:
            self._pending.pop(proto, None)
            if not won:
                self.refused += 1
            if not handed:  # refused, broken, or the listener closed meanwhile
                await proto.aclose()


def _parse_completion(completion: dict[str, object]) -> tuple[list[Address], bytes, bytes]:
    try:
        raw_addrs, ticket, secret = completion["addrs"], completion["ticket"], completion["secret"]
        if not isinstance(raw_addrs, list) or not raw_addrs or len(raw_addrs) > MAX_ADDRS:
            raise ValueError(f"addrs must list 1 to {MAX_ADDRS} addresses")
        if not isinstance(ticket, str) or not isinstance(secret, str):
            raise ValueError("ticket and secret must be hex strings")
        ticket_id, key = bytes.fromhex(ticket), bytes.fromhex(secret)
        if len(ticket_id) != TICKET_ID_BYTES or len(key) != TICKET_SECRET_BYTES:
            raise ValueError("ticket or secret has the wrong length")
        addrs = [parse_address(a) for a in raw_addrs if isinstance(a, str)]
        if len(addrs) != len(raw_addrs):
            raise ValueError("every address must be a string")
    except (KeyError, ValueError, TypeError) as exc:
        raise DataPathUnavailable(f"the receiver's direct completion is malformed: {exc}") from None
    return addrs, ticket_id, key


async def _attempt(address: Address, ticket_id: bytes, secret: bytes) -> DataConnProtocol:
    host, port = address
    loop = asyncio.get_running_loop()
    proto = DataConnProtocol(is_hub=False, secret=secret, ticket_id=ticket_id)
    ok = False
    try:
        await loop.create_connection(lambda: proto, host, port)
        assert proto.transport is not None
        proto.transport.write(preamble(ticket_id))
        await proto.send(m.Hello(version=PROTOCOL_VERSION, agent=SID))
        msg, _ = await proto.recv()
        if isinstance(msg, m.Error):
            raise DataPathUnavailable(f"refused: {msg.message}")
        if not isinstance(msg, m.Welcome) or msg.version != PROTOCOL_VERSION:
            raise DataPathUnavailable(f"expected a version {PROTOCOL_VERSION} welcome")
        ok = True
        return proto
    finally:
        if not ok:
            await proto.aclose()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError | WireDamaged):
        # A refused ticket is answered by an unsealed error frame, which
        # cannot open as a sealed record; a middlebox garbling bytes alike.
        return "refused (ticket unknown or already used) or altered on the way"
    if isinstance(exc, DataPathUnavailable):
        return exc.message
    if isinstance(exc, OSError):  # asyncio's text repeats the address
        return os.strerror(exc.errno) if exc.errno else str(exc)
    return str(exc) or type(exc).__name__


async def dial_direct(completion: dict[str, object], *, timeout: float = 1.0) -> ByteConn:
    """Connect to a direct listener from its completion, trying its
    addresses Happy-Eyeballs style; :class:`DataPathUnavailable` within
    ``timeout`` when no address answers or the ticket is refused."""
    addrs, ticket_id, secret = _parse_completion(completion)
    failures: list[str] = []
    tasks: dict[asyncio.Task[DataConnProtocol], Address] = {}
    winner: DataConnProtocol | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def start(sup: Supervisor, address: Address) -> None:
        task = sup.spawn(_attempt(address, ticket_id, secret), name="dial")
        tasks[task] = address

    queue = list(addrs)
    try:
        async with Supervisor("direct-dial", on_failure=_ignore) as sup:
            start(sup, queue.pop(0))
            running = set(tasks)
            while running and winner is None:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait = min(STAGGER, left) if queue else left
                done, running = await asyncio.wait(
                    running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    exc = task.exception()
                    if exc is None and winner is None:
                        winner = task.result()
                    elif exc is None:
                        await task.result().aclose()
                    else:
                        failures.append(f"{format_address(*tasks[task])}: {_reason(exc)}")
                if winner is None and queue:  # the stagger passed, or an attempt failed
                    start(sup, queue.pop(0))
                    running = {t for t in tasks if not t.done()}
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running, timeout=STAGGER)
                for task in running:
                    if task.done() and not task.cancelled() and task.exception() is None:
                        await task.result().aclose()
        if winner is not None:
            conn, winner = ByteConn(winner), None
            return conn
    finally:
        if winner is not None:  # cancelled while finishing: do not leak it
            await winner.aclose()
    silent = [format_address(*tasks[t]) for t in tasks if t.cancelled()]
    silent += [format_address(*a) for a in queue]
    if silent:
        failures.append(f"{', '.join(silent)}: no answer within {timeout:g} s")
    raise DataPathUnavailable("cannot connect directly: " + "; ".join(failures))


def _ignore(exc: BaseException) -> None:
    """A failed attempt is an answer, collected from its task."""
