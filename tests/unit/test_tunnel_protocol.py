"""The tunnel's sans-I/O parts (freight/protocol/tunnel.py): targets, bind
addresses, destinations, application names and the listener they reach,
the allow list, the open records (fed bytes, fuzzed) and a stream's life."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.protocol.tunnel import (
    AGENT_APP,
    MAX_OPEN_BYTES,
    AllowList,
    Ev,
    MalformedTunnelMessage,
    OpenAnswer,
    OpenRequest,
    St,
    Target,
    TunnelStream,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    listen_app,
    new_tunnel_app,
    parse_app,
    parse_bind,
    parse_destination,
    parse_target,
)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:5432", Target("127.0.0.1", 5432)),
        ("tcp/127.0.0.1:22", Target("127.0.0.1", 22)),
        ("udp/127.0.0.1:53", Target("127.0.0.1", 53, udp=True)),
        ("[::1]:22", Target("::1", 22)),
        ("DB.Example.org:5432", Target("db.example.org", 5432)),
        ("localhost:1", Target("localhost", 1)),
    ],
)
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        ":22",
        "host:0",
        "host:65536",
        "host:-1",
        "host:22x",
        "::1:22",
        "[::1:22",
        "[nothost]:22",
        "bad_host:22",
        "a..b:22",
        "-a:22",
        "x" * 41 + ":22",
        "udp/:53",
    ],
)
def test_bad_targets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


def test_bind_addresses() -> None:
    assert parse_bind("5433") == ("127.0.0.1", 5433)
    assert parse_bind("0") == ("127.0.0.1", 0)
    assert parse_bind("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_bind("*:80") == ("0.0.0.0", 80)
    assert parse_bind("[::1]:80") == ("::1", 80)
    for bad in ("70000", "x", "no space:1"):
        with pytest.raises(ValueError):
            parse_bind(bad)


def test_destinations_and_their_application_names() -> None:
    agent = parse_destination("lab-pc-7:127.0.0.1:5432")
    assert agent.peer == "lab-pc-7" and agent.target == Target("127.0.0.1", 5432)
    app = new_tunnel_app(agent)
    assert app.startswith("tunnel.") and app.endswith(".tcp:127.0.0.1:5432")
    assert listen_app(app) == AGENT_APP
    parsed = parse_app(app)
    assert parsed is not None and parsed.target == agent.target and parsed.name == ""
    assert new_tunnel_app(agent) != app  # one per connection

    user = parse_destination("alice:web")
    app = new_tunnel_app(user)
    assert listen_app(app) == "tunnel:web"
    parsed = parse_app(app)
    assert parsed is not None and parsed.name == "web" and parsed.target is None

    v6 = parse_destination("lab:[::1]:22")
    parsed = parse_app(new_tunnel_app(v6))
    assert parsed is not None and parsed.target == Target("::1", 22)
    udp = parse_app(new_tunnel_app(parse_destination("lab:udp/127.0.0.1:53")))
    assert udp is not None and udp.udp and udp.target == Target("127.0.0.1", 53, udp=True)


def test_other_applications_are_left_alone() -> None:
    assert parse_app("chat") is None
    assert listen_app("chat") == "chat"
    assert listen_app("code:7") == "code:7"


@pytest.mark.parametrize(
    "app",
    [
        "tunnel.",
        "tunnel.zzzzzzzz.tcp:web",
        "tunnel.0123abcd.sctp:web",
        "tunnel.0123abcd.tcp:",
        "tunnel.0123abcd.tcp:bad/name",
        "tunnel.0123abcd.tcp:127.0.0.1:0",
        "tunnel.0123abcd.tcp:127.000.0.1:22",  # not in its normal form
    ],
)
def test_malformed_tunnel_applications(app: str) -> None:
    with pytest.raises(MalformedTunnelMessage):
        parse_app(app)


@given(st.text(max_size=80))
def test_application_names_never_crash(app: str) -> None:
    try:
        parsed = parse_app(app)
    except MalformedTunnelMessage:
        return
    if parsed is not None:
        assert parsed.app == app
        assert listen_app(app) in (AGENT_APP, "tunnel:" + parsed.service)


def test_allow_list() -> None:
    allow = AllowList(["127.0.0.1:5432", "[::1]:22", "db.lan:*", "udp/127.0.0.1:53"])
    assert allow.allows(Target("127.0.0.1", 5432))
    assert not allow.allows(Target("127.0.0.1", 5433))
    assert allow.allows(Target("::1", 22))
    assert allow.allows(Target("db.lan", 1)) and allow.allows(Target("db.lan", 65535))
    assert not allow.allows(Target("db.lan", 1, udp=True))
    assert allow.allows(Target("127.0.0.1", 53, udp=True))
    assert not allow.allows(Target("127.0.0.1", 53))  # tcp/53 was not allowed
    assert allow.entries() == sorted(["127.0.0.1:5432", "[::1]:22", "db.lan:*", "udp/127.0.0.1:53"])
    assert not AllowList()
    with pytest.raises(ValueError):
        AllowList(["nonsense"])
    with pytest.raises(ValueError):
        AllowList([f"127.0.0.1:{p}" for p in range(1, 300)])


def test_open_records_round_trip() -> None:
    req = OpenRequest(service="127.0.0.1:5432")
    assert decode_request(encode_request(req)) == req
    ok = OpenAnswer(ok=True)
    assert decode_answer(encode_answer(ok)) == ok
    no = OpenAnswer(ok=False, code="forbidden", message="x" * 1000)
    got = decode_answer(encode_answer(no))
    assert got.code == "forbidden" and len(got.message) == 400


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"O",
        b"Onot json",
        b'O{"service": ""}',
        b'O{"service": "x", "v": 2}',
        b'O{"service": 5}',
        b'A{"service": "x"}',
        b"O" + b" " * MAX_OPEN_BYTES + b'{"service": "x"}',
    ],
)
def test_malformed_requests(data: bytes) -> None:
    with pytest.raises(MalformedTunnelMessage):
        decode_request(data)


@pytest.mark.parametrize(
    "data",
    [
        b'A{"ok": true, "code": "forbidden"}',
        b'A{"ok": false}',
        b'A{"ok": false, "code": "teapot"}',
        b'O{"ok": true}',
        b"A[]",
    ],
)
def test_malformed_answers(data: bytes) -> None:
    with pytest.raises(MalformedTunnelMessage):
        decode_answer(data)


@given(st.binary(max_size=2 * MAX_OPEN_BYTES))
def test_open_records_fuzzed(data: bytes) -> None:
    for decode in (decode_request, decode_answer):
        with contextlib.suppress(MalformedTunnelMessage):
            decode(data)


def test_stream_life_with_half_closes() -> None:
    s = TunnelStream()
    s.feed(Ev.DATA_OUT, 10)  # optimistic, behind the request
    s.feed(Ev.ANSWER_OK)
    s.feed(Ev.DATA_IN, 5)
    assert s.feed(Ev.REMOTE_EOF) is St.REMOTE_EOF
    s.feed(Ev.DATA_OUT, 3)  # the other direction goes on
    assert s.feed(Ev.LOCAL_EOF) is St.DONE
    assert (s.bytes_out, s.bytes_in) == (13, 5) and s.finished


def test_eof_before_the_answer_is_kept() -> None:
    s = TunnelStream()
    s.feed(Ev.LOCAL_EOF)
    assert s.feed(Ev.ANSWER_OK) is St.LOCAL_EOF
    assert s.feed(Ev.REMOTE_EOF) is St.DONE


def test_illegal_steps_are_errors_and_stay() -> None:
    s = TunnelStream()
    with pytest.raises(MalformedTunnelMessage):
        s.feed(Ev.DATA_IN, 1)  # before the answer
    assert s.state is St.ERROR
    assert s.feed(Ev.RESET) is St.ERROR
    r = TunnelStream()
    r.feed(Ev.ANSWER_REFUSED)
    assert r.finished
    with pytest.raises(MalformedTunnelMessage):
        r.feed(Ev.DATA_OUT, 1)


@given(st.lists(st.sampled_from(list(Ev)), max_size=12))
def test_stream_machine_fuzzed(events: list[Ev]) -> None:
    s = TunnelStream()
    for ev in events:
        before = s.state
        try:
            after = s.feed(ev, 1)
        except MalformedTunnelMessage:
            assert s.state is St.ERROR
            continue
        if before is St.ERROR:
            assert after is St.ERROR
