"""The checks a host makes on a message before it spools it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.client.msgapp import check_app, check_message
from freight.errors import UsageError
from freight.protocol.fields import APP_NAME

TICKET = "a" * 32 + ".7"


@given(
    st.text(max_size=70) | st.sampled_from(["a", "x" * 64, "x" * 65, "app\n", "\u0663", "\uff41"])
)
def test_an_application_name_is_checked_as_the_frames_check_it(app: str) -> None:
    valid = len(app) <= 64 and re.fullmatch(APP_NAME, app, re.ASCII) is not None
    if valid:
        check_app(app)
    else:
        with pytest.raises(UsageError, match="an application name has 1 to 64 of"):
            check_app(app)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("ticket", "b" * 32, "ticket 'bbbb"),
        ("from_ticket", TICKET + "\n", "from_ticket"),
        ("reply_to", "c" * 31, "reply_to"),
        ("type", 0, "a message type is a 32-bit number"),
        ("dest", "", "a destination is"),
    ],
)
def test_a_bad_field_is_refused_by_name(field: str, value: object, error: str) -> None:
    good: dict[str, object] = dict(
        dest="bob", app="sensors", type=1, body=b"x", ticket=TICKET, from_ticket="",
        reply_to="d" * 32,
    )  # fmt: skip
    check_message(**good)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=re.escape(error)):
        check_message(**{**good, field: value})  # type: ignore[arg-type]
