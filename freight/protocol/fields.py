"""The constrained field types shared by the frames of the wire protocol
(:mod:`.messages`, :mod:`.msgframes`) and of the local messaging socket
(:mod:`.msglocal`), and the base of the wire protocol's messages."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .limits import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Id = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_.:-]+$")
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Hex = Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[0-9a-f]*$")]
Seconds = Annotated[float, msgspec.Meta(ge=0)]

APP_NAME: Final = r"[A-Za-z0-9_.:-]+"
App = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=f"^{APP_NAME}$")]
AppLen = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # pattern: APP_NAME
Peer = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Message(msgspec.Struct, tag_field="t", kw_only=True, frozen=True):
    """Base of all messages. ``len`` counts payload bytes after the header."""

    len: NonNeg = 0
