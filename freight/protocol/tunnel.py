"""TCP (and, later, UDP) tunnels through the hub, sans-I/O (docs/protocol.md §18).

A tunnel connection is one relayed connection (§12) per accepted local
connection: the relay already gives each one its end-to-end keys, its
credit window, both half-closes and its resending after a re-attach. What
this module adds is what a tunnel needs on top:

* the *application name* of a tunnel connection, ``tunnel.TAG.PROTO:SERVICE``
  (``TAG``: 8 hex digits, unique per connection, so that any number of
  connections of one pair exist at once; ``PROTO``: ``tcp`` or ``udp``;
  ``SERVICE``: ``HOST:PORT`` on an agent, or a ``NAME`` a user exposed), and
  the listener it reaches: ``tunnel`` (an agent) or ``tunnel:NAME``;
* targets (``HOST:PORT``, ``[V6]:PORT``, ``udp/HOST:PORT``), local bind
  addresses (``[BIND:]PORT``) and destinations (``DEST:TARGET``);
* an agent's allow list (the targets it forwards to);
* the two records that open a stream, :class:`OpenRequest` (dialling end,
  first message) and :class:`OpenAnswer` (accepting end, first message),
  with strict decoding: anything else raises :class:`MalformedTunnelMessage`;
* :class:`TunnelStream`, the life of one stream (opening, both half-closes,
  refusal) as a transition table.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Final

import msgspec

from .errors import RemoteProtocolError

__all__ = [
    "AGENT_APP",
    "EXPOSE_PREFIX",
    "MAX_OPEN_BYTES",
    "TUNNEL_PREFIX",
    "AllowList",
    "Destination",
    "Ev",
    "MalformedTunnelMessage",
    "OpenAnswer",
    "OpenRequest",
    "St",
    "Target",
    "TunnelApp",
    "TunnelStream",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "listen_app",
    "new_tunnel_app",
    "parse_app",
    "parse_bind",
    "parse_destination",
    "parse_name",
    "parse_target",
]

TUNNEL_PREFIX: Final = "tunnel."  # a tunnel connection's application
AGENT_APP: Final = "tunnel"  # what an agent listens for: forwards to HOST:PORT
EXPOSE_PREFIX: Final = "tunnel:"  # what ``expose NAME`` listens for
MAX_APP: Final = 64  # the relay's limit on an application name
MAX_OPEN_BYTES: Final = 1024  # an OpenRequest / OpenAnswer record, at most
MAX_NAME: Final = 32
MAX_HOST: Final = 40  # what fits the application name beside tag and port
PROTOS: Final = ("tcp", "udp")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,38}[A-Za-z0-9])?$")
_APP_RE = re.compile(r"^tunnel\.([0-9a-f]{8})\.(tcp|udp):(.+)$")

REQUEST_TAG: Final = b"O"
ANSWER_TAG: Final = b"A"


class MalformedTunnelMessage(RemoteProtocolError):
    """A tunnel record or application name that does not parse."""

    code = "malformed_tunnel"


# --- names, targets, destinations ------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where an agent connects: ``host`` (a name or an address, no brackets)
    and ``port``; ``udp`` for datagrams."""

    host: str
    port: int
    udp: bool = False

    @property
    def service(self) -> str:
        """``HOST:PORT`` as it goes in an application name."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'udp/' if self.udp else ''}{host}:{self.port}"


def _port(text: str, what: str, low: int = 1) -> int:
    if not text.isdigit() or len(text) > 5 or not low <= int(text) < 65536:
        raise ValueError(f"{what}: {text!r} is not a port (1-65535)")
    return int(text)


def _host(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST_RE.match(text) or ".." in text or text.replace(".", "").isdigit():
        raise ValueError(f"{what}: {text!r} is not a host name or address")
    return text.lower()


def parse_target(text: str, *, what: str = "target") -> Target:
    """``HOST:PORT``, ``[V6]:PORT`` or ``udp/HOST:PORT`` (``tcp/`` allowed).
    Raises ValueError with a message that names ``what``."""
    udp = False
    for proto in PROTOS:
        if text.startswith(proto + "/"):
            udp, text = proto == "udp", text[len(proto) + 1 :]
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{what}: {text!r} is not [ADDRESS]:PORT")
        host = str(ipaddress.IPv6Address(host)) if _is_v6(host) else ""
        if not host:
            raise ValueError(f"{what}: {text!r} is not an IPv6 address")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{what}: {text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{what}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    target = Target(_host(host, what), _port(port, what), udp)
    if len(target.host) > MAX_HOST:
        raise ValueError(
            f"{what}: host names longer than {MAX_HOST} characters cannot be tunnelled"
        )
    return target


def _is_v6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_name(text: str) -> str:
    """An exposed name: letters, digits, ``_ . -``, 1-32, not starting with
    ``.`` or ``-``."""
    if not _NAME_RE.match(text):
        raise ValueError(
            f"{text!r} is not a tunnel name (1-{MAX_NAME} letters, digits, '_', '.', '-')"
        )
    return text


def parse_bind(text: str) -> tuple[str, int]:
    """``[BIND:]PORT`` as ``ssh -L`` takes it; the address defaults to
    127.0.0.1 (never every interface unless asked: ``0.0.0.0:PORT``)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return "127.0.0.1", _port(text, "local port", 0)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host in ("", "*"):
        host = "0.0.0.0"
    if host != "localhost":
        _host(host, "bind address")
    return host, _port(port, "local port", 0)


