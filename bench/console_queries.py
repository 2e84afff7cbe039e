"""Time to first byte of each table request the console makes, against a
real hub on a seeded data folder (bench/console_seed.py: 10,000 agents,
1,000,000 events).

    python bench/console_seed.py /tmp/console-data
    python bench/console_queries.py /tmp/console-data [--rounds 20] [--markdown FILE]

Starts ``freight hub`` on the folder (loopback, an ephemeral port), logs in
as admin, and sends each request ``--rounds`` times over one keep-alive
HTTPS connection, rows in rotating order; the time is from sending the
request until the status line and headers are in (the first byte of the
answer; the body is then read whole and thrown away). Prints the median
and the worst per request."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

PASSWORD = "console-bench-password"
RARE = "quokka"


def start_hub(data: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "FREIGHT_ADMIN_PASSWORD": PASSWORD}
    cmd = [sys.executable, "-m", "freight", "hub", "--data", str(data)]
    proc = subprocess.Popen(
        [*cmd, "--listen", "127.0.0.1:0"], env=env, stderr=subprocess.PIPE, text=True
    )
    port: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if m := re.search(r"listening on https://127\.0\.0\.1:(\d+)", line):
                port.append(int(m.group(1)))
            if "fingerprint:" in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        raise SystemExit("the hub did not start")
    return proc, port[0]


class Conn:
    def __init__(self, port: int) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.http = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
        self.token = ""

    def call(self, method: str, path: str, body: Any = None) -> tuple[float, int, bytes]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        self.http.request(method, path, body=data, headers=headers)
        resp = self.http.getresponse()  # the status line and headers are in
        ttfb = time.perf_counter() - t0
        return ttfb, resp.status, resp.read()

    def get(self, path: str) -> Any:
        _, status, raw = self.call("GET", path)
        if status != 200:
            raise SystemExit(f"GET {path}: {status} {raw[:300]!r}")
        return json.loads(raw)


def deep_cursor(c: Conn, pages: int) -> str:
    """The cursor ``pages`` pages of 1,000 into the log, newest first."""
    cursor = ""
    for _ in range(pages):
        q = "/v1/admin/events?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        cursor = c.get(q)["next"]
    return cursor


def requests(c: Conn) -> list[tuple[str, str]]:
    ev = "/v1/admin/events?"
    some = c.get(ev + "kind=agent_login&limit=1")["events"][0]
    month_ago = time.time() - 20 * 86400
    window = urllib.parse.urlencode(
        {"since": f"{month_ago:.0f}", "until": f"{month_ago + 3600:.0f}"}
    )
    cursor = deep_cursor(c, 500)
    return [
        ("events, newest 100", ev + "limit=100"),
        ("events, kind=agent_login", ev + "kind=agent_login"),
        ("events, kind=security (rare kind)", ev + "kind=security"),
        ("events, 3 kinds", ev + "kind=login_failure,security,agent_login_failure"),
        ("events, actor=user042", ev + "actor=user042"),
        ("events, agent=" + some["agent"], ev + "agent=" + some["agent"]),
        ("events, address=" + some["address"], ev + "address=" + some["address"]),
        ("events, one hour 20 days ago", ev + window),
        (f"events, q={RARE} (one match)", ev + f"q={RARE}"),
        ("events, q=backup (common word)", ev + "q=backup"),
        ("events, q=login (half the log)", ev + "q=login"),
        ("events, q=quokka&kind=login (none)", ev + f"q={RARE}&kind=login"),
        ("events, sort=kind", ev + "sort=kind"),
        ("events, sort=-actor, kind=login", ev + "sort=-actor&kind=login"),
        ("events, page 501 by cursor", ev + f"limit=100&cursor={cursor}"),
        ("events, CSV export (first byte)", ev + "format=csv&limit=100000"),
        ("agents, first page of 100", "/v1/agents?limit=100"),
        ("agents, all 10,000", "/v1/agents"),
        ("agents, page 51 by name", "/v1/agents?limit=100&after=lab-05000"),
        ("users, first page of 100", "/v1/users?limit=100"),
        ("users, all 10,001", "/v1/users"),
        ("connections, newest 100", "/v1/admin/connections?limit=100"),
        ("transfers in flight", "/v1/transfers"),
        ("transfers done", "/v1/transfers?state=done"),
        ("overview", "/v1/admin/overview"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    proc, port = start_hub(args.data)
    try:
        c = Conn(port)
        _, status, raw = c.call("POST", "/v1/login", {"user": "admin", "password": PASSWORD})
        if status != 200:
            raise SystemExit(f"login: {status} {raw!r}")
        c.token = json.loads(raw)["token"]
        rows = requests(c)
        times: dict[str, list[float]] = {name: [] for name, _ in rows}
        sizes: dict[str, int] = {}
        for r in range(args.rounds):
            for name, path in rows[r % len(rows) :] + rows[: r % len(rows)]:
                ttfb, status, body = c.call("GET", path)
                if status != 200:
                    raise SystemExit(f"{name}: {status} {body[:300]!r}")
                times[name].append(ttfb * 1000)
                sizes[name] = len(body)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [
        f"| request ({args.rounds} rounds) | median ms | worst ms | answer bytes |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, _ in rows:
        t = times[name]
        lines.append(f"| {name} | {statistics.median(t):.1f} | {max(t):.1f} | {sizes[name]:,} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
