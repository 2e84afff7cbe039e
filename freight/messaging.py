"""Messages between applications on hosts, end to end encrypted
(docs/protocol.md "Messaging")::

    async with freight.messaging.connect() as bus:
        reg = await bus.register("sensors", interest=0xFFFF0000)
        async for msg in reg:
            await msg.reply(b"ok")

    async with freight.messaging.connect() as bus:
        n = await bus.send("alice", "sensors", type=0x00120000, body=b"21.5")
        answer = await bus.request("alice", "sensors", type=0x00120000, body=b"?", timeout=5)

:func:`connect` talks to this user's host (``freight daemon``, or the agent
whose folder ``FREIGHT_CONFIG_DIR`` names) through its socket, ``msg.sock``
in the config folder, when one answers there; otherwise the program is its
own host for as long as the block lasts (it attaches to the hub you logged
in to last, or ``hub``) and serves that socket meanwhile, so other programs
of this user share it rather than announce the same host id. ``send`` returns how many recipients took the
message; when none did it raises :class:`~freight.errors.NoRecipient` (with
``reason``: no_host, no_app, no_interest, forbidden, ticket_gone...) or
:class:`~freight.errors.Busy`. ``send(..., wait=False)`` returns 0 once the
host has spooled the message (delivered all the same, its outcome untold),
as ``reply`` does by default: a loop answering one request after the other
then serves more than one request per round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .client.config import ClientConfig
from .client.msgcalls import LocalEnd
from .client.msglocal import DELIVERY_CREDIT, announced, socket_path
from .errors import FreightError, NetworkError, NoRecipient, UsageError, code_to_error
from .protocol import msglocal as p
from .protocol.errors import ProtocolError, RemoteProtocolError
from .protocol.msgtables import RegistrationRefused  # its code is raised as this class
from .tasks import Supervisor

# A send through the host's socket is answered by the host at its timeout;
# past it by this much more (the host busy reading other sends, or not
# reading this connection at its bound of unanswered sends) it is a timeout
# here, so no send waits much beyond its own timeout.
ANSWER_GRACE = 2.0

# How long register() waits for the hub to take a registration.

__all__ = ["Bus", "Message", "Registration", "RegistrationRefused", "connect", "outcome"]


@dataclass(frozen=True, slots=True)
class Message:
    """A message for one of your registrations (or the reply to a request)."""

    id: str
    ticket: str
    frm: str  # the sending host's id
    account: str  # the sender's account, as the hub vouches
    app: str
    type: int
    from_ticket: str
    reply_to: str
    body: bytes
    bus: Bus | None = field(default=None, repr=False, compare=False)

    async def reply(
        self, body: bytes, *, type: int | None = None, timeout: float = 30.0, wait: bool = False
    ) -> int:
        """Answer this message: to the registration it came from, on its host.
        Returns once your host has the reply in its spool (0), or with
        ``wait`` once it was taken (1, or the error of :meth:`Bus.send`)."""
        if self.bus is None:
            raise UsageError("this message has no connection to reply through")
        return await self.bus.send(
            "host:" + self.frm,
            self.app,
            type=self.type if type is None else type,
            body=body,
            ticket=self.from_ticket,
            reply_to=self.id,
            timeout=timeout,
            wait=wait,
        )


def outcome(count: int, reason: str, message: str) -> int:
    """``count``, or the error a message that reached nobody stands for:
    :class:`~freight.errors.NoRecipient` (``reason`` no_host, no_app,
    no_interest, ticket_gone), :class:`~freight.errors.Busy`, or the
    error of another reason."""
    if count > 0:
        return count
    from .client.msgapp import SendResult, result_error

    exc = result_error(SendResult(id="", count=0, reason=reason, message=message))
    if isinstance(exc, NoRecipient):
        raise NoRecipient(f"{reason}: {exc.message}", reason=reason)
    raise exc


class Registration(Protocol):
    ticket: str
    app: str
    interest: int
    peer: str
    # "pending": the hub (--app-approval) holds the application until an
    # admin approves it (messages come then, nothing to do here);
    # "refused": for good; "": not held.
    held: str

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def get(self) -> Message: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """What :func:`connect` yields, whichever host is behind it."""

    hid: str

    async def register(self, app: str, *, interest: int, peer: str = "*") -> Registration: ...

    async def send(
        self,
        dest: str,
        app: str,
        *,
        type: int,
        body: bytes,
        ticket: str = "",
        from_ticket: str = "",
        reply_to: str = "",
        timeout: float = 30.0,
        wait: bool = True,
    ) -> int: ...

    async def request(
        self, dest: str, app: str, *, type: int, body: bytes, timeout: float = 5.0
    ) -> Message: ...

    async def apps(self) -> dict[str, Any]: ...


def _check_interest(interest: int) -> None:
    if not 0 < interest <= 0xFFFFFFFF:
        raise UsageError("interest must be a non-zero 32-bit mask")


def _check(app: str, type_: int, body: bytes) -> None:
    if not 0 < type_ <= 0xFFFFFFFF:
        raise UsageError(f"type {type_:#x} matches nothing: give a non-zero 32-bit type")
    if len(body) > p.MAX_MESSAGE_BODY:
        raise UsageError(f"a message body is at most {p.MAX_MESSAGE_BODY} bytes")
    if not app:
        raise UsageError("an application name is needed")


# --- through the host's socket ---------------------------------------------------


class SocketRegistration:
    def __init__(
        self, bus: SocketBus, ticket: str, app: str, interest: int, peer: str, held: str = ""
    ) -> None:
        self.bus = bus
        self.held = held
        self.ticket = ticket
        self.app = app
        self.interest = interest
        self.peer = peer
        # The host delivers no more than its credit untaken (one more place
        # for the error that ends the connection); a host going beyond it
        # is a protocol error.
        self.queue: asyncio.Queue[Message | FreightError] = asyncio.Queue(DELIVERY_CREDIT + 1)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            yield await self.get()

    async def get(self) -> Message:
        """The next message (it counts as taken once returned)."""
        if self.queue.empty() and self.bus.end.closed is not None:
            raise self.bus.end.closed
        item = await self.queue.get()
        if isinstance(item, FreightError):
            self.queue.put_nowait(item)  # every later get fails the same way
            raise item
        self.bus.end.taken(self.ticket, item.id)
        return item

    async def close(self) -> None:
        await self.bus.end.call(p.LUnregister(rid=self.bus._rid(), ticket=self.ticket))
        self.bus.regs.pop(self.ticket, None)


class SocketBus:
    """A connection to a host's ``msg.sock``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.hid = ""
        self.account = ""
        self.regs: dict[str, SocketRegistration] = {}
        self.end = LocalEnd(writer)  # writes, calls and their answers (msgcalls)
        self.tasks = Supervisor("msg-bus")
        self._rids = itertools.count(1)

    @classmethod
    async def open(cls, path: Path, client: str = "") -> SocketBus:
        reader, writer = await asyncio.open_unix_connection(str(path))
        bus = cls(reader, writer)
        greeted = False
        try:
            await bus._hello(client)
            greeted = True
        finally:
            if not greeted:
                writer.close()
        bus.tasks.spawn(bus._read(), name="reader", detached=True)
        bus.tasks.spawn(bus.end.expire(), name="deadlines", detached=True)
        return bus

    def _rid(self) -> str:
        return f"r{next(self._rids)}"

    async def _hello(self, client: str) -> None:
        self.decoder = p.LocalDecoder()
        await self.end.write(p.LHello(version=p.LOCAL_VERSION, client=client))
        async with asyncio.timeout(30):
            while (frame := self.decoder.next_frame()) is None:
                data = await self.reader.read(65536)
                if not data:
                    raise NetworkError("the host closed its messaging socket")
                self.decoder.feed(data)
        msg, _ = frame
        if isinstance(msg, p.LError):
            raise code_to_error(msg.code, msg.message, hint="")
        if not isinstance(msg, p.LWelcome):
            raise RemoteProtocolError(f"expected welcome, got {msg.__struct_config__.tag}")
        self.hid, self.account = msg.hid, msg.account

    async def _read(self) -> None:
        why: FreightError = NetworkError("the host closed its messaging socket")
        try:
            while data := await self.reader.read(65536):
                self.decoder.feed(data)
                for msg, body in self.decoder:
                    self._dispatch(msg, body)
        except ProtocolError as exc:
            why = exc
        except (ConnectionError, OSError) as exc:
            why = NetworkError(f"the host's messaging socket failed: {exc}")
        finally:
            self._fail(why)

    def _dispatch(self, msg: p.AnyLocal, body: bytes) -> None:
        if isinstance(msg, p.LDeliver) and not msg.rid:
            reg = self.regs.get(msg.ticket)
            if reg is not None:
                if reg.queue.full():
                    self._fail(RemoteProtocolError("the host delivered beyond its credit"))
                    return
                reg.queue.put_nowait(self._message(msg, body))
            return
        rid = getattr(msg, "rid", "")
        if not rid and isinstance(msg, p.LError):  # the host ends the connection
            self._fail(code_to_error(msg.code, msg.message, hint=""))
            return
        self.end.answer(rid, msg, body)

    def _message(self, msg: p.LDeliver, body: bytes) -> Message:
        return Message(
            id=msg.id,
            ticket=msg.ticket,
            frm=msg.frm,
            account=msg.account,
            app=msg.app,
            type=msg.type,
            from_ticket=msg.from_ticket,
            reply_to=msg.reply_to,
            body=body,
            bus=self,
        )

    def _fail(self, exc: FreightError) -> None:
        closed = self.end.fail(exc)
        for reg in self.regs.values():
            if not reg.queue.full():  # a full one ends in the error once drained
                reg.queue.put_nowait(closed)

    async def register(self, app: str, *, interest: int, peer: str = "*") -> SocketRegistration:
        _check_interest(interest)
        msg = p.LRegister(rid=self._rid(), app=app, interest=interest, peer=peer)
        answer, _ = await self.end.call(msg)
        assert isinstance(answer, p.LRegistered)
        reg = SocketRegistration(self, answer.ticket, app, interest, peer, answer.held)
        self.regs[reg.ticket] = reg
        return reg

    async def send(
        self,
        dest: str,
        app: str,
        *,
        type: int,
        body: bytes,
        ticket: str = "",
        from_ticket: str = "",
        reply_to: str = "",
        timeout: float = 30.0,
        wait: bool = True,
    ) -> int:
        _check(app, type, body)
        msg = p.LSend(
            rid=self._rid(),
            dest=dest,
            app=app,
            type=type,
            ticket=ticket,
            from_ticket=from_ticket,
            reply_to=reply_to,
            timeout=timeout,
            wait=wait,
            len=len(body),
        )
        try:
            answer, _ = await self.end.call(msg, body, timeout + ANSWER_GRACE)
        except TimeoutError:
            return outcome(0, "timeout", f"no answer within {timeout:g} s")
        assert isinstance(answer, p.LResult)
        if not wait and answer.reason == p.SPOOLED:
            return 0
        return outcome(answer.count, answer.reason, answer.message)

    async def request(
        self, dest: str, app: str, *, type: int, body: bytes, timeout: float = 5.0
    ) -> Message:
        _check(app, type, body)
        msg = p.LRequest(
            rid=self._rid(), dest=dest, app=app, type=type, timeout=timeout, len=len(body)
        )
        try:
            answer, payload = await self.end.call(msg, body, timeout + ANSWER_GRACE)
        except TimeoutError:
            raise TimeoutError(f"no reply within {timeout:g} s") from None
        if isinstance(answer, p.LResult):
            if answer.reason == "timeout":
                raise TimeoutError(answer.message or f"no reply within {timeout:g} s")
            outcome(0, answer.reason, answer.message)
        assert isinstance(answer, p.LDeliver)
        return self._message(answer, payload)

    async def apps(self) -> dict[str, Any]:
        answer, _ = await self.end.call(p.LApps(rid=self._rid()))
        assert isinstance(answer, p.LAppsList)
        apps = [
            {"ticket": a.ticket, "app": a.app, "interest": a.interest, "peer": a.peer,
             "held": a.held} | dict(a.stats)
            for a in answer.apps
        ]  # fmt: skip
        return {"hid": self.hid, "apps": apps, "counters": dict(answer.counters)}

    async def aclose(self) -> None:
        await self.end.flush()  # what was taken still counts
        self._fail(NetworkError("this messaging connection is closed"))
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        await self.tasks.aclose()