@dataclass(frozen=True)
class Destination:
    """``DEST:TARGET``: an account (an agent or a user) and either a target
    on an agent or a name that user exposed."""

    peer: str
    target: Target | None = None
    name: str = ""

    @property
    def service(self) -> str:
        return self.target.service if self.target is not None else self.name

    @property
    def udp(self) -> bool:
        return self.target is not None and self.target.udp

    def __str__(self) -> str:
        return f"{self.peer}:{self.target if self.target is not None else self.name}"


def parse_destination(text: str) -> Destination:
    """``lab-pc-7:127.0.0.1:5432``, ``lab:[::1]:22``, ``lab:udp/127.0.0.1:53``
    (an agent's target) or ``alice:web`` (a name alice exposed)."""
    peer, sep, rest = text.partition(":")
    if not sep or not peer or not rest:
        raise ValueError(f"{text!r} is not DEST:HOST:PORT or DEST:NAME")
    if ":" in rest or "/" in rest:
        return Destination(peer, target=parse_target(rest))
    return Destination(peer, name=parse_name(rest))


# --- application names -----------------------------------------------------------


@dataclass(frozen=True)
class TunnelApp:
    """A tunnel connection's application name, parsed."""

    tag: str
    udp: bool
    service: str  # HOST:PORT or NAME

    @property
    def name(self) -> str:
        """The exposed name, or "" for an agent's target."""
        return "" if ":" in self.service else self.service

    @property
    def target(self) -> Target | None:
        if not self.name:
            return parse_target(("udp/" if self.udp else "") + _bracket(self.service))
        return None

    @property
    def app(self) -> str:
        return f"{TUNNEL_PREFIX}{self.tag}.{'udp' if self.udp else 'tcp'}:{self.service}"


def _bracket(service: str) -> str:
    host, _, port = service.rpartition(":")
    return f"[{host}]:{port}" if ":" in host else service


def new_tunnel_app(dest: Destination) -> str:
    """A fresh application name for one connection to ``dest``."""
    app = TunnelApp(secrets.token_hex(4), dest.udp, dest.service).app
    if len(app) > MAX_APP:
        raise ValueError(f"{dest} is too long to tunnel to")
    return app


