"""What applications see of a messaging host: deliveries, send results
and their errors, registrations with their bounded queues, and the host key
(``msg.key``)."""

from __future__ import annotations

import asyncio
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import (
    Busy,
    ConnectionEnded,
    Forbidden,
    FreightError,
    IntegrityError,
    NoRecipient,
    PeerAbsent,
    RemoteError,
    UsageError,
)
from ..protocol.msgseal import MAX_MESSAGE_BODY
from ..protocol.msgtables import Reg
from .config import ClientConfig

__all__ = ["Delivery", "Registration", "SendResult", "load_host_key", "result_error"]

ALL_TYPES: Final = 0xFFFFFFFF
_TICKET: Final = re.compile(r"([0-9a-f]{32}\.[0-9a-f]{1,16})?")
_MSG_ID: Final = re.compile(r"([0-9a-f]{32})?")
_APP: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII)  # fields.APP_NAME, 1 to 64
QUEUE_MESSAGES: Final = 4096  # per registration, given out and not taken included
QUEUE_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message as an application receives it."""

    id: str
    ticket: str
    frm: str
    account: str
    app: str
    type: int
    from_ticket: str
    reply_to: str
    body: bytes


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of a message: ``count`` recipients took it, or none and
    ``reason`` (see docs/protocol.md "Messaging")."""

    id: str
    count: int
    reason: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.count > 0


REASON_TEXT: Final = {
    "no_host": "no such host is attached",
    "no_app": "no application of that name is registered there",
    "no_interest": "no registered interest matches the message type",
    "ticket_gone": "the ticket names no registration any more",
    "forbidden": "the recipients do not take messages from this account",
    "busy": "the recipients' queues stayed full",
    "retry": "the recipients could not be reached in time",
    "too_large": f"a message body has at most {MAX_MESSAGE_BODY} bytes",
    "bad_seal": "the receiving host could not open the message",
    "not_host": "the hub does not know this host yet",
    "timeout": "no answer within the timeout",
}


def result_error(res: SendResult) -> FreightError:
    """The error a failed send stands for."""
    text = res.message or REASON_TEXT.get(res.reason, res.reason or "not delivered")
    if res.reason == "busy":
        return Busy(text)
    if res.reason == "forbidden":
        return Forbidden(text)
    if res.reason == "bad_seal":
        return IntegrityError(text)
    if res.reason in ("timeout", "retry"):
        return PeerAbsent(text)
    if res.reason == "too_large":
        return UsageError(text)
    if res.reason in ("no_host", "no_app", "no_interest", "ticket_gone"):
        return NoRecipient(text, reason=res.reason)
    return RemoteError(f"{text} [{res.reason}]")


class Registration:
    """A registration made by :meth:`MessageHost.register`: its queue of
    deliveries (bounded: messages given out and not taken count too)."""

    def __init__(self, reg: Reg, on_taken: Callable[[Delivery, Registration], bool]) -> None:
        self._reg, self._on_taken = reg, on_taken
        self._queue: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self.outstanding = 0  # queued or given out, not taken
        self.bytes = 0
        self.closed = False
        self.delivered = self.deduplicated = self.refused_busy = 0
        self.on_offer: Callable[[], None] | None = None  # told of each message queued

    @property
    def ticket(self) -> str:
        return self._reg.ticket

    @property
    def app(self) -> str:
        return self._reg.app

    @property
    def interest(self) -> int:
        return self._reg.interest

    @property
    def peer(self) -> str:
        return self._reg.peer

    def offer(self, d: Delivery) -> bool:
        full = self.outstanding >= QUEUE_MESSAGES or self.bytes + len(d.body) > QUEUE_BYTES
        if full and self.outstanding:  # an empty queue takes even the largest body
            self.refused_busy += 1
            return False
        self._queue.append(d)
        self.outstanding += 1
        self.bytes += len(d.body)
        self._ready.set()
        if self.on_offer is not None:
            self.on_offer()
        return True

    async def get(self) -> Delivery:
        """The next message (waits for one)."""
        while not self._queue:
            if self.closed:
                raise ConnectionEnded(f"registration {self.ticket} was removed")
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def taken(self, delivery: Delivery) -> None:
        """The consumer has ``delivery``: it counts toward the answer."""
        if self.outstanding <= 0:
            return
        if self._on_taken(delivery, self):
            self.outstanding -= 1
            self.bytes -= len(delivery.body)
            self.delivered += 1

    def _close(self) -> list[Delivery]:
        self.closed = True
        self._ready.set()
        left = list(self._queue)
        self._queue.clear()
        return left

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queue),
            "delivered": self.delivered,
            "deduplicated": self.deduplicated,
            "refused_busy": self.refused_busy,
        }


def load_host_key(config: ClientConfig) -> X25519PrivateKey:
    """This host's X25519 key (``msg.key``, 0600), created on first use."""
    path = config.root / "msg.key"
    try:
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        pass
    except ValueError:
        raise UsageError(f"{path} is damaged; delete it (the host gets a new id)") from None
    key = X25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes_raw().hex() + "\n")
    return key


def check_app(app: str) -> None:
    if _APP.fullmatch(app) is None:
        raise UsageError(f"an application name has 1 to 64 of A-Z a-z 0-9 _ . : -, not {app!r}")


def check_message(
    dest: str, app: str, type: int, body: bytes, ticket: str, from_ticket: str, reply_to: str
) -> None:
    """A message a host may spool, or the :class:`UsageError` saying why not."""
    check_app(app)
    if not 0 < type <= ALL_TYPES:
        raise UsageError(f"a message type is a 32-bit number other than 0, not {type:#x}")
    if len(body) > MAX_MESSAGE_BODY:
        raise UsageError(f"a message body has at most {MAX_MESSAGE_BODY} bytes")
    if not dest or len(dest) > 70:
        raise UsageError("a destination is an account name, '*' or host:ID")
    for name, value in (("ticket", ticket), ("from_ticket", from_ticket)):
        if value and not _TICKET.fullmatch(value):
            raise UsageError(f"{name} {value!r} is not a ticket (HOSTID.NUMBER)")
    if reply_to and not _MSG_ID.fullmatch(reply_to):
        raise UsageError(f"reply_to {reply_to!r} is not a message id")
