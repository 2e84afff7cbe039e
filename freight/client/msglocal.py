"""The local messaging socket of a host: applications on this machine reach
its :class:`~freight.client.msghost.MessageHost` through ``msg.sock`` in the
config folder (protocol: :mod:`freight.protocol.msglocal`).

Only this user's processes get in: the socket is 0600 from the moment it has
its name, and every connection's peer uid is checked (SO_PEERCRED); another
uid gets an error frame and is closed. Each application connection is one
task of the server's :class:`~freight.tasks.Supervisor`, with its own helpers
(one per registration feeding deliveries, one per message in flight), and
bounded: registrations (by the host), unanswered sends (the socket is not
read while at the bound: back-pressure), deliveries not yet taken (credit).
A malformed or oversized frame, or a peer speaking out of turn, ends that
application's connection only; its registrations go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from ..errors import ConnectionEnded, Forbidden, FreightError, UsageError
from ..protocol import msglocal as p
from ..protocol.errors import ProtocolError, RemoteProtocolError, VersionMismatch
from ..tasks import Supervisor

if TYPE_CHECKING:
    from .msgapp import Delivery, Registration, SendResult
    from .msghost import MessageHost

log = structlog.get_logger("freight.msglocal")

SOCKET_NAME: Final = "msg.sock"
# Per application connection: messages sent and not yet answered, and
# deliveries written and not yet taken.
MAX_UNANSWERED: Final = 256
DELIVERY_CREDIT: Final = 256
# Application connections one host serves at once.
MAX_CONNECTIONS: Final = 256
HELLO_TIMEOUT: Final = 10.0
ANNOUNCE_WAIT: Final = 10.0
READ_BYTES: Final = 64 * 1024
# sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH: Final = 107


async def announced(host: MessageHost) -> None:
    """Until the hub knows the registrations made so far, so a message sent
    as soon as a registration is answered finds it; not at all while the
    host is detached (it announces them when it is back), at most
    ANNOUNCE_WAIT seconds."""
    if host.relay.attached.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(host.announced(), ANNOUNCE_WAIT)


def socket_path(root: Path) -> Path:
    """Where a host in config folder ``root`` serves applications."""
    return root / SOCKET_NAME


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _answers(path: Path) -> bool:
    """Whether something listens on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 before it has that name.

    It is bound inside a fresh 0700 folder beside ``path``, made 0600 there
    and renamed into place, so no other user can ever connect to it. A
    socket left at ``path`` by a host that died is replaced; one that
    answers is another host, and is refused."""
    if len(os.fsencode(path.parent)) + 16 > MAX_SOCKET_PATH:
        raise UsageError(
            f"the config folder {path.parent} is too long a path for a Unix socket",
            hint="set FREIGHT_CONFIG_DIR to a shorter folder",
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and _answers(path):
        raise UsageError(
            f"another host already serves {path}",
            hint="stop that freight daemon (or agent) first, or use it",
        )
    private = Path(tempfile.mkdtemp(prefix=".msg-", dir=path.parent))  # 0700
    temp = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(str(temp))
        os.chmod(temp, 0o600)
        sock.listen(64)
        os.replace(temp, path)
        bound = True
    finally:
        if not bound:
            sock.close()
            temp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            private.rmdir()
    sock.setblocking(False)
    return sock


class MessageSocket:
    """Serves ``host`` on ``msg.sock`` in ``root`` (see the module docstring)."""

    def __init__(
        self,
        host: MessageHost,
        root: Path,
        *,
        credit: int = DELIVERY_CREDIT,
        max_unanswered: int = MAX_UNANSWERED,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host = host
        self.path = socket_path(root)
        self.credit = credit
        self.max_unanswered = max_unanswered
        self.max_connections = max_connections
        self.tasks = Supervisor("msg-socket")
        self.connections: set[AppConnection] = set()
        self._sock: socket.socket | None = None
        self._ino = 0
        self._ids = itertools.count(1)

    def bind(self) -> None:
        """Take the socket's name (before attaching, so a second host of the
        same folder stops before it announces itself to the hub)."""
        if self._sock is None:
            self._sock = bind_private(self.path)
            self._ino = os.stat(self.path).st_ino

    async def start(self) -> None:
        """Serve applications (binding first if :meth:`bind` was not called)."""
        self.bind()
        assert self._sock is not None
        self.tasks.spawn(self._accept(self._sock), name="accept")

    async def aclose(self) -> None:
        await self.tasks.aclose()
        if self._sock is not None:
            sock, self._sock = self._sock, None
            # Only our own socket is removed (a newer host may own the name).
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._ino:
                    self.path.unlink()
            sock.close()

    async def __aenter__(self) -> MessageSocket:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listening)
            n = next(self._ids)
            self.tasks.spawn(self._serve(sock, n), name=f"app-{n}", detached=True)

    async def _serve(self, sock: socket.socket, n: int) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            uid = peer_uid(sock)
            if uid != os.getuid():
                log.warning("msg_socket_refused", uid=uid)
                await _refuse(writer, Forbidden(f"uid {uid} may not use this host's socket"))
                return
            if len(self.connections) >= self.max_connections:
                await _refuse(
                    writer,
                    UsageError(f"at most {self.max_connections} application connections"),
                )
                return
            conn = AppConnection(self, reader, writer, n)
            self.connections.add(conn)
            try:
                await conn.run()
            finally:
                self.connections.discard(conn)
                self.host.drop_owner(conn)
                await conn.tasks.aclose()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await asyncio.wait_for(writer.wait_closed(), 5.0)


async def _refuse(writer: asyncio.StreamWriter, exc: FreightError, rid: str = "") -> None:
    with contextlib.suppress(OSError, ConnectionError, TimeoutError):
        writer.write(p.encode_local(_error(exc, rid)))
        await asyncio.wait_for(writer.drain(), 5.0)


def _error(exc: FreightError, rid: str = "") -> p.LError:
    """The error as a person reads it, hint included (the application side
    shows the message as it came, without adding its class's hint again)."""
    return p.LError(rid=rid, code=exc.code, message=exc.user_message()[:4096])


class AppConnection:
    """One application on the socket: its registrations, messages in flight
    and deliveries not yet taken."""

    def __init__(
        self,
        server: MessageSocket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        n: int,
    ) -> None:
        self.server = server
        self.host = server.host
        self.reader = reader
        self.writer = writer
        # A helper that fails (writing to an application that went away)
        # ends the connection: the reader then sees it closed.
        self.tasks = Supervisor(f"msg-app-{n}", on_failure=lambda _: writer.transport.abort())
        self.regs: dict[str, Registration] = {}
        self.pumps: dict[str, asyncio.Task[None]] = {}
        # (ticket, message id) -> what was delivered, until the app took it.
        self.untaken: dict[tuple[str, str], tuple[Registration, Delivery]] = {}
        self.credit = asyncio.Semaphore(server.credit)
        self.unanswered = asyncio.Semaphore(server.max_unanswered)
        # Frames written within one loop tick, sent in one write (bounded by
        # the credit and the unanswered sends: each writer then drains).
        self.out: list[bytes] = []

    def __repr__(self) -> str:
        return f"<AppConnection {self.tasks.name} regs={len(self.regs)}>"

    async def run(self) -> None:
        decoder = p.LocalDecoder()
        try:
            await self._hello(decoder)
            while True:
                for msg, body in decoder:
                    await self._handle(msg, body)
                data = await self.reader.read(READ_BYTES)
                if not data:
                    return
                decoder.feed(data)
        except ProtocolError as exc:
            log.info("msg_app_dropped", app=self.tasks.name, error=exc.message)
            await _refuse(self.writer, exc)
        except (ConnectionError, OSError, TimeoutError):
            return  # gone, or silent past its hello's deadline

    async def _hello(self, decoder: p.LocalDecoder) -> None:
        async with asyncio.timeout(HELLO_TIMEOUT):
            while (frame := decoder.next_frame()) is None:
                data = await self.reader.read(READ_BYTES)
                if not data:
                    raise ConnectionResetError("closed before its hello")
                decoder.feed(data)
        msg, _ = frame
        if not isinstance(msg, p.LHello):
            raise RemoteProtocolError(f"expected hello, got {msg.__struct_config__.tag}")
        if msg.version != p.LOCAL_VERSION:
            raise VersionMismatch(
                f"this host speaks version {p.LOCAL_VERSION} of the local socket, "
                f"the application {msg.version}"
            )
        account = str(getattr(self.host, "account", ""))
        await self._write(p.LWelcome(version=p.LOCAL_VERSION, hid=self.host.hid, account=account))

    async def _write(self, msg: p.LocalMessage, body: bytes = b"") -> None:
        self._post(msg, body)
        await self.writer.drain()

    def _post(self, msg: p.LocalMessage, body: bytes = b"") -> None:
        # One write per loop tick rather than per frame: a delivery's own
        # write call was a quarter of a receiving host's CPU per message.
        # (Without a drain: what is posted so is bounded by the unanswered
        # sends.)
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(p.encode_local(msg, body))

    def _flush(self) -> None:
        out, self.out = self.out, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(out))

    async def _handle(self, msg: p.AnyLocal, body: bytes) -> None:
        if isinstance(msg, p.LSend):
            await self.unanswered.acquire()  # at the bound the socket is not read
            self._send(msg, body)
        elif isinstance(msg, p.LRequest):
            await self.unanswered.acquire()
            self.tasks.spawn(self._request(msg, body), name=f"request-{msg.rid}")
        elif isinstance(msg, p.LTaken):
            self._taken(msg)
        elif isinstance(msg, p.LRegister):
            await self._register(msg)
        elif isinstance(msg, p.LUnregister):
            await self._unregister(msg)
        elif isinstance(msg, p.LApps):
            await self._write(self._apps(msg.rid))
        else:
            raise RemoteProtocolError(
                f"an application does not send {msg.__struct_config__.tag} frames"
            )

    async def _register(self, msg: p.LRegister) -> None:
        try:
            reg = self.host.register(msg.app, msg.interest, peer=msg.peer, owner=self)
        except FreightError as exc:
            await self._write(_error(exc, msg.rid))
            return
        self.regs[reg.ticket] = reg
        self.pumps[reg.ticket] = self.tasks.spawn(self._pump(reg), name=f"pump-{reg.ticket}")
        await announced(self.host)
        held = self.host.held.get(msg.app, "")
        await self._write(p.LRegistered(rid=msg.rid, ticket=reg.ticket, held=held))

    async def _unregister(self, msg: p.LUnregister) -> None:
        if msg.ticket not in self.regs:
            exc = UsageError(f"{msg.ticket} is not a registration of this connection")
            await self._write(_error(exc, msg.rid))
            return
        self.pumps.pop(msg.ticket).cancel()
        del self.regs[msg.ticket]
        self.host.unregister(msg.ticket)
        for key in [k for k in self.untaken if k[0] == msg.ticket]:
            del self.untaken[key]
            self.credit.release()
        await self._write(p.LDone(rid=msg.rid))

    async def _pump(self, reg: Registration) -> None:
        """Hand the registration's messages to the application while it has
        credit (fewer than ``credit`` deliveries untaken)."""
        while True:
            try:
                delivery = await reg.get()
            except ConnectionEnded:
                return  # the registration was removed
            await self.credit.acquire()
            self.untaken[(reg.ticket, delivery.id)] = (reg, delivery)
            await self._write(_deliver(delivery), delivery.body)

    def _taken(self, msg: p.LTaken) -> None:
        for mid in msg.ids:
            entry = self.untaken.pop((msg.ticket, mid), None)
            if entry is None:
                continue  # taken twice, or unregistered meanwhile: nothing owed
            reg, delivery = entry
            self.credit.release()
            reg.taken(delivery)

    def _send(self, msg: p.LSend, body: bytes) -> None:
        """Hand the message to the host; its LResult is written when the
        host settles it (no task per message)."""
        rid = msg.rid

        def done(result: SendResult | FreightError) -> None:
            self.unanswered.release()
            if isinstance(result, FreightError):
                self._post(_error(result, rid))
                return
            self._post(
                p.LResult(
                    rid=rid,
                    id=result.id,
                    count=result.count,
                    reason=result.reason,
                    message=result.message[:4096],
                )
            )

        try:
            if msg.from_ticket and msg.from_ticket not in self.regs:
                raise UsageError(f"{msg.from_ticket} is not a registration of this connection")
            self.host.outgoing.submit(
                msg.dest,
                msg.app,
                msg.type,
                body,
                ticket=msg.ticket,
                from_ticket=msg.from_ticket,
                reply_to=msg.reply_to,
                timeout=msg.timeout,
                wait=msg.wait,
                done=done,
            )
        except FreightError as exc:
            done(exc)

    async def _request(self, msg: p.LRequest, body: bytes) -> None:
        answer: p.LocalMessage
        payload = b""
        try:
            reply = await self.host.request(msg.dest, msg.app, msg.type, body, timeout=msg.timeout)
        except TimeoutError:
            answer = p.LResult(
                rid=msg.rid, reason="timeout", message=f"no reply within {msg.timeout:g} s"
            )
        except FreightError as exc:
            reason = str(getattr(exc, "reason", "") or "")
            if reason:
                answer = p.LResult(rid=msg.rid, reason=reason, message=exc.message[:4096])
            else:
                answer = _error(exc, msg.rid)
        else:
            answer, payload = _deliver(reply, rid=msg.rid), reply.body
        finally:
            self.unanswered.release()
        await self._write(answer, payload)

    def _apps(self, rid: str) -> p.LAppsList:
        apps = []
        for row in self.host.apps():
            stats = {
                k: v
                for k, v in row.items()
                if isinstance(v, int) and not isinstance(v, bool) and k != "interest"
            }
            interest = row.get("interest", 0)
            apps.append(
                p.LAppInfo(
                    ticket=str(row.get("ticket", "")),
                    app=str(row.get("app", "")),
                    interest=interest if isinstance(interest, int) else 0,
                    peer=str(row.get("peer", "*")),
                    stats={k: v for k, v in stats.items() if v >= 0},
                    held=str(row.get("held", "")),
                )
            )
        counters = {k: v for k, v in self.host.counters().items() if v >= 0}
        return p.LAppsList(rid=rid, apps=apps, counters=counters)


def _deliver(d: Delivery, rid: str = "") -> p.LDeliver:
    return p.LDeliver(
        ticket="" if rid else d.ticket,
        rid=rid,
        id=d.id,
        frm=d.frm,
        account=d.account,
        app=d.app,
        type=d.type,
        from_ticket=d.from_ticket,
        reply_to=d.reply_to,
        len=len(d.body),
    )
