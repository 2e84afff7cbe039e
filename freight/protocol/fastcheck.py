"""The text patterns of a frame's fields checked in one regular expression.

msgspec checks a ``Meta(pattern=...)`` field by calling its compiled pattern,
about 0.4 µs a field: two thirds of decoding a messaging frame (a delivery
has seven such fields), paid at every hop of every message. The frames sent
once per message (messaging's send, delivery and result, and the local
socket's send, result, delivery and taken) declare those fields as plain
``str`` (their lengths still checked by msgspec) and their patterns here:

    patterns(MsgSend, {"id": HEX32, "to": HEX32, ...})

:func:`.frames.header_parser` checks them right after decoding, so a frame
that fails is refused like any malformed header, naming the field. (As for
every frame, building one in code checks nothing.)

The patterns of a type are joined by NUL, which none of them may match, into
one expression matched against the field values joined by NUL; only when
that fails is each field tried alone, to name the one at fault. A field that
is a list of strings matches when every item does.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, Final

SEP: Final = "\x00"


class _Plan:
    __slots__ = ("fields", "get", "lists", "one", "singles")

    def __init__(self, fields: dict[str, str], lists: frozenset[str]) -> None:
        self.fields = tuple(fields)
        getter = operator.attrgetter(*self.fields)
        self.get: Callable[[Any], tuple[Any, ...]] = (
            getter if len(self.fields) > 1 else lambda obj: (getter(obj),)
        )
        self.lists = lists
        parts = []
        for name, pat in fields.items():
            if re.fullmatch(pat, SEP) is not None:
                raise ValueError(f"the pattern of {name} matches the separator")
            parts.append(f"(?:{pat})(?:{SEP}(?:{pat}))*" if name in lists else f"(?:{pat})")
        self.one = re.compile(SEP.join(parts), re.ASCII)
        self.singles = {name: re.compile(pat, re.ASCII) for name, pat in fields.items()}


PLANS: dict[type, _Plan] = {}


def patterns(cls: type, fields: dict[str, str], lists: tuple[str, ...] = ()) -> None:
    """Declare the patterns (matched whole) of ``cls``'s text fields; the
    fields named in ``lists`` are lists of such strings (at least one)."""
    PLANS[cls] = _Plan(fields, frozenset(lists))


class PatternMismatch(ValueError):
    """A field's text does not match its pattern."""


def check(obj: object) -> None:
    """Raise :class:`PatternMismatch` naming the first field of ``obj``
    whose text does not match its pattern."""
    plan = PLANS[type(obj)]
    values = plan.get(obj)
    if plan.lists:
        values = tuple(
            _joined(v) if n in plan.lists else v for n, v in zip(plan.fields, values, strict=True)
        )
    if plan.one.fullmatch(SEP.join(values)) is not None:
        return
    for name, value in zip(plan.fields, plan.get(obj), strict=True):
        pat = plan.singles[name]
        for item in value if name in plan.lists else (value,):
            if pat.fullmatch(item) is None:
                raise PatternMismatch(
                    f"Expected `str` matching regex {pat.pattern!r} - at `$.{name}`"
                )
    raise PatternMismatch("a list that needs one item at least is empty")


def _joined(items: list[str]) -> str:
    """The items joined by NUL, or a string no pattern matches when one of
    them holds a NUL itself (it would pass for two)."""
    text = SEP.join(items)
    return text if text.count(SEP) == len(items) - 1 else SEP
