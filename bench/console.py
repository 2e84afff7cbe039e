"""The web console at scale, in a real browser (docs/benchmarks.md "Console"):

    .venv/bin/python bench/console.py [--agents 10000] [--events 1000000]
        [--samples 20] [--live 10] [--conns 1000] [--minute 60] [--cpu-rounds 1]
        [--size 1G] [--rounds 3] [--only ttfb,weight,live,cost] [--markdown FILE]
        [--json FILE] [--screenshot PNG]

Set-up: one `freight hub` (bench/relay.py's RelayHub: admin, `alice` and
`bob` logged in, `--max-relay-connections` raised), stopped once its
database exists, seeded with --agents agent accounts and --events events
(bench/console_seed.py when it exists, else the small bulk seeder below, in
one transaction each), then started again on the same folder. The console
is logged into through its own form (`POST /console/login`); its pages are
the links of the dashboard's navigation, its tables the `hx-get` addresses
those pages load. The browser is Debian's Chromium (/usr/bin/chromium)
driven by Playwright.

Measured:

ttfb    per page and table address: 2 warm-up requests, then --samples GETs
        on one kept-alive connection with the session cookie; time from
        sending the request to the response's status line and headers
        (aiohttp returns then, before the body); median and worst.
weight  per page, in a fresh browser context (empty cache): the bytes of
        every response the page loads (document, scripts, styles, the table
        fragments it fetches at once; the event stream left out), headers
        included, from Playwright's request sizes, once the page has been
        quiet for 0.5 s.
live    the Connections page open in Chromium; per sample `alice` connects
        to `bob` (SDK, a new application name each time); time from just
        before `connect()` to the application's name being visible in the
        page (no reload); median and worst of --live samples. The same for
        the Events page when it exists: time from `POST /v1/users` (a new
        account) to its name being visible there.
cost    --conns relayed connections held open by a helper process (one
        RelayClient per side, alice dials bob), then, alternating, a minute
        (--minute seconds) with no console open and one with the dashboard
        and the Connections page open in Chromium: the hub process's CPU
        (user + system, /proc) as % of one core in each; the difference is
        what the open console costs. Then --rounds pushes of --size (a
        random file; `freight push` as admin) alternating without and with
        the console open; median MB/s of each and the loss.

Targets: every page and table < 100 ms to first byte (median and worst);
a change visible in the open page < 1 s; open console < 2 % of a core and
< 5 % push throughput lost; page weight < 150 KB. Exit status 1 if a target
is missed or a part failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
import relay
from peers import FREIGHT, PeerError

from bench import markdown_table, parse_size, write_random

REPO_DIR = peers.REPO_DIR
DEFAULT_TMP = REPO_DIR / ".bench-tmp" / "console"  # gitignored
CHROMIUM = Path(os.environ.get("FREIGHT_BENCH_CHROMIUM", "/usr/bin/chromium"))
SEED_SCRIPT = Path(__file__).resolve().parent / "console_seed.py"
COOKIE = "freight_session"
TARGET_HEADERS = ["target", "measured", "verdict"]
TTFB_TARGET = 0.100
LIVE_TARGET = 1.0
CPU_TARGET = 2.0  # % of one core
LOSS_TARGET = 5.0  # % of push throughput
WEIGHT_TARGET = 150_000  # bytes
PW_TIMEOUT_MS = 10_000
LISTENS = 60  # applications one holding account listens for (the hub allows 64)
HOLD_PREFIX = "hold"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ------------------------------------------------------------------ the hub


class ConsoleHub(relay.RelayHub):
    """RelayHub that can be stopped and started again on the same folder
    (the logins of its client folders stay valid: they live in the database)."""

    def restart(self, log_name: str) -> None:
        peers.stop_server(self.proc)
        cmd = [
            str(FREIGHT), "hub", "--data", str(self.data),
            "--listen", f"127.0.0.1:{self.port}", *self.hub_args,
        ]  # fmt: skip
        env = peers._freight_env(FREIGHT_ADMIN_PASSWORD=self.password)
        self.proc = peers.start_server(cmd, self.dir / log_name, env=env)
        peers._wait_health(self.url, self.proc, timeout=600)

    def accounts(self, prefix: str, n: int) -> list[Path]:
        """``n`` more accounts ``<prefix>0`` ... logged in, each with its own
        client folder (made once, kept for later calls)."""
        fingerprint = peers.freight_fingerprint(self.data)

        def make(k: int) -> Path:
            user = f"{prefix}{k}"
            if user not in self.cfgs:
                self._run(
                    self.cfg, "users", "add", user, "--password-stdin", stdin=relay.USER_PASSWORD
                )
                cfg = self.dir / f"client-{user}"
                cfg.mkdir()
                self._run(
                    cfg, "login", self.url, "--user", user, "--password-stdin",
                    "--fingerprint", fingerprint, stdin=relay.USER_PASSWORD,
                )  # fmt: skip
                self.cfgs[user] = cfg
            return self.cfgs[user]

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(make, range(n)))

    def token(self, user: str | None = None) -> str:
        cfg_dir = self.cfg if user is None else self.cfgs[user]
        cfg = json.loads((cfg_dir / "config.json").read_text())
        return str(cfg["hubs"][cfg["hub"]]["token"])

    def cpu_seconds(self) -> float:
        """The hub process's user + system CPU so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ seeding

