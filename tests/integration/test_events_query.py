"""The event log through a real hub: a few hundred events seeded into its
database, every filter and sort walked page by page through the opaque
cursor, compared with a Python model of the same rows; the CSV and JSON
exports; hostile parameters answered with a typed 400, never a 500."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from freight.store.eventcols import event_address, event_agent
from tests.authsupport import Rest, _insecure, rest, token_of
from tests.support import Client, Hub

KINDS = ("login", "login_failure", "agent_login", "stream_end", "command_queued", "security")
ACTORS = ("admin", "ann", "bob", "lab1", "lab2")
WORDS = ("alpha", "beta", "gamma", "report", "zanzibar")
SEEDED = 400
T0 = 1_700_000_000.0


def _seed(hub: Hub) -> None:
    rnd = random.Random(11)
    rows = []
    for i in range(SEEDED):
        kind, actor = rnd.choice(KINDS), rnd.choice(ACTORS)
        detail: dict[str, Any] = {"note": " ".join(rnd.sample(WORDS[:4], 2))}
        if rnd.random() < 0.6:
            detail["address"] = f"10.0.{rnd.randrange(2)}.{rnd.randrange(4)}"
        if kind == "command_queued":
            detail["agent"] = rnd.choice(("lab1", "lab2"))
        if i == 123:
            detail["note"] = "zanzibar"  # the one rare word
        ts = T0 + rnd.randrange(200) + i * 3600
        agent, address = event_agent(kind, actor, detail), event_address(detail)
        rows.append((ts, kind, actor, json.dumps(detail), agent, address))
    con = sqlite3.connect(hub.data / "freight.db")
    with con:
        con.executemany(
            "INSERT INTO events (ts, kind, actor, detail, agent, address) VALUES (?,?,?,?,?,?)",
            rows,
        )
    con.close()


def _all_rows(hub: Hub) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{hub.data / 'freight.db'}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM events").fetchall()
    finally:
        con.close()
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


@pytest.fixture(scope="module")
def seeded(shared_hub: Hub, shared_client: Client) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _seed(shared_hub)
    yield token_of(shared_client), _all_rows(shared_hub)


def _words(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.lower())


def model(rows: list[dict[str, Any]], params: dict[str, str]) -> list[int]:
    kinds = params["kind"].split(",") if "kind" in params else None
    words = _words(params.get("q", ""))
    hits = []
    for e in rows:
        if kinds and e["kind"] not in kinds:
            continue
        if any(n in params and e[n] != params[n] for n in ("actor", "agent", "address")):
            continue
        if "since" in params and e["ts"] < _epoch(params["since"]):
            continue
        if "until" in params and e["ts"] >= _epoch(params["until"]):
            continue
        text = _words(e["kind"]) + _words(e["actor"]) + _words(json.dumps(e["detail"]))
        if all(any(t.startswith(w) for t in text) for w in words):
            hits.append(e)
    sort = params.get("sort", "-ts")
    cols = {"ts": ("ts", "id"), "kind": ("kind", "ts", "id"), "actor": ("actor", "ts", "id")}
    hits.sort(key=lambda e: tuple(e[c] for c in cols[sort.lstrip("-")]), reverse=sort[0] == "-")
    return [e["id"] for e in hits]


def _epoch(text: str) -> float:
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        when = datetime.fromisoformat(text)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def walk(hub: Hub, token: str, params: dict[str, str], page: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    cursor = None
    with Rest(hub) as r:
        for _ in range(SEEDED):
            q = {**params, "limit": str(page), **({"cursor": cursor} if cursor else {})}
            status, body, _ = r.call(
                "GET", "/v1/admin/events?" + urllib.parse.urlencode(q), token=token
            )
            assert status == 200, body
            assert len(body["events"]) <= page
            got += body["events"]
            cursor = body["next"]
            if cursor is None:
                return got
    raise AssertionError("the cursor walk did not end")


CASES = [
    {},
    {"kind": "login_failure"},
    {"kind": "login,security,agent_login"},
    {"actor": "ann"},
    {"agent": "lab2"},
    {"address": "10.0.1.3"},
    {"since": str(T0 + 100 * 3600), "until": "2023-12-01T00:00:00Z"},
    {"since": "2023-11-20T10:00:00+01:00"},
    {"q": "zanzibar"},
    {"q": "alp rep", "kind": "login"},
    {"q": "10.0.1"},
    {"sort": "ts"},
    {"sort": "kind", "actor": "bob"},
    {"sort": "-kind"},
    {"sort": "actor", "address": "10.0.0.0"},
    {"sort": "-actor", "q": "beta"},
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: urllib.parse.urlencode(p) or "all")
def test_each_filter_and_sort_walks_the_models_rows(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]], params: dict[str, str]
) -> None:
    token, rows = seeded
    want = model(rows, params)
    assert want, "the case selects nothing: it would prove little"
    got = walk(shared_hub, token, params, page=37)
    assert [e["id"] for e in got] == want
    by_id = {e["id"]: e for e in rows}
    for e in got[:5]:
        assert {k: e[k] for k in by_id[e["id"]]} == by_id[e["id"]]


def test_the_rare_word_finds_its_one_event(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    token, _ = seeded
    status, body = rest(shared_hub, "GET", "/v1/admin/events?q=ZANZIBAR", token=token)
    assert status == 200
    assert [e["detail"]["note"] for e in body["events"]] == ["zanzibar"] and body["next"] is None


def test_csv_export_parses_and_equals_the_json_rows(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    import urllib.request

    token, rows = seeded
    params = {"kind": "login,stream_end", "sort": "kind"}
    pages = walk(shared_hub, token, params, page=1000)
    exports: dict[str, bytes] = {}
    for fmt in ("csv", "json"):
        req = urllib.request.Request(
            f"{shared_hub.url}/v1/admin/events?"
            + urllib.parse.urlencode({**params, "format": fmt}),
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, context=_insecure(), timeout=30) as resp:
            assert resp.status == 200
            disposition = resp.headers["Content-Disposition"]
            assert disposition.startswith("attachment; filename=") and f".{fmt}" in disposition
            exports[fmt] = resp.read()
    as_json = json.loads(exports["json"])
    assert as_json == pages and len(pages) == len(model(rows, params))
    table = list(csv.DictReader(io.StringIO(exports["csv"].decode())))
    assert [
        {
            "id": int(r["id"]),
            "ts": float(r["ts"]),
            "kind": r["kind"],
            "actor": r["actor"],
            "detail": json.loads(r["detail"]),
            "agent": r["agent"],
            "address": r["address"],
        }
        for r in table
    ] == as_json


HOSTILE = [
    ("limit=0", "limit must be a whole number from 1 to 1000"),
    ("limit=1000000000000000000000", "limit must be"),
    ("limit=-5", "limit must be"),
    ("limit=ten", "limit must be"),
    ("limit=%C2%B2", "limit must be"),
    ("limit=0000000000010000000", "limit must be"),
    ("cursor=not-a-cursor", "cursor must be"),
    ("cursor=WyItdHMiLDEsMV0&sort=kind", "cursor must be"),
    ("cursor=" + "A" * 5000, "cursor must be"),
    ("since=yesterday", "since must be epoch seconds"),
    ("until=2026-13-45", "until must be epoch seconds"),
    ("since=1e400", "since must be epoch seconds"),
    ("since=99999999999999999999", "since must be epoch seconds"),
    ("sort=id", "sort must be one of ts, kind, actor"),
    ("sort=--ts", "sort must be one of"),
    ("kind=login%27%3B%20DROP%20TABLE%20events%3B--", "kind must be event kinds"),
    ("actor=%1b%5b31m", "actor must be at most 128 printable characters"),
    ("q=%22%2A%29%28", "q must hold a word"),
    ("q=" + "a" * 300, "q must be given once, at most 256 characters"),
    ("q=a+b+c+d+e+f+g+h+i", "q may hold at most 8 words"),
    ("format=xml", "format must be csv or json"),
    ("limit=5&limit=6", "give limit once"),
    ("evil=1", "unknown parameter 'evil'"),
]


@pytest.mark.parametrize(("query", "says"), HOSTILE, ids=[q[:30] for q, _ in HOSTILE])
def test_hostile_parameters_are_a_typed_400(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]], query: str, says: str
) -> None:
    token, _ = seeded
    status, body = rest(shared_hub, "GET", "/v1/admin/events?" + query, token=token)
    assert status == 400, body
    assert body["error"]["code"] == "usage" and says in body["error"]["message"], body


def test_sql_in_the_search_is_only_words(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    token, rows = seeded
    q = urllib.parse.quote("'; DROP TABLE events; -- \" OR 1=1 NEAR(")
    status, body = rest(shared_hub, "GET", f"/v1/admin/events?q={q}", token=token)
    assert status == 200 and body == {"events": [], "next": None}
    assert len(_all_rows(shared_hub)) >= len(rows)


def test_a_10_kb_query_string_is_a_400(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    token, _ = seeded
    status, body = rest(shared_hub, "GET", "/v1/admin/events?q=" + "x" * 10_240, token=token)
    assert status == 400, body
    assert "q must be given once, at most 256 characters" in body["error"]["message"]


def test_only_admins_read_the_log(shared_hub: Hub, bob: Client) -> None:
    status, body = rest(shared_hub, "GET", "/v1/admin/events", token=token_of(bob))
    assert status == 403 and "needs an admin account" in body["error"]["message"]


def test_the_cli_filters_and_writes_csv(
    shared_hub: Hub, seeded: tuple[str, list[dict[str, Any]]], admin: Client
) -> None:
    _, rows = seeded
    params = {"kind": "security", "actor": "lab1"}
    want = model(rows, params)
    out = admin.run("events", "--kind", "security", "--actor", "lab1", "--limit", "2000", "--json")
    assert [e["id"] for e in json.loads(out.stdout)] == want
    # Values that need escaping in a query string go through as they are.
    params = {"kind": "login,security", "since": "2023-11-20T10:00:00+01:00", "q": "alpha beta"}
    out = admin.run("events", "--kind", "login", "--kind", "security", "--since",
                    params["since"], "--search", "alpha beta", "--limit", "2000", "--json")  # fmt: skip
    assert [e["id"] for e in json.loads(out.stdout)] == model(rows, params) != []
    text = admin.run("events", "--search", "zanzibar").stdout
    (line,) = text.splitlines()
    assert "note=zanzibar" in line
    table = admin.run("events", "--kind", "security", "--actor", "lab1", "--csv", "-").stdout
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(table))] == want
    bad = admin.run("events", "--since", "soon", check=False)
    assert bad.returncode == 2 and "since must be epoch seconds" in bad.stderr
