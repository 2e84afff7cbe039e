"""The console's Events and Transfers pages and the dashboard's
throughput chart, through a real hub with the session cookie: the filters,
sorting links, next-page links and export links of the event log; a push
in flight with its progress bar and its verdict once done; every page
without inline code, and admin-only data refused to others."""

from __future__ import annotations

import asyncio
import csv
import html as htmllib
import io
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from tests.authsupport import rest
from tests.consolesupport import ADMIN_ONLY, CSP, Browser, inline_code
from tests.hostile import token_of
from tests.relaysupport import BOB_PASSWORD, Proc
from tests.support import Client, Hub, random_file

SEEDED = 70


@pytest.fixture(scope="module")
def seeded(shared_hub: Hub) -> None:
    con = sqlite3.connect(shared_hub.data / "freight.db")
    with con:
        con.executemany(
            "INSERT INTO events (ts, kind, actor, detail, agent, address) VALUES (?,?,?,?,?,?)",
            [
                (1_700_000_000.0 + i, "seeded_test", f"actor{i % 3}", json.dumps({"n": i}), "", "")
                for i in range(SEEDED)
            ],
        )
    con.close()


def rows_of(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-id="(\d+)">', page)]


def link(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}" href="([^"]+)"', page)
    assert m, page[:3000]
    return htmllib.unescape(m.group(1))


@pytest.mark.usefixtures("seeded")
async def test_events_page_filters_sorts_and_pages_by_cursor(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        first = await b.page("/console/events?kind=seeded_test")
        assert inline_code(first) == []
        assert 'name="kind" value="seeded_test"' in first
        ids = rows_of(first)
        assert len(ids) == 50 and ids == sorted(ids, reverse=True)
        second = await b.page(link(first, "next-page"))
        rest_ids = rows_of(second)
        assert len(rest_ids) == SEEDED - 50 and not set(ids) & set(rest_ids)
        assert 'id="next-page"' not in second and 'id="first-page"' in second
        # The header sorts by actor, then the same link again reverses it.
        by_actor = await b.page(link(first, "sort-actor"))
        actors = re.findall(r"<td>seeded_test</td><td>(actor\d)</td>", by_actor)
        assert actors == sorted(actors, reverse=True) and actors[0] == "actor2"
        upward = await b.page(link(by_actor, "sort-actor"))
        assert re.findall(r"<td>seeded_test</td><td>(actor\d)</td>", upward)[0] == "actor0"
        # Search, and a live table only on the first page.
        found = await b.page("/console/events?q=seeded&actor=actor1")
        assert len(rows_of(found)) == len(range(1, SEEDED, 3))
        assert 'hx-trigger="sse:events"' in found and 'hx-trigger="none"' in second
        fragment = await b.page("/console/events/table?kind=seeded_test&sort=ts")
        assert rows_of(fragment) == sorted(rows_of(fragment))[:50]
        # The export links give every matching event, with the same filters.
        status, text, headers = await b.get(link(first, "export-csv"))
        assert status == 200 and "attachment" in headers["Content-Disposition"]
        table = list(csv.DictReader(io.StringIO(text)))
        assert sorted(int(r["id"]) for r in table) == sorted(ids + rest_ids)
        status, text, _ = await b.get(link(first, "export-json"))
        assert sorted(e["id"] for e in json.loads(text)) == sorted(ids + rest_ids)
        bad = await b.page("/console/events?since=someday")
        assert "since must be epoch seconds (1767225600) or ISO 8601" in bad and rows_of(bad) == []


async def test_events_page_is_for_admins(shared_hub: Hub, admin: Client) -> None:
    status, body = rest(
        shared_hub,
        "POST",
        "/v1/users",
        {"name": "erin", "password": BOB_PASSWORD},
        token=token_of(admin),
    )
    assert status == 201, body
    async with Browser(shared_hub) as b:
        await b.login("erin", BOB_PASSWORD)
        page = await b.page("/console/events")
        assert ADMIN_ONLY in page and rows_of(page) == []
        chart = await b.page("/console/dashboard/throughput")
        assert "<svg" not in chart


async def test_transfers_page_shows_progress_then_the_verdict(
    tmp_path: Path, shared_hub: Hub, bob: Client
) -> None:
    src = random_file(tmp_path / "watched.bin", 4 * 1024 * 1024, seed=9)
    async with Browser(shared_hub) as b:
        await b.login("bob", BOB_PASSWORD)
        with Proc(bob, "push", str(src), "--limit", "1M", "--quiet") as push:
            seen: list[str] = []

            async def poll() -> bool:
                page = await b.page("/console/transfers")
                seen[:] = [page]
                return bool(re.search(r'<progress value="[1-9]\d*" max="4194304">', page))

            deadline = time.monotonic() + 20
            while not await poll() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            page = seen[0]
            assert re.search(r'<progress value="[1-9]\d*" max="4194304">', page), page[-3000:]
            assert "watched.bin" in page and inline_code(page) == []
            assert push.wait(30) == 0, push.stderr
        done = await b.page("/console/transfers/table")
        assert re.search(r"<td>watched\.bin</td><td class=\"num\">4\.0 MiB</td>"
                         r"<td class=\"online\">verified</td>", done), done  # fmt: skip


async def test_dashboard_draws_the_hours_throughput(shared_hub: Hub) -> None:
    async with Browser(shared_hub) as b:
        await b.login()
        dashboard = await b.page("/")
        assert 'hx-get="/console/dashboard/throughput"' in dashboard
        status, chart, headers = await b.get("/console/dashboard/throughput")
        assert status == 200 and headers["Content-Security-Policy"] == CSP
        assert '<svg id="throughput-svg"' in chart and 'id="throughput-now"' in chart
        assert inline_code(chart) == []


def test_chart_points_put_the_last_minute_at_the_right_edge() -> None:
    from freight.hub.console.observepages import CHART_H, CHART_W, chart_points

    points, top = chart_points([{"t": 0, "bytes_per_second": v} for v in (0.0, 50.0, 100.0)])
    assert top == 100.0
    xs = [float(p.split(",")[0]) for p in points.split()]
    ys = [float(p.split(",")[1]) for p in points.split()]
    assert xs[-1] == pytest.approx(CHART_W) and ys == [CHART_H, CHART_H / 2, 0.0]
    assert chart_points([]) == ("", 1.0)
