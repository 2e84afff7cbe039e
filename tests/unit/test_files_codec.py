"""The file manager's messages (freight.protocol.files): round trips, and
hostile bytes that may only ever raise MalformedFileMessage."""

from __future__ import annotations

import contextlib
import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.errors import code_to_error
from freight.protocol.files import (
    MAX_PAGE_ENTRIES,
    Entry,
    Listing,
    MalformedFileMessage,
    Ready,
    Refusal,
    Request,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from freight.protocol.sendrecv import MAX_MTIME, MAX_PATH_CHARS


def q(body: object) -> bytes:
    return b"Q" + json.dumps(body).encode()


def a(body: object) -> bytes:
    return b"A" + json.dumps(body).encode()


def test_requests_round_trip_and_keep_their_wire_form() -> None:
    request = Request(op="get", path="/data/x", recursive=True)
    data = encode_request(request)
    assert json.loads(data[1:]) == {
        "op": "get",
        "path": "/data/x",
        "recursive": True,
        "overwrite": False,
    }
    assert decode_request(data) == request
    assert decode_request(q({"op": "ls", "path": "/"})) == Request(op="ls", path="/")


def test_answers_round_trip_in_each_form() -> None:
    entry = Entry(name="a.txt", type="file", size=3, mtime=1.5, mode=0o644)
    listing = Listing(path="/d", entries=[entry], total=1, offset=0, next=None)
    wire = json.loads(encode_answer(listing)[1:])
    assert wire["ok"] is True and wire["next"] is None and wire["entries"][0]["name"] == "a.txt"
    got = decode_answer(encode_answer(listing))
    assert got.ok and got.entries == [entry] and got.next is None and got.path == "/d"
    assert decode_answer(encode_answer(Ready())).ok
    refused = decode_answer(encode_answer(Refusal(code="forbidden", error="no")))
    assert not refused.ok and (refused.code, refused.error) == ("forbidden", "no")
    assert code_to_error(refused.code, refused.error).code == "forbidden"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"A{}",  # the wrong kind
        b"Q",
        b"Qnot json",
        q([]),
        q({"path": "/x"}),  # no op
        q({"op": "rm", "path": "/x"}),  # an op that does not exist
        q({"op": "ls", "path": ""}),
        q({"op": "ls", "path": "/" + "a" * MAX_PATH_CHARS}),
        q({"op": "ls", "path": 7}),
        q({"op": "get", "path": "/x", "recursive": "yes"}),
        q({"op": "put", "path": "/x", "overwrite": 1}),
    ],
)
def test_hostile_requests_raise_malformed(data: bytes) -> None:
    with pytest.raises(MalformedFileMessage):
        decode_request(data)


def entry(**kw: object) -> dict[str, object]:
    return {"name": "n", "type": "file", "size": 1, "mtime": 0.0, "mode": 0o644, **kw}


def listing(**kw: object) -> dict[str, object]:
    return {"ok": True, "path": "/", "entries": [entry()], "total": 1, "offset": 0, **kw}


@pytest.mark.parametrize(
    "data",
    [
        b"Q{}",
        a({}),  # no ok
        a({"ok": "yes"}),
        a({"ok": False}),  # a refusal without a code
        a({"ok": False, "code": "Not A Code!", "error": "x"}),
        a({"ok": False, "code": "x", "error": "e" * 5000}),
        a(listing(entries=[entry(type="socket")])),
        a(listing(entries=[entry(size=-1)])),
        a(listing(entries=[entry(mode=0o17777)])),
        a(listing(entries=[entry(mtime=MAX_MTIME * 2)])),
        a(listing(entries=[entry(name=["n"])])),
        a(listing(entries=[{"type": "file"}])),
        a(listing(total=-1)),
        a(listing(next="more")),
        a(listing(entries=[entry()] * (MAX_PAGE_ENTRIES + 1))),
        b"A" + b"[" * 100_000,
    ],
)
def test_hostile_answers_raise_malformed(data: bytes) -> None:
    with pytest.raises(MalformedFileMessage):
        decode_answer(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["ls", "get", "put", "rm"]) | JSONISH,
        "path": st.text(max_size=10) | JSONISH,
        "recursive": JSONISH,
        "overwrite": JSONISH,
        "ok": JSONISH,
        "code": st.text(max_size=10) | JSONISH,
        "error": JSONISH,
        "entries": st.lists(JSONISH, max_size=3),
        "total": JSONISH,
        "offset": JSONISH,
        "next": JSONISH,
    },
)


@FUZZ
@given(st.sampled_from([b"Q", b"A", b"", b"M"]), FIELDS | JSONISH)
def test_structured_garbage_only_raises_malformed(tag: bytes, body: object) -> None:
    data = tag + msgspec.json.encode(body)
    for decode in (decode_request, decode_answer):
        with contextlib.suppress(MalformedFileMessage):
            decode(data)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_malformed(data: bytes) -> None:
    for decode in (decode_request, decode_answer):
        for tagged in (data, b"Q" + data, b"A" + data):
            with contextlib.suppress(MalformedFileMessage):
                decode(tagged)