def parse_app(app: str) -> TunnelApp | None:
    """The tunnel connection ``app`` names; None if it is not a tunnel's;
    MalformedTunnelMessage if it claims to be one and does not parse."""
    if not app.startswith(TUNNEL_PREFIX):
        return None
    match = _APP_RE.match(app)
    if match is None:
        raise MalformedTunnelMessage(f"{app!r} is not a tunnel application name")
    tag, proto, service = match.groups()
    parsed = TunnelApp(tag, proto == "udp", service)
    try:
        if parsed.name:
            parse_name(service)
        else:
            target = parsed.target
            assert target is not None
            if target.service != service:  # not in its normal form
                raise ValueError(service)
    except ValueError:
        raise MalformedTunnelMessage(f"{app!r} names no valid tunnel target") from None
    return parsed


def listen_app(app: str) -> str:
    """The listener a dial for ``app`` reaches: ``app`` itself, except for a
    tunnel connection: ``tunnel`` (an agent's targets) or ``tunnel:NAME``.
    A malformed tunnel name reaches nobody (``tunnel.``: never listened for)."""
    if not app.startswith(TUNNEL_PREFIX):
        return app
    match = _APP_RE.match(app)
    if match is None:
        return TUNNEL_PREFIX
    service = match.group(3)
    return AGENT_APP if ":" in service else EXPOSE_PREFIX + service


# --- the allow list ----------------------------------------------------------------


class AllowList:
    """The targets an agent forwards to. Entries: ``HOST:PORT``,
    ``[V6]:PORT``, ``udp/HOST:PORT``; a port ``*`` allows every port of a host."""

    MAX_ENTRIES: Final = 256

    def __init__(self, entries: list[str] | tuple[str, ...] = ()) -> None:
        if len(entries) > self.MAX_ENTRIES:
            raise ValueError(f"at most {self.MAX_ENTRIES} forward targets may be allowed")
        self.exact: set[Target] = set()
        self.any_port: set[tuple[str, bool]] = set()
        for entry in entries:
            self.add(entry)

    def add(self, entry: str) -> str:
        """Add one entry; returns it in its normal form."""
        text = entry.strip()
        if text.endswith(":*"):
            target = parse_target(text[:-2] + ":1", what="--allow-forward")
            self.any_port.add((target.host, target.udp))
            return str(target)[:-2] + ":*"
        target = parse_target(text, what="--allow-forward")
        self.exact.add(target)
        return str(target)

    def allows(self, target: Target) -> bool:
        return target in self.exact or (target.host, target.udp) in self.any_port

    def entries(self) -> list[str]:
        out = [str(t) for t in self.exact]
        out += [str(Target(h, 1, u))[:-2] + ":*" for h, u in self.any_port]
        return sorted(out)

    def __bool__(self) -> bool:
        return bool(self.exact or self.any_port)


# --- the open records ----------------------------------------------------------------


class OpenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The dialling end's first message: what it wants to reach. ``service``
    repeats the application's (the accepting end checks they agree);
    ``udp`` selects the datagram framing (§19) on this stream."""

    v: int = 1
    service: str
    udp: bool = False


class OpenAnswer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The accepting end's first message: connected, or why not
    (``code``: ``forbidden``, ``unreachable``, ``busy``, ``malformed``)."""

    ok: bool
    code: str = ""
    message: str = ""


_REQ_DECODER = msgspec.json.Decoder(OpenRequest)
_ANS_DECODER = msgspec.json.Decoder(OpenAnswer)
ANSWER_CODES: Final = ("forbidden", "unreachable", "busy", "malformed", "")


def encode_request(req: OpenRequest) -> bytes:
    return REQUEST_TAG + msgspec.json.encode(req)


def encode_answer(ans: OpenAnswer) -> bytes:
    short = OpenAnswer(ok=ans.ok, code=ans.code, message=ans.message[:400])
    return ANSWER_TAG + msgspec.json.encode(short)


def _check_tag(data: bytes, tag: bytes, what: str) -> bytes:
    if len(data) > MAX_OPEN_BYTES or data[:1] != tag:
        raise MalformedTunnelMessage(f"the tunnel's {what} is malformed")
    return data[1:]


