"""The messages of the agents' file manager (``freight ls|cp AGENT:PATH``,
docs/protocol.md §13.3), typed and checked on decoding.

The admin's end opens a relayed connection to the agent (application
``freight.files``) and sends one request; the agent answers, then ``get``
and ``put`` go on with the send/receive messages of :mod:`.sendrecv`:

* ``Q`` admin → agent: :class:`Request` (JSON).
* ``A`` agent → admin: :class:`Answer` (JSON): ``{"ok": true}`` before a
  copy, one :class:`Listing` page per message for ``ls`` (until one whose
  ``next`` is null), or a :class:`Refusal` ``{"ok": false, "code", "error"}``.

Anything a peer sends that does not fit these types raises
:class:`MalformedFileMessage`, never a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import RemoteProtocolError
from .limits import MAX_TEXT_CHARS
from .sendrecv import MAX_MTIME, MAX_PATH_CHARS

APP: Final = "freight.files"
OPS: Final = ("ls", "get", "put")
# A page of a listing is at most 1 MiB of JSON (LS_PAGE_BYTES of the agent);
# an entry takes more than 16 bytes of it.
MAX_PAGE_ENTRIES: Final = 65_536
MAX_COUNT: Final = 1 << 31

Path = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_PATH_CHARS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Size = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Mode = Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
Mtime = Annotated[float, msgspec.Meta(ge=-MAX_MTIME, le=MAX_MTIME)]
Code = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[a-z0-9_]*$")]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]


class MalformedFileMessage(RemoteProtocolError):
    """The other end sent a file-manager message that does not fit the protocol."""

    code = "malformed_file_message"


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """``Q``: what the admin asks. ``path`` is absolute; ``recursive``
    (get) copies folders; ``overwrite`` (put) asks to replace files."""

    op: Literal["ls", "get", "put"]
    path: Path
    recursive: bool = False
    overwrite: bool = False


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a listing (``name`` is a root's whole path when the
    roots themselves are listed)."""

    name: Name
    type: Literal["file", "dir", "link"]
    size: Size = 0
    mtime: Mtime = 0.0
    mode: Mode = 0


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a folder (the result of a ``list_dir`` command): the
    entries from ``offset`` on; ``next`` is where the following page
    starts, None on the last; ``total`` counts them all."""

    path: Name
    entries: Annotated[list[Entry], msgspec.Meta(max_length=MAX_PAGE_ENTRIES)]
    total: Count
    offset: Count
    next: Count | None


class Listing(Page, frozen=True, kw_only=True):
    """``A`` for ``ls``: one :class:`Page`."""

    ok: bool = True


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    """``A`` before a copy: the send/receive messages follow."""

    ok: bool = True


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """``A``: the request is refused; ``code`` is a stable error code."""

    ok: bool = False
    code: Code
    error: Text


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """Any ``A`` as decoded: the fields of :class:`Listing`,
    :class:`Ready` and :class:`Refusal` (those of the others at their
    defaults)."""

    ok: bool
    code: Code = ""
    error: Text = ""
    path: Name = ""
    entries: Annotated[list[Entry], msgspec.Meta(max_length=MAX_PAGE_ENTRIES)] = []
    total: Count = 0
    offset: Count = 0
    next: Count | None = None


_ENCODER: Final = msgspec.json.Encoder()
_REQUEST: Final = msgspec.json.Decoder(Request)
_ANSWER: Final = msgspec.json.Decoder(Answer)


def encode_request(request: Request) -> bytes:
    return b"Q" + _ENCODER.encode(request)


def encode_answer(answer: Listing | Ready | Refusal) -> bytes:
    return b"A" + _ENCODER.encode(answer)


def _decode(data: bytes, tag: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    if data[:1] != tag:
        raise MalformedFileMessage(
            f"expected a file-manager message {tag.decode()!r}, got {bytes(data[:1])!r}"
        )
    try:
        return decoder.decode(data[1:])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedFileMessage(f"malformed {tag.decode()!r} message: {exc}") from None


def decode_request(data: bytes) -> Request:
    request: Request = _decode(data, b"Q", _REQUEST)
    return request


def decode_answer(data: bytes) -> Answer:
    """Any ``A`` message; an ``ok`` one without a listing's fields is a
    :class:`Ready`, and a refusal carries a ``code``."""
    answer: Answer = _decode(data, b"A", _ANSWER)
    if not answer.ok and not answer.code:
        raise MalformedFileMessage("a refusal without an error code")
    return answer


def entry_size(entry: Entry) -> int:
    """The characters ``entry`` takes in a listing's JSON (with its comma),
    non-ASCII written as six-character ``\\u`` escapes, as a command result carries it."""
    return len(json.dumps(msgspec.to_builtins(entry), separators=(",", ":"))) + 1