# --- in this process: the program is its own host --------------------------------


class HostRegistration:
    def __init__(self, bus: HostBus, reg: Any) -> None:
        self.bus = bus
        self.reg = reg
        self.ticket: str = reg.ticket
        self.app: str = reg.app
        self.interest: int = reg.interest
        self.peer: str = reg.peer

    @property
    def held(self) -> str:
        return str(self.bus.host.held.get(self.app, ""))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            yield await self.get()

    async def get(self) -> Message:
        delivery = await self.reg.get()
        self.reg.taken(delivery)
        return self.bus._message(delivery)

    async def close(self) -> None:
        self.bus.host.unregister(self.ticket)


class HostBus:
    """An in-process MessageHost on its own attachment to the hub."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.hid: str = host.hid

    def _message(self, d: Any) -> Message:
        return Message(
            id=d.id,
            ticket=d.ticket,
            frm=d.frm,
            account=d.account,
            app=d.app,
            type=d.type,
            from_ticket=d.from_ticket,
            reply_to=d.reply_to,
            body=d.body,
            bus=self,
        )

    async def register(self, app: str, *, interest: int, peer: str = "*") -> HostRegistration:
        _check_interest(interest)
        reg = HostRegistration(self, self.host.register(app, interest, peer=peer, owner=self))
        await announced(self.host)
        return reg

    async def send(
        self,
        dest: str,
        app: str,
        *,
        type: int,
        body: bytes,
        ticket: str = "",
        from_ticket: str = "",
        reply_to: str = "",
        timeout: float = 30.0,
        wait: bool = True,
    ) -> int:
        _check(app, type, body)
        result = await self.host.send(
            dest,
            app,
            type,
            body,
            ticket=ticket,
            from_ticket=from_ticket,
            reply_to=reply_to,
            timeout=timeout,
            wait=wait,
        )
        if not wait:
            return 0
        return outcome(result.count, result.reason, result.message)

    async def request(
        self, dest: str, app: str, *, type: int, body: bytes, timeout: float = 5.0
    ) -> Message:
        _check(app, type, body)
        return self._message(await self.host.request(dest, app, type, body, timeout=timeout))

    async def apps(self) -> dict[str, Any]:
        return {"hid": self.hid, "apps": self.host.apps(), "counters": self.host.counters()}


def host_socket(root: Path | None = None) -> Path | None:
    """The socket of a host serving config folder ``root`` (default: this
    user's), if one answers there."""
    from .client.msglocal import _answers

    path = socket_path(root or ClientConfig().root)
    return path if path.exists() and _answers(path) else None


@asynccontextmanager
async def connect(
    hub: str | None = None,
    *,
    config_dir: Path | None = None,
    transport: str = "auto",
    own_host: bool = True,
) -> AsyncIterator[Bus]:
    """A connection to this user's messaging host (see the module docstring).
    ``own_host=False`` insists on a running host's socket."""
    config = ClientConfig(config_dir)
    path = host_socket(config.root)
    if path is not None:
        bus = await SocketBus.open(path)
        try:
            yield bus
        finally:
            await bus.aclose()
        return
    if not own_host:
        raise NetworkError(
            f"no messaging host answers at {socket_path(config.root)}",
            hint="start one with: freight daemon",
        )
    from .client.msghost import MessageHost
    from .client.msglocal import MessageSocket
    from .client.relay import RelayClient
    from .client.session import HubSession

    relay = RelayClient(
        HubSession.from_config(config, hub), config, transport=transport, data_path="tls"
    )
    async with relay:
        host = MessageHost(relay, config)
        # While this program is the host it serves the socket too: another
        # program of this user then goes through it instead of announcing
        # the same host id (which would take this one's place at the hub).
        server = MessageSocket(host, config.root)
        shared: Path | None = None
        try:
            server.bind()
        except UsageError:  # another program became the host meanwhile
            shared = host_socket(config.root)
            if shared is None:
                raise
        if shared is not None:
            bus = await SocketBus.open(shared)
            try:
                yield bus
            finally:
                await bus.aclose()
            return
        try:
            await relay.start()
            await host.start()
            await server.start()
            yield HostBus(host)
        finally:
            await server.aclose()
            await host.aclose()