KINDS = [
    ("login", 30), ("agent_login", 30), ("login_failure", 6), ("agent_login_failure", 2),
    ("logout", 5), ("command_", 8), ("command_failed", 1), ("pull_start", 5),
    ("file_removed", 2), ("key_added", 2), ("link_created", 1), ("link_used", 2),
    ("security", 2), ("sessions_closed", 1), ("connection_killed", 1), ("code_offered", 2),
]  # fmt: skip


def seed_database(db_path: Path, agents: int, events: int, *, seed: int = 20261204) -> None:
    """Bulk-insert ``agents`` agent accounts and ``events`` events straight
    into a hub's SQLite database (the hub stopped), each table in one
    transaction. Columns the events table gained beyond (ts, kind, actor,
    detail) that are named ``agent`` or ``address`` are filled as well (an
    index the schema fills by trigger fills itself)."""
    rng = random.Random(seed)
    con = sqlite3.connect(db_path)
    now = time.time()
    try:
        users = [r[0] for r in con.execute("SELECT name FROM users WHERE role != 'agent'")]
        with con:
            con.executemany(
                "INSERT INTO users (name, pw_hash, role, disabled, created, quota)"
                " VALUES (?, '!', 'agent', 0, ?, 0)",
                ((f"host-{i:05d}", now - 86400 * 30) for i in range(agents)),
            )
            ids = con.execute("SELECT id, name FROM users WHERE role = 'agent'").fetchall()
            con.executemany(
                "INSERT INTO agents (user_id, enrolled, last_seen, version, address, cap)"
                " VALUES (?, ?, ?, '0.1.0', ?, 0)",
                (
                    (uid, now - 86400 * 30, now - rng.uniform(0, 86400), f"10.{uid % 250}.{uid // 250 % 250}.7")
                    for uid, _ in ids
                ),
            )  # fmt: skip
        names = [n for _, n in ids] or ["host-00000"]
        cols = {r[1] for r in con.execute("PRAGMA table_info(events)")}
        extra = [c for c in ("agent", "address") if c in cols]
        kinds = [k for k, _ in KINDS]
        weights = [w for _, w in KINDS]
        span = 86400.0 * 30

        def rows() -> Any:
            for i in range(events):
                kind = rng.choices(kinds, weights)[0]
                agent = rng.choice(names)
                address = f"10.{rng.randrange(250)}.{rng.randrange(250)}.{rng.randrange(1, 250)}"
                actor = agent if kind.startswith(("agent", "command")) else rng.choice(users)
                detail = {"agent": agent, "address": address, "n": i}
                row = [now - span + span * i / events, kind, actor, json.dumps(detail)]
                row += [{"agent": agent, "address": address}[c] for c in extra]
                yield row

        names_sql = ", ".join(["ts", "kind", "actor", "detail", *extra])
        marks = ", ".join("?" * (4 + len(extra)))
        with con:
            con.executemany(f"INSERT INTO events ({names_sql}) VALUES ({marks})", rows())
    finally:
        con.close()


