"""The scenario sheet of ``freight loadtest``: every column parsed, every
mistake named by line, row and column, and (hypothesis) any sheet either
parses into the rows it was written from or fails with ScenarioError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.loadtest.scenario import (
    MAX_CLIENTS,
    MAX_ROWS,
    Expect,
    Fault,
    Rate,
    Row,
    ScenarioError,
    Size,
    check_workers,
    parse_scenario,
    split_clauses,
)

ACCEPTANCE = """\
id,count,role,peer,app,size,rate,transport,attach_at,ramp,faults,expect
idle,2000,agent-idle,,,,,ws,0s,60s,,attached>=99.9%
pairs,100,connect,listeners,chat,1KiB,50/s,auto,10s,10s,drop_every(30s±10s),p99<50ms;loss=0
listeners,100,listen,*,chat,,,auto,0s,5s,,
uploaders,20,push,,,uniform(1MiB;64MiB),concurrency:1,http,20s,5s,hub_kill@90s,errors=0;verified=100%
bad,5,garbage,,,,1/s,ws,30s,0s,,hub_alive
"""

HEADER = "id,count,role,peer,app,size,rate,transport,manner,attach_at,ramp,end,faults,expect\n"


def one(row: str, *more: str) -> Row:
    """The first row of a sheet with the full header."""
    return parse_scenario(HEADER + "\n".join((row, *more)) + "\n").rows[0]


def refused(text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text)
    return str(caught.value)


def test_the_acceptance_sheet_parses_into_its_populations() -> None:
    sheet = parse_scenario(ACCEPTANCE)
    assert [r.id for r in sheet.rows] == ["idle", "pairs", "listeners", "uploaders", "bad"]
    assert sheet.clients == 2225
    pairs = sheet.row("pairs")
    assert (pairs.role, pairs.peer, pairs.app, pairs.line) == ("connect", "listeners", "chat", 3)
    assert pairs.size == Size("fixed", low=1024)
    assert pairs.rate == Rate("per_client", 50.0)
    assert (pairs.attach_at, pairs.ramp) == (10.0, 10.0)
    assert pairs.faults == (Fault("drop_every", every=30.0, jitter=10.0),)
    assert [(e.metric, e.op, e.value) for e in pairs.expect] == [
        ("p99", "<", 0.05),
        ("loss", "==", 0),
    ]
    up = sheet.row("uploaders")
    assert up.size == Size("uniform", low=1 << 20, high=64 << 20)
    assert up.rate == Rate("concurrency", 1.0)
    assert up.transport == "http"
    assert up.faults == (Fault("hub_kill", at=90.0),)
    assert sheet.row("idle").expect == (Expect("attached", ">=", 99.9, text="attached>=99.9%"),)
    assert sheet.row("bad").expect[0].metric == "hub_alive"


def test_comments_blank_lines_and_column_order_are_free() -> None:
    sheet = parse_scenario(
        "# a hub check\n\nrole,count,id\n  # listeners first\nagent-idle,3,idle\n\n"
    )
    assert sheet.rows[0].id == "idle" and sheet.rows[0].line == 5


@pytest.mark.parametrize(
    ("cell", "size"),
    [
        ("512", Size("fixed", low=512)),
        ("1KiB", Size("fixed", low=1024)),
        ("1.5M", Size("fixed", low=3 << 19)),
        ("uniform(1KiB;2KiB)", Size("uniform", low=1024, high=2048)),
        ("lognormal(64KiB;1.5)", Size("lognormal", low=65536, sigma=1.5)),
        ("file:/srv/sample.bin", Size("file", file="/srv/sample.bin")),
    ],
)
def test_sizes(cell: str, size: Size) -> None:
    assert one(f"p,1,push,,,{cell},1/s,,,,,,,").size == size


@pytest.mark.parametrize(
    ("cell", "rate"),
    [
        ("50/s", Rate("per_client", 50.0)),
        ("0.5/s", Rate("per_client", 0.5)),
        ("total:1000/s", Rate("total", 1000.0)),
        ("concurrency:4", Rate("concurrency", 4.0)),
    ],
)
def test_rates(cell: str, rate: Rate) -> None:
    assert one(f"p,1,push,,,1KiB,{cell},,,,,,,").rate == rate


def test_faults_of_every_kind() -> None:
    faults = (
        "drop@30s;drop_every(1m+-5s);half_open@1m;garbage@500ms;bad_tls;"
        "reconnect_storm@2m;hub_kill@90s;stall@10"
    )
    row = one(f"p,1,push,,,1KiB,1/s,,,,,,{faults},")
    assert row.faults == (
        Fault("drop", at=30.0),
        Fault("drop_every", every=60.0, jitter=5.0),
        Fault("half_open", at=60.0),
        Fault("garbage", at=0.5),
        Fault("bad_tls"),
        Fault("reconnect_storm", at=120.0),
        Fault("hub_kill", at=90.0),
        Fault("stall", at=10.0),
    )
    slow = one("l,1,listen,,chat,,,,,,,,slow_reader(64KiB),")
    assert slow.faults == (Fault("slow_reader", rate=65536),)


def test_expect_clauses_of_every_kind() -> None:
    row = one(
        "p,1,push,,,1KiB,1/s,,,,,,,"
        "p50<=2ms;p99.9<1s;max<2s;errors=0;loss<0.1%;verified>=100%;throughput>=10MiB/s;hub_alive"
    )
    got = [(e.metric, e.op, e.value, e.percent) for e in row.expect]
    assert got == [
        ("p50", "<=", 0.002, False),
        ("p99.9", "<", 1.0, False),
        ("max", "<", 2.0, False),
        ("errors", "==", 0.0, False),
        ("loss", "<", 0.1, True),
        ("verified", ">=", 100.0, False),
        ("throughput", ">=", float(10 << 20), False),
        ("hub_alive", "", 0.0, False),
    ]


def test_times_transport_manner_and_end() -> None:
    row = one("s,2,send,r,,1MiB,concurrency:1,tls,relay,1m,30s,5m,,", "r,2,receive,,,,,,,,,,,")
    assert (row.transport, row.manner, row.attach_at, row.ramp, row.end) == (
        "tls",
        "relay",
        60.0,
        30.0,
        300.0,
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("9x,1,push,,,1KiB,,,,,,,,", "line 2, column id: '9x' is not a row id"),
        ("p,0,push,,,1KiB,,,,,,,,", "line 2 (row 'p'), column count: '0' is not a whole number"),
        ("p,1.5,push,,,1KiB,,,,,,,,", "column count: '1.5' is not a whole number"),
        (f"p,{MAX_CLIENTS + 1},push,,,1KiB,,,,,,,,", "column count"),
        ("p,1,,,,1KiB,,,,,,,,", "(row 'p'), column role: is required"),
        ("p,1,upload,,,1KiB,,,,,,,,", "column role: 'upload' is not a role (agent-idle, push"),
        ("p,1,push,,,1 banana,,,,,,,,", "column size: '1 banana' is not a size"),
        ("p,1,push,,,uniform(2K;1K),,,,,,,,", "column size: uniform(2K;1K): the first bound"),
        ("p,1,push,,,lognormal(1K;9),,,,,,,,", "column size: lognormal's shape '9'"),
        ("p,1,push,,,sine(1K),,,,,,,,", "column size: 'sine(1K)' is not a size"),
        ("p,1,push,,,file:,,,,,,,,", "column size: file: needs a path"),
        ("p,1,push,,,1K,50/min,,,,,,,", "column rate: '50/min' is not a rate"),
        ("p,1,push,,,1K,0/s,,,,,,,", "column rate: '0/s': a rate is more than 0"),
        ("p,1,push,,,1K,concurrency:0,,,,,,,", "column rate: 'concurrency:0': concurrency"),
        ("p,1,push,,,1K,,carrier-pigeon,,,,,,", "column transport: 'carrier-pigeon'"),
        ("p,1,push,,,1K,,,telepathy,,,,,", "column manner: 'telepathy' is not a manner"),
        ("p,1,push,,,1K,,,,soon,,,,", "column attach_at: 'soon' is not a time"),
        ("p,1,push,,,1K,,,,,-5s,,,", "column ramp: '-5s' is not a time"),
        ("p,1,push,,,1K,,,,8d,,,,", "column attach_at: '8d' is not a time"),
        ("p,1,push,,,1K,,,,10s,10s,15s,,", "column end: the row ends before"),
        ("p,1,push,,,1K,,,,,,,explode@1s,", "column faults: 'explode' is not a timed fault"),
        (
            "p,1,push,,,1K,,,,,,,drop_every(5s±5s),",
            "column faults: 'drop_every(5s±5s)': the period",
        ),
        ("p,1,push,,,1K,,,,,,,melt,", "column faults: 'melt' is not a fault"),
        ("p,1,push,,,1K,,,,,,,slow_reader(1K),", "column faults: slow_reader applies to listen"),
        ("p,1,push,,,1K,,,,,,,drop@1s;(,", "column faults: a '(' without its ')'"),
        ("p,1,push,,,1K,,,,,,,,p99 fast", "column expect: 'p99 fast' is not a clause"),
        ("p,1,push,,,1K,,,,,,,,attached>=99", "column expect: attached is a percentage"),
        ("p,1,push,,,1K,,,,,,,,verified=101%", "column expect: '101%' is not a percentage"),
        ("p,1,push,,,1K,,,,,,,,mood>3", "column expect: 'mood' is not a metric"),
        ("p,1,push,,,1K,,,,,,,,errors=nan", "column expect: 'nan' is not a finite number"),
        ("p,1,push,,,1K,,,,,,,," + ";".join(["errors=0"] * 17), "at most 16 expect clauses"),
        ("p,1,push,,,,,,,,,,,", "column size: a push row needs a size"),
        ("p,1,agent-idle,,,1K,,,,,,,,", "column size: a agent-idle row moves no data"),
        ("c,1,connect,,chat,1K,,,,,,,,", "column peer: a connect row needs a peer"),
        ("l,1,listen,,,,,,,,,,,", "column app: a listen row needs an application name"),
        ("l,1,listen,,bad app,,,,,,,,,", "column app: 'bad app' is not an application name"),
        ("c,1,connect,nobody,chat,1K,,,,,,,,", "column peer: no row has the id 'nobody'"),
        ("c,1,connect,*,chat,1K,,,,,,,,", "column peer: a connect row names one row"),
        ("p,1,push,,,1K,,,,,,,,,extra", "line 2: 15 cells for 14 columns"),
    ],
)
def test_each_mistake_names_its_line_row_and_column(row: str, message: str) -> None:
    assert message in refused(HEADER + row + "\n")


def test_applications_share_messaging_hosts() -> None:
    """``hosts``: a message or request row's clients are applications on
    that many hosts; client i runs on the host client i mod hosts runs."""
    sheet = parse_scenario(
        "id,count,role,peer,app,size,rate,hosts\n"
        "l,2,listen,*,chat,,,\n"
        "m,10,message,l,chat,128,5/s,4\n"
        "r,3,request,l,chat,128,5/s,3\n"
        "c,3,connect,l,chat,128,5/s,\n"
    )
    m, r, c = sheet.rows[1:]
    assert (m.hosts, r.hosts, c.hosts) == (4, 3, None)
    check_workers(sheet, 2)  # m's 4 hosts share evenly; r has one per client
    with pytest.raises(ScenarioError) as caught:
        check_workers(sheet, 3)
    assert "line 3 (row 'm'), column hosts: 4 hosts do not share evenly among 3" in str(
        caught.value
    )
    check_workers(parse_scenario("id,count,role,peer,app,size,hosts\nl,1,listen,*,a,,\n"), 3)
    head = "id,count,role,peer,app,size,hosts\nl,1,listen,*,chat,,\n"
    assert "column hosts: 'two' is not a whole number" in refused(
        head + "m,2,message,l,chat,1,two\n"
    )
    assert "column hosts: '0' is not a whole number" in refused(head + "m,2,message,l,chat,1,0\n")
    assert "column hosts: 3 hosts for 2 clients" in refused(head + "m,2,message,l,chat,1,3\n")
    assert "column hosts: hosts applies to message and request rows" in refused(
        head + "c,2,connect,l,chat,1,1\n"
    )


def test_mistakes_between_rows() -> None:
    two = HEADER + "p,1,push,,,1K,,,,,,,,\np,1,push,,,1K,,,,,,,,\n"
    assert "line 3 (row 'p'), column id: 'p' is the id of line 2 too" in refused(two)
    wrong_peer = HEADER + "s,1,send,p,,1K,,,,,,,,\np,1,push,,,1K,,,,,,,,\n"
    assert "row 'p' is a push row; a send row's peer is a receive row" in refused(wrong_peer)
    other_app = HEADER + "c,1,connect,l,chat,1K,,,,,,,,\nl,1,listen,*,news,,,,,,,,,\n"
    assert "column app: 'chat' differs from the application its peer row 'l'" in refused(other_app)
    picky = HEADER + "l,1,listen,c,chat,,,,,,,,,\nc,1,connect,l,chat,1K,,,,,,,,\n"
    assert "(row 'l'), column peer: a listen row accepts from anyone" in refused(picky)
    many = HEADER + "a,60000,agent-idle,,,,,,,,,,,\nb,60000,agent-idle,,,,,,,,,,,\n"
    assert f"120000 clients in all; at most {MAX_CLIENTS}" in refused(many)


def test_mistakes_in_the_sheet_itself() -> None:
    assert "the sheet is empty" in refused("# nothing\n\n")
    assert "'colour' is not a column" in refused("id,count,role,colour\n")
    assert "the sheet needs a 'role' column" in refused("id,count\n")
    assert "a column is named twice" in refused("id,count,role,id\n")
    assert "the sheet has no rows" in refused("id,count,role\n")
    assert "a cell holds a line break" in refused('id,count,role\n"a\nb",1,push\n')
    rows = "".join(f"r{i},1,agent-idle\n" for i in range(MAX_ROWS + 1))
    assert f"at most {MAX_ROWS} rows" in refused("id,count,role\n" + rows)
    assert "larger than" in refused("id,count,role\n" + "#" * (1 << 20))
    assert "longer than 1000 characters" in refused(HEADER + "p,1,push,,,1K,,,,,,,," + "x" * 1001)


def test_clauses_split_outside_parentheses() -> None:
    assert split_clauses("a;uniform(1;2);b ; ") == ["a", "uniform(1;2)", "b"]
    with pytest.raises(ValueError, match=r"a '\)' without its '\('"):
        split_clauses("a);b")


# --- hypothesis: sheets written from rows parse back into those rows --------

ids = st.from_regex(r"[a-z][a-z0-9_-]{0,7}", fullmatch=True)
apps = st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True)
secs = st.integers(min_value=0, max_value=3600)
sizes = st.one_of(
    st.integers(1, 1 << 30).map(lambda n: (str(n), Size("fixed", low=n))),
    st.tuples(st.integers(1, 1 << 20), st.integers(0, 1 << 20)).map(
        lambda ab: (f"uniform({ab[0]};{ab[0] + ab[1]})", Size("uniform", low=ab[0], high=sum(ab)))
    ),
)
rates = st.one_of(
    st.integers(1, 10_000).map(lambda n: (f"{n}/s", Rate("per_client", float(n)))),
    st.integers(1, 10_000).map(lambda n: (f"total:{n}/s", Rate("total", float(n)))),
    st.integers(1, 100).map(lambda n: (f"concurrency:{n}", Rate("concurrency", float(n)))),
)


@st.composite
def sheets(draw: st.DrawFn) -> tuple[str, list[dict[str, object]]]:
    """A sheet of listen rows and rows of every other kind aimed at them."""
    names = draw(st.lists(ids, min_size=2, max_size=8, unique=True))
    app = draw(apps)
    listener = names[0]
    rows = [{"id": listener, "count": draw(st.integers(1, 50)), "role": "listen", "app": app}]
    lines = [f"{listener},{rows[0]['count']},listen,*,{app},,,,,,,,,"]
    for name in names[1:]:
        role = draw(
            st.sampled_from(["agent-idle", "push", "pull", "connect", "message", "garbage"])
        )
        count, at, ramp = draw(st.integers(1, 50)), draw(secs), draw(secs)
        size_text, size = (
            draw(sizes) if role in ("push", "pull", "connect", "message") else ("", None)
        )
        rate_text, rate = draw(rates) if role != "agent-idle" else ("", None)
        peer, row_app = (listener, app) if role in ("connect", "message") else ("", "")
        lines.append(
            f"{name},{count},{role},{peer},{row_app},{size_text},{rate_text},,,{at}s,{ramp}s,,,"
        )
        rows.append(
            {"id": name, "count": count, "role": role, "size": size, "rate": rate}
            | {"attach_at": float(at), "ramp": float(ramp), "peer": peer}
        )
    return HEADER + "\n".join(lines) + "\n", rows


@given(sheets())
@settings(max_examples=150, deadline=None)
def test_any_written_sheet_parses_back_into_its_rows(
    case: tuple[str, list[dict[str, object]]],
) -> None:
    text, want = case
    got = parse_scenario(text)
    assert len(got.rows) == len(want)
    for row, expected in zip(got.rows, want, strict=True):
        for key, value in expected.items():
            assert getattr(row, key) == value, (key, row)
    assert got.clients == sum(int(w["count"]) for w in want)  # type: ignore[call-overload]


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_text_is_a_scenario_or_a_scenario_error(text: str) -> None:
    try:
        parse_scenario("id,count,role,peer,app,size,rate,faults,expect\n" + text)
    except ScenarioError as e:
        assert str(e) and "\n" not in str(e)


@given(
    st.lists(
        st.sampled_from(
            ["p", "1", "push", "listen", "connect", "1K", "uniform(", ";", ")", "@", "5s", "*", ""]
        ),
        min_size=3,
        max_size=14,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_cells_are_a_scenario_or_a_scenario_error(cells: list[str]) -> None:
    try:
        parse_scenario(HEADER + ",".join(cells) + "\n")
    except ScenarioError as e:
        assert "line 2" in str(e)
