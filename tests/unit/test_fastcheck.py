"""The patterns the per-message frames check in one expression
(freight/protocol/fastcheck.py) decide as each field's own pattern would,
they are the patterns the other frames declare, and a frame refused by them
is a protocol error naming the field."""

from __future__ import annotations

import re
import typing

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.protocol import fields, msgframes
from freight.protocol import messages as m
from freight.protocol import msglocal as p
from freight.protocol.errors import RemoteProtocolError
from freight.protocol.fastcheck import PLANS, PatternMismatch, check, patterns
from freight.protocol.frames import parse_header

HID, MID = "a" * 32, "b" * 32
TICKET = HID + ".1f"
CHECKED = [m.MsgSend, m.MsgDeliver, m.MsgResult, p.LSend, p.LResult, p.LDeliver, p.LTaken]

# Texts near the patterns' edges: ids, tickets, names, NULs and controls.
piece = st.sampled_from(["", HID, MID, TICKET, "a", "A", ".", "x y", "\x00", "\x07", "é", "1", "_"])
text = st.lists(piece, max_size=3).map("".join)


def reference(cls: type, obj: object) -> bool:
    """Whether every field matches its own pattern, one by one."""
    plan = PLANS[cls]
    for name in plan.fields:
        value = getattr(obj, name)
        items = value if name in plan.lists else [value]
        if name in plan.lists and not items:
            return False
        if not all(plan.singles[name].fullmatch(i) for i in items):
            return False
    return True


def test_every_per_message_frame_has_its_patterns() -> None:
    assert set(CHECKED) <= set(PLANS)


@given(st.sampled_from(CHECKED), st.data())
def test_one_expression_decides_as_the_fields_one_by_one(cls: type, data: st.DataObject) -> None:
    plan = PLANS[cls]
    values = {
        name: data.draw(st.lists(text, max_size=3) if name in plan.lists else text)
        for name in plan.fields
    }
    obj = msgspec.structs.replace(_valid(cls), **values)
    expected = reference(cls, obj)
    try:
        check(obj)
    except PatternMismatch as exc:
        assert not expected, f"refused a valid {cls.__name__}: {exc}"
    else:
        assert expected, f"accepted an invalid {cls.__name__}: {values!r}"


def test_an_id_list_item_holding_a_nul_does_not_pass_for_two() -> None:
    header = b'{"t":"taken","ticket":"%s","ids":["%s\\u0000%s"]}' % (
        TICKET.encode(),
        MID.encode(),
        MID.encode(),
    )
    with pytest.raises(RemoteProtocolError, match=r"\$\.ids"):
        p.parse_local(header)


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (b'{"t":"msg_send","id":"%s","to":"%s","app":"a","type":1}' % (MID.encode(), b"x"), "to"),
        (b'{"t":"msg_result","id":"%s","reason":"Busy"}' % MID.encode(), "reason"),
        (
            b'{"t":"msg_deliver","id":"%s","frm":"%s","account":"u","app":"a","type":1,'
            b'"ticket":"%s"}' % (MID.encode(), HID.encode(), HID.encode()),
            "ticket",
        ),
    ],
)
def test_a_wire_frame_refused_names_its_field(header: bytes, field: str) -> None:
    with pytest.raises(RemoteProtocolError, match=rf"malformed frame header: .*\$\.{field}`"):
        parse_header(header)


def test_valid_frames_decode_and_construct() -> None:
    for cls in CHECKED:
        check(_valid(cls))
    frame = m.MsgDeliver(id=MID, frm=HID, account="bob", app="a.b:c-d_e", type=7, ticket=TICKET)
    assert parse_header(msgspec.json.encode(frame)) == frame


def test_the_local_socket_refuses_a_bad_field_as_a_protocol_error() -> None:
    frame = p.encode_local(p.LResult(rid="r1", id="not an id"))  # building checks nothing
    dec = p.LocalDecoder()
    dec.feed(frame)
    with pytest.raises(RemoteProtocolError, match=r"\$\.id`"):
        dec.next_frame()


def test_a_pattern_that_could_match_the_separator_is_refused() -> None:
    class Loose(msgspec.Struct):
        a: str

    with pytest.raises(ValueError, match="separator"):
        patterns(Loose, {"a": r"[\x00-\x7f]*"})


ALIASES = [
    (msgframes.MsgId, msgframes.HEX32),
    (msgframes.HostId, msgframes.HEX32),
    (msgframes.OptMsgId, msgframes.OPT_HEX32),
    (msgframes.Ticket, msgframes.OPT_TICKET),
    (msgframes.Reason, msgframes.REASON),
    (fields.App, fields.APP_NAME),
    (p.OptRid, p.RID),
    (p.Dest, p.PRINTABLE),
]


@given(st.sampled_from(ALIASES), text)
def test_the_patterns_are_the_ones_the_other_frames_declare(pair: tuple, value: str) -> None:
    alias, pattern = pair
    declared = typing.get_args(alias)[1].pattern
    assert bool(re.fullmatch(declared, value)) == bool(re.fullmatch(pattern, value))


def _valid(cls: type) -> object:
    return {
        m.MsgSend: lambda: m.MsgSend(id=MID, to=HID, app="a", type=1),
        m.MsgDeliver: lambda: m.MsgDeliver(id=MID, frm=HID, account="bob", app="a", type=1),
        m.MsgResult: lambda: m.MsgResult(id=MID, host=HID, count=1),
        p.LSend: lambda: p.LSend(rid="r1", dest="bob", app="a", type=1),
        p.LResult: lambda: p.LResult(rid="r1", id=MID, reason="busy"),
        p.LDeliver: lambda: p.LDeliver(id=MID, frm=HID, account="bob", app="a", type=1),
        p.LTaken: lambda: p.LTaken(ticket=TICKET, ids=[MID]),
    }[cls]()