def seed(hub: ConsoleHub, agents: int, events: int) -> str:
    """Seed the stopped hub's database; which seeder did it."""
    db = hub.data / "freight.db"
    if SEED_SCRIPT.exists():
        cmd = [sys.executable, str(SEED_SCRIPT), str(hub.data)]
        cmd += ["--agents", str(agents), "--events", str(events)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise PeerError(f"{SEED_SCRIPT.name} exited {res.returncode}: {res.stderr[-800:]}")
        return "bench/console_seed.py"
    seed_database(db, agents, events)
    return "bench/console.py's own seeder"


# ------------------------------------------------------------------ pages


class Links(HTMLParser):
    """The navigation's links and every ``hx-get`` address of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.nav = 0
        self.links: list[str] = []
        self.hx: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "nav":
            self.nav += 1
        if tag == "a" and self.nav and a.get("href"):
            self.links.append(str(a["href"]))
        if a.get("hx-get"):
            self.hx.append(str(a["hx-get"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav" and self.nav:
            self.nav -= 1


def own_path(base: str, href: str) -> str | None:
    """``href`` as a path on the hub, or None for another site, a fragment,
    logging out, static files or the event stream."""
    url = urlsplit(urljoin(base + "/", href))
    if url.netloc != urlsplit(base).netloc:
        return None
    path = url.path + (f"?{url.query}" if url.query else "")
    skip = ("/console/logout", "/console/static", "/console/stream", "/console/login")
    return None if path.startswith(skip) else path


@dataclass
class Console:
    url: str
    cookie: str
    pages: list[str] = field(default_factory=list)
    tables: dict[str, list[str]] = field(default_factory=dict)  # page -> its hx-get paths


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the hub's self-signed certificate, on 127.0.0.1
    return ctx


async def login_console(hub: ConsoleHub) -> Console:
    """Log in through the console's form; find its pages and their tables."""
    import aiohttp

    jar = aiohttp.CookieJar(unsafe=True)
    conn = aiohttp.TCPConnector(ssl=insecure())
    async with aiohttp.ClientSession(cookie_jar=jar, connector=conn) as s:
        form = {"name": "admin", "password": hub.password}
        async with s.post(f"{hub.url}/console/login", data=form, allow_redirects=False) as r:
            if r.status >= 400:
                raise PeerError(f"console login answered {r.status}: {(await r.text())[:300]}")
        cookie = next((c.value for c in jar if c.key == COOKIE), "")
        if not cookie:
            raise PeerError(f"console login set no {COOKIE} cookie")
        console = Console(hub.url, cookie)
        parser = Links()
        async with s.get(f"{hub.url}/", allow_redirects=False) as r:
            if r.status != 200:
                raise PeerError(f"the dashboard answered {r.status} after logging in")
            parser.feed(await r.text())
        pages = ["/"] + [p for h in parser.links if (p := own_path(hub.url, h)) and p != "/"]
        console.pages = list(dict.fromkeys(pages))
        for page in console.pages:
            async with s.get(f"{hub.url}{page}", allow_redirects=False) as r:
                p = Links()
                p.feed(await r.text())
            console.tables[page] = list(
                dict.fromkeys(t for h in p.hx if (t := own_path(hub.url, h)))
            )
    return console


# ------------------------------------------------------------------ ttfb


async def ttfb(console: Console, samples: int) -> list[dict[str, Any]]:
    import aiohttp

    out: list[dict[str, Any]] = []
    conn = aiohttp.TCPConnector(ssl=insecure(), limit=1)
    headers = {"Cookie": f"{COOKIE}={console.cookie}"}
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:
        paths = [(p, "page") for p in console.pages]
        paths += [(t, f"table of {p}") for p in console.pages for t in console.tables[p]]
        for path, what in dict.fromkeys(paths):
            times: list[float] = []
            statuses: set[int] = set()
            size = 0
            for k in range(2 + samples):
                t0 = time.perf_counter()
                async with s.get(console.url + path, allow_redirects=False) as r:
                    t1 = time.perf_counter()
                    body = await r.read()
                statuses.add(r.status)
                size = len(body)
                if k >= 2:
                    times.append(t1 - t0)
            row = {"path": path, "what": what, "median": statistics.median(times)}
            row |= {"worst": max(times), "status": sorted(statuses), "bytes": size}
            out.append(row)
            log(f"ttfb {path}: median {ms(row['median'])}, worst {ms(row['worst'])}")
    return out


# ------------------------------------------------------------------ the browser


async def new_context(browser: Any, console: Console) -> Any:
    ctx = await browser.new_context(
        base_url=console.url, ignore_https_errors=True, viewport={"width": 1280, "height": 800}
    )
    ctx.set_default_timeout(PW_TIMEOUT_MS)
    await ctx.add_cookies(
        [{"name": COOKIE, "value": console.cookie, "url": console.url, "secure": True,
          "httpOnly": True, "sameSite": "Strict"}]
    )  # fmt: skip
    return ctx


async def page_weight(browser: Any, console: Console, path: str) -> dict[str, Any]:
    """What one page load transfers, in a fresh context (empty cache)."""
    ctx = await new_context(browser, console)
    page = await ctx.new_page()
    pending: set[Any] = set()
    finished: list[Any] = []
    last = [time.monotonic()]

    def started(req: Any) -> None:
        if req.resource_type != "eventsource":
            pending.add(req)
            last[0] = time.monotonic()

    def ended(req: Any, ok: bool = True) -> None:
        if req in pending:
            pending.discard(req)
            if ok:
                finished.append(req)
            last[0] = time.monotonic()

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", lambda req: ended(req, False))
    try:
        await page.goto(path, wait_until="load")
        deadline = time.monotonic() + 10
        while (pending or time.monotonic() - last[0] < 0.5) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        kinds: dict[str, int] = {}
        for req in finished:
            sizes = await req.sizes()
            n = sizes["responseBodySize"] + sizes["responseHeadersSize"]
            kinds[req.resource_type] = kinds.get(req.resource_type, 0) + n
    finally:
        await ctx.close()
    return {"path": path, "total": sum(kinds.values()), "kinds": kinds, "requests": len(finished)}


async def weight(browser: Any, console: Console) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in console.pages:
        row = await page_weight(browser, console, path)
        out.append(row)
        log(f"weight {path}: {row['total'] / 1000:.1f} KB in {row['requests']} responses")
    return out


async def live(browser: Any, hub: ConsoleHub, console: Console, samples: int) -> dict[str, Any]:
    """A relayed connection opening, and an event, to their rows showing."""
    import aiohttp

    out: dict[str, Any] = {"connections": [], "events": []}
    ctx = await new_context(browser, console)
    page = await ctx.new_page()
    a = await relay._relay_client(str(hub.cfgs[relay.SENDER]), "auto")
    b = await relay._relay_client(str(hub.cfgs[relay.RECEIVER]), "auto")
    try:
        table = "/console/connections" in console.pages
        await page.goto("/console/connections" if table else "/", wait_until="load")
        tile = page.locator("#live-connections")  # the dashboard's count otherwise
        for i in range(samples + 1):
            app = f"live-{i}-{random.randrange(1 << 30):x}"
            lst = await b.listen(app, relay.SENDER)
            accepted = asyncio.create_task(lst.accept())
            before = "" if table else await tile.inner_text()
            t0 = time.perf_counter()
            conn = await a.connect(relay.RECEIVER, app, timeout=30)
            if table:
                await page.get_by_text(app).first.wait_for(state="visible")
            else:
                await page.wait_for_function(
                    "b => document.querySelector('#live-connections')?.textContent.trim() !== b",
                    arg=before.strip(),
                )
            if i:  # the first one warms the page's stream up
                out["connections"].append(time.perf_counter() - t0)
            other = await asyncio.wait_for(accepted, 30)
            before = "" if table else await tile.inner_text()
            await conn.abort()
            await other.abort()
            if table:
                await page.get_by_text(app).first.wait_for(state="detached")
            else:
                await page.wait_for_function(
                    "b => document.querySelector('#live-connections')?.textContent.trim() !== b",
                    arg=before.strip(),
                )
        out["where"] = "Connections page row" if table else "dashboard's live connections count"
        if "/console/events" in console.pages:
            await page.goto("/console/events", wait_until="load")
            headers = {"Authorization": f"Bearer {hub.token()}"}
            conn_ = aiohttp.TCPConnector(ssl=insecure())
            async with aiohttp.ClientSession(connector=conn_, headers=headers) as s:
                for i in range(samples + 1):
                    name = f"live{i}x{random.randrange(1 << 30):x}"
                    body = {"name": name, "password": relay.USER_PASSWORD}
                    t0 = time.perf_counter()
                    async with s.post(f"{hub.url}/v1/users", json=body) as r:
                        if r.status >= 300:
                            raise PeerError(f"POST /v1/users answered {r.status}")
                    await page.get_by_text(name).first.wait_for(state="visible")
                    if i:
                        out["events"].append(time.perf_counter() - t0)
    finally:
        await a.aclose()
        await b.aclose()
        await ctx.close()
    for k in ("connections", "events"):
        if out[k]:
            log(f"live {k}: median {ms(statistics.median(out[k]))}, worst {ms(max(out[k]))}")
    return out


# ------------------------------------------------------------------ held connections


async def _hold(args: argparse.Namespace) -> None:
    """Internal: --conns relayed connections from the dialer to the
    listening accounts (at most LISTENS applications each, the hub's limit
    of listens per account), held open until stdin closes; JSON lines on
    stdout."""
    a = await relay._relay_client(args.dialer, "auto")
    listeners = [await relay._relay_client(cfg, "auto") for cfg in args.listener]
    try:
        plan = [(k, f"hold-{i}") for k in range(len(listeners)) for i in range(LISTENS)]
        plan = plan[: args.conns]
        lsts = await asyncio.gather(*(listeners[k].listen(app, relay.SENDER) for k, app in plan))
        sem = asyncio.Semaphore(64)

        async def one(k: int, app: str) -> Any:
            async with sem:
                return await a.connect(f"{HOLD_PREFIX}{k}", app, timeout=120)

        dialled = await asyncio.gather(*(one(k, app) for k, app in plan))
        accepted = await asyncio.gather(*(lst.accept() for lst in lsts))
        relay._emit("ready", conns=len(dialled), ends=len(dialled) + len(accepted))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for c in dialled:
            with contextlib.suppress(Exception):
                await c.abort()
    finally:
        await a.aclose()
        for b in listeners:
            await b.aclose()


class Holder:
    """The helper process that holds the relayed connections."""

    def __init__(self, hub: ConsoleHub, conns: int, work: Path) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_hold", "--conns", str(conns)]
        cmd += ["--dialer", str(hub.cfgs[relay.SENDER])]
        for cfg in hub.accounts(HOLD_PREFIX, -(-conns // LISTENS)):
            cmd += ["--listener", str(cfg)]
        self.err = work / "holder.log"
        with open(self.err, "wb") as err:
            self.p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )

    def ready(self, timeout: float) -> int:
        assert self.p.stdout is not None
        timer = threading.Timer(timeout, self.p.kill)  # a hung helper ends the wait
        timer.start()
        why = "it exited"
        try:
            while line := self.p.stdout.readline():
                msg = json.loads(line)
                if msg.get("event") == "ready":
                    return int(msg["conns"])
                if msg.get("event") == "error":
                    why = str(msg.get("error"))
                    break
        finally:
            timer.cancel()
        raise PeerError(f"the connection holder failed ({why}): {self.err.read_text()[-800:]}")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.p.stdin is not None
            self.p.stdin.close()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)


async def open_console(browser: Any, console: Console) -> Any:
    """The dashboard and the Connections page open, as an operator has them."""
    ctx = await new_context(browser, console)
    for path in ("/", "/console/connections"):
        page = await ctx.new_page()
        await page.goto(path, wait_until="load")
    return ctx


async def hub_cpu(hub: ConsoleHub, seconds: float) -> float:
    c0, t0 = hub.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100.0 * (hub.cpu_seconds() - c0) / (time.monotonic() - t0)


async def cost(
    browser: Any, hub: ConsoleHub, console: Console, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"cpu_without": [], "cpu_with": [], "push_without": [], "push_with": []}
    holder = Holder(hub, args.conns, args.tmp)
    try:
        out["conns"] = holder.ready(600)
        log(f"cost: {out['conns']} relayed connections held open")
        listed = await asyncio.to_thread(admin_json, hub, "/v1/admin/connections")
        out["listed"] = len(listed)
        for k in range(args.cpu_rounds):
            out["cpu_without"].append(await hub_cpu(hub, args.minute))
            ctx = await open_console(browser, console)
            await asyncio.sleep(3)  # the pages' first loads are not the steady state
            if args.screenshot and k == 0:
                dashboard = ctx.pages[0]
                with contextlib.suppress(Exception):  # a moment with no refresh in flight
                    await dashboard.wait_for_function(
                        "() => !document.querySelector('.htmx-request')", timeout=5000
                    )
                await dashboard.screenshot(path=str(args.screenshot))
                log(f"saved the dashboard as {args.screenshot}")
            out["cpu_with"].append(await hub_cpu(hub, args.minute))
            await ctx.close()
            log(f"cost round {k}: hub CPU {out['cpu_without'][-1]:.2f} % without the console, "
                f"{out['cpu_with'][-1]:.2f} % with it")  # fmt: skip
        src = args.tmp / "push.bin"
        write_random(src, args.size)
        for k in range(args.rounds):
            for with_console in (False, True) if k % 2 == 0 else (True, False):
                ctx = await open_console(browser, console) if with_console else None
                name = f"console-bench-{k}-{int(with_console)}"
                t = await asyncio.to_thread(hub.push, src, name)
                mbps = t.nbytes / t.seconds / 1e6
                out["push_with" if with_console else "push_without"].append(mbps)
                log(
                    f"push round {k}: {mbps:.0f} MB/s {'with' if with_console else 'without'} the console"
                )
                if ctx is not None:
                    await ctx.close()
                await asyncio.to_thread(admin_call, hub, "DELETE", f"/v1/files/{name}")
        src.unlink()
    finally:
        holder.stop()
    return out


def admin_call(hub: ConsoleHub, method: str, path: str) -> Any:
    import urllib.request

    req = urllib.request.Request(
        hub.url + path, method=method, headers={"Authorization": f"Bearer {hub.token()}"}
    )
    with urllib.request.urlopen(req, context=insecure(), timeout=60) as r:
        return json.loads(r.read())


def admin_json(hub: ConsoleHub, path: str) -> Any:
    return admin_call(hub, "GET", path)


# ------------------------------------------------------------------ report


def report(res: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    parts: list[str] = []
    targets: list[list[str]] = []
    ok = not res.get("errors")
    if "ttfb" in res:
        rows = [
            [f"`{r['path']}`", r["what"], ms(r["median"]), ms(r["worst"]),
             ",".join(map(str, r["status"])), f"{r['bytes']:,}"]
            for r in res["ttfb"]
        ]  # fmt: skip
        parts += [f"### Time to first byte, {args.samples} samples each", "",
                  markdown_table(["address", "what", "median", "worst", "status", "body bytes"], rows), ""]  # fmt: skip
        worst = max(res["ttfb"], key=lambda r: r["worst"])
        good = worst["worst"] < TTFB_TARGET and all(r["status"] == [200] for r in res["ttfb"])
        targets.append(["every page and table < 100 ms to first byte (worst of all)",
                        f"{ms(worst['worst'])} (`{worst['path']}`)", verdict(good)])  # fmt: skip
        ok &= good
    if "weight" in res:
        rows = [
            [f"`{r['path']}`", f"{r['total'] / 1000:.1f} KB", str(r["requests"]),
             ", ".join(f"{k} {v / 1000:.1f} KB" for k, v in sorted(r["kinds"].items()))]
            for r in res["weight"]
        ]  # fmt: skip
        parts += ["### Page weight (empty cache; the event stream left out)", "",
                  markdown_table(["page", "total", "responses", "by type"], rows), ""]  # fmt: skip
        heavy = max(res["weight"], key=lambda r: r["total"])
        good = heavy["total"] < WEIGHT_TARGET
        targets.append(["page weight < 150 KB (heaviest page)",
                        f"{heavy['total'] / 1000:.1f} KB (`{heavy['path']}`)", verdict(good)])  # fmt: skip
        ok &= good
    if "live" in res:
        rows = []
        where = res["live"].get("where", "")
        for k, what in (("connections", f"relayed connection opened → {where}"),
                        ("events", "account added (`POST /v1/users`) → its event in Events")):  # fmt: skip
            v = res["live"].get(k) or []
            if v:
                rows.append([what, ms(statistics.median(v)), ms(max(v)), str(len(v))])
                good = max(v) < LIVE_TARGET
                targets.append(
                    [f"live change visible < 1 s ({k}, worst)", ms(max(v)), verdict(good)]
                )
                ok &= good
        parts += ["### Live updates in the open page (Chromium, no reload)", "",
                  markdown_table(["change", "median", "worst", "samples"], rows), ""]  # fmt: skip
    if "cost" in res:
        c = res["cost"]
        cpu_a, cpu_b = statistics.median(c["cpu_without"]), statistics.median(c["cpu_with"])
        push_a, push_b = statistics.median(c["push_without"]), statistics.median(c["push_with"])
        loss = 100.0 * (push_a - push_b) / push_a
        rows = [
            ["hub CPU, % of one core (median of minutes)", f"{cpu_a:.2f} %", f"{cpu_b:.2f} %",
             f"{cpu_b - cpu_a:+.2f} points"],
            [f"1 push of {args.size_text}, MB/s (median of {args.rounds})", f"{push_a:.0f}",
             f"{push_b:.0f}", f"{-loss:+.1f} %"],
        ]  # fmt: skip
        parts += [f"### An open console (dashboard + Connections) with {c['conns']:,} relayed "
                  f"connections held open ({c['listed']:,} listed by the hub)", "",
                  markdown_table(["", "no console open", "console open", "difference"], rows), "",
                  f"- CPU minutes ({args.minute:.0f} s each), without / with: "
                  + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(c["cpu_without"], c["cpu_with"], strict=True)),
                  "- pushes without / with, MB/s: "
                  + ", ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(c["push_without"], c["push_with"], strict=True)),
                  ""]  # fmt: skip
        good = cpu_b - cpu_a < CPU_TARGET
        targets.append(
            ["open console < 2 % of a core", f"{cpu_b - cpu_a:+.2f} points", verdict(good)]
        )
        ok &= good
        good = loss < LOSS_TARGET
        targets.append(["open console < 5 % push throughput lost", f"{loss:.1f} %", verdict(good)])
        ok &= good
    for e in res.get("errors", []):
        targets.append([e, "failed", "MISSED"])
    parts += ["### Targets", "", markdown_table(TARGET_HEADERS, targets), ""]
    return "\n".join(parts), ok


# ------------------------------------------------------------------ main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    res: dict[str, Any] = {"errors": []}
    hub = ConsoleHub(args.tmp, ["--max-relay-connections", str(max(4096, 2 * args.conns))])
    try:
        hub.start()
        if args.agents or args.events:
            t = time.monotonic()
            peers.stop_server(hub.proc)
            res["seeder"] = seed(hub, args.agents, args.events)
            log(
                f"seeded {args.agents:,} agents and {args.events:,} events in {time.monotonic() - t:.0f} s"
            )
            hub.restart("hub-seeded.log")
        console = await login_console(hub)
        log(f"console pages: {console.pages}; tables: {console.tables}")
        if "ttfb" in args.only:
            res["ttfb"] = await ttfb(console, args.samples)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--no-sandbox"] if os.geteuid() == 0 else [],
            )  # fmt: skip
            try:
                for part, fn in (
                    ("weight", lambda: weight(browser, console)),
                    ("live", lambda: live(browser, hub, console, args.live)),
                    ("cost", lambda: cost(browser, hub, console, args)),
                ):
                    if part in args.only:
                        try:
                            res[part] = await fn()
                        except Exception as exc:  # reported in the targets table
                            log(f"{part}: FAILED: {exc!r}")
                            res["errors"].append(f"{part}: {str(exc).splitlines()[0]}"[:200])
            finally:
                await browser.close()
    finally:
        peers.stop_server(hub.proc)
        if not args.keep:
            shutil.rmtree(hub.dir, ignore_errors=True)
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd")
    hold = sub.add_parser("_hold", help=argparse.SUPPRESS)
    hold.add_argument("--conns", type=int, required=True)
    hold.add_argument("--dialer", required=True)
    hold.add_argument("--listener", action="append", required=True)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=20, help="requests per address (ttfb)")
    ap.add_argument("--live", type=int, default=10, help="samples per live change")
    ap.add_argument("--conns", type=int, default=1000, help="relayed connections held open (cost)")
    ap.add_argument("--minute", type=float, default=60.0, help="seconds of each CPU window")
    ap.add_argument("--cpu-rounds", type=int, default=1)
    ap.add_argument("--size", default="1G", help="push size (cost)")
    ap.add_argument("--rounds", type=int, default=3, help="push rounds each way (cost)")
    ap.add_argument("--only", default="ttfb,weight,live,cost")
    ap.add_argument("--tmp", type=Path, default=DEFAULT_TMP)
    ap.add_argument("--keep", action="store_true", help="keep the hub's folder")
    ap.add_argument("--markdown", type=Path, help="append the results to this file")
    ap.add_argument("--json", type=Path, help="write the raw figures to this file")
    ap.add_argument(
        "--screenshot", type=Path, help="save the open dashboard (1280x800 PNG) here (cost)"
    )
    args = ap.parse_args(argv)
    if args.cmd is None:
        args.size_text = args.size
        args.size = parse_size(args.size)
        args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "_hold":
        try:
            asyncio.run(_hold(args))
        except Exception as exc:  # reported to the orchestrator, which fails the run
            relay._emit("error", error=repr(exc))
            return 1
        return 0
    if not CHROMIUM.exists():
        log(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
        return 1
    signal.signal(signal.SIGTERM, relay._on_signal)
    args.tmp = args.tmp.resolve()
    args.tmp.mkdir(parents=True, exist_ok=True)
    try:
        res = asyncio.run(run(args))
    except (PeerError, OSError, subprocess.SubprocessError) as exc:
        log(f"FAILED: {exc}")
        return 1
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    text, ok = report(res, args)
    print("\n" + text, flush=True)
    if args.markdown:
        title = (f"Console: {args.agents:,} agents and {args.events:,} events seeded "
                 f"({res.get('seeder', 'not seeded')})")  # fmt: skip
        relay.append_section(args.markdown, title, relay.this_command(), [text])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