def decode_request(data: bytes) -> OpenRequest:
    try:
        req = _REQ_DECODER.decode(_check_tag(data, REQUEST_TAG, "open request"))
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise MalformedTunnelMessage("the tunnel's open request is malformed") from None
    if req.v != 1 or not 0 < len(req.service) <= MAX_APP:
        raise MalformedTunnelMessage("the tunnel's open request is malformed")
    return req


def decode_answer(data: bytes) -> OpenAnswer:
    try:
        ans = _ANS_DECODER.decode(_check_tag(data, ANSWER_TAG, "open answer"))
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise MalformedTunnelMessage("the tunnel's open answer is malformed") from None
    if ans.code not in ANSWER_CODES or len(ans.message) > 400 or ans.ok == bool(ans.code):
        raise MalformedTunnelMessage("the tunnel's open answer is malformed")
    return ans


# --- one stream's life -----------------------------------------------------------------


class St(enum.Enum):
    OPENING = "opening"  # the request went (or came); no answer yet
    OPEN = "open"
    LOCAL_EOF = "local_eof"  # our side's reader reached EOF and said so
    REMOTE_EOF = "remote_eof"  # the far side said EOF; we still send
    DONE = "done"  # both directions finished
    REFUSED = "refused"  # answered with an error
    CLOSED = "closed"  # reset, killed, or the relay connection ended
    ERROR = "error"


class Ev(enum.Enum):
    ANSWER_OK = "answer_ok"
    ANSWER_REFUSED = "answer_refused"
    LOCAL_EOF = "local_eof"
    REMOTE_EOF = "remote_eof"
    DATA_IN = "data_in"  # bytes from the far side
    DATA_OUT = "data_out"  # bytes towards the far side
    RESET = "reset"


_T: dict[tuple[St, Ev], St] = {
    (St.OPENING, Ev.ANSWER_OK): St.OPEN,
    (St.OPENING, Ev.ANSWER_REFUSED): St.REFUSED,
    (St.OPENING, Ev.DATA_OUT): St.OPENING,  # sent optimistically, behind the request
    (St.OPENING, Ev.LOCAL_EOF): St.OPENING,  # remembered: applied once open
    (St.OPEN, Ev.DATA_IN): St.OPEN,
    (St.OPEN, Ev.DATA_OUT): St.OPEN,
    (St.OPEN, Ev.LOCAL_EOF): St.LOCAL_EOF,
    (St.OPEN, Ev.REMOTE_EOF): St.REMOTE_EOF,
    (St.LOCAL_EOF, Ev.DATA_IN): St.LOCAL_EOF,
    (St.LOCAL_EOF, Ev.REMOTE_EOF): St.DONE,
    (St.REMOTE_EOF, Ev.DATA_OUT): St.REMOTE_EOF,
    (St.REMOTE_EOF, Ev.LOCAL_EOF): St.DONE,
}


class TunnelStream:
    """One tunnelled connection's state (``(state, event) -> state``). Any
    event not in the table is a protocol error: the stream goes to ERROR and
    stays there. RESET ends it from any state."""

    def __init__(self) -> None:
        self.state = St.OPENING
        self.eof_pending = False  # our EOF came before the answer
        self.bytes_in = 0
        self.bytes_out = 0

    def feed(self, ev: Ev, size: int = 0) -> St:
        if ev is Ev.RESET:
            if self.state is not St.ERROR:
                self.state = St.CLOSED
            return self.state
        nxt = _T.get((self.state, ev))
        if nxt is None:
            self.state = St.ERROR
            raise MalformedTunnelMessage(f"tunnel stream: {ev.value} in state {self.state.value}")
        if ev is Ev.DATA_IN:
            self.bytes_in += size
        elif ev is Ev.DATA_OUT:
            self.bytes_out += size
        elif ev is Ev.LOCAL_EOF and self.state is St.OPENING:
            self.eof_pending = True
        elif ev is Ev.ANSWER_OK and self.eof_pending:
            self.eof_pending = False
            self.state = St.LOCAL_EOF
            return self.state
        self.state = nxt
        return nxt

    @property
    def finished(self) -> bool:
        return self.state in (St.DONE, St.REFUSED, St.CLOSED, St.ERROR)
