"""Messaging benchmarks against the targets of the messaging issue, Freight
and its peers (NATS JetStream / NATS core, Mosquitto) alternating in rounds
of one run:

    .venv/bin/python bench/messaging.py [--rounds 3] [--messages 50000]
        [--markdown FILE] [--py-spy DIR] [--only unicast,reqrep,multicast,stall]

Freight's path is the one a user's programs take: one `freight hub` process
(fresh data folder, free port on 127.0.0.1), one `freight daemon` per host
(its own config folder, logged in as `alice` or `bob`), and applications in
processes of their own using the SDK (`freight.messaging.connect`) over the
daemon's socket: app -> daemon -> hub -> daemon -> app, every message sealed
end to end between the two daemons. What is measured:

unicast    alice's app sends --messages 128-byte messages to bob's app with
           --window sends unanswered at most (spread over --connections
           socket connections; a daemon answers at most 256 per connection),
           every send awaited until the receiving app has taken it
           (at-least-once: the send's count is 1). Rate = messages / (first
           send -> last answer); the receiving app counts every message.
           Peers in the same round: NATS JetStream `publish_async` (every
           PubAck awaited) and Mosquitto QoS 1 (bench/msgpeers.py).
reqrep     alice's app sends requests paced at --rate per second for
           --seconds (open loop, each at its scheduled time) to bob's app,
           which replies with the body; median and p99 (nearest rank) of
           the round trips after --warmup uncounted ones. Peer: NATS core
           request/reply, same pacing.
multicast  --mc-hosts daemons of bob (one config folder each), each with
           --mc-regs registrations of the app; alice's app sends 1 KiB
           messages to account bob; deliveries/s = recipients counted by
           the sends (50 per message at most) / time; the receiving apps
           count too, and must have exactly that many. Copies refused
           because a registration's queue was full (4,096 messages or
           4 MiB) are reported beside the rate.
stall      bob's app registers and never takes a message; alice's app
           offers --stall-bytes in 1 MiB messages (each send's timeout
           --stall-timeout s, so refused ones end as Busy). The hub's VmRSS
           is sampled every 0.1 s; growth = peak - value before.

NATS (`nats-server -js`) and Mosquitto are started here on free ports when
their binaries are found; a peer whose server is missing is skipped with a
note. With --py-spy DIR the hub, both daemons and both applications are profiled (py-spy raw,
200 Hz) during the first unicast round. Exit status 1 if a target is missed
or a measure failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import peers
from peers import FREIGHT, PeerError
from relay import (
    RECEIVER,
    SENDER,
    USER_PASSWORD,
    RelayHub,
    Sampler,
    append_section,
    nearest_rank,
    proc_status,
    this_command,
)

from bench import markdown_table

try:  # bench/msgpeers.py: NATS and Mosquitto measures (name -> async callable)
    import msgpeers
except ImportError:  # its packages (nats-py, paho-mqtt) missing
    msgpeers = None  # type: ignore[assignment]

MiB = 1 << 20
APP, ECHO, MC = "bench", "echo", "mcast"
DEFAULT_TMP = peers.REPO_DIR / ".bench-tmp" / "messaging"


def log(msg: str) -> None:
    print(f"[msg] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ------------------------------------------------------------------ servers


class Daemon:
    """`freight daemon` of one config folder, running until stop()."""

    def __init__(self, hub: RelayHub, user: str, cfg: Path) -> None:
        self.cfg = cfg
        env = peers._freight_env(cfg)
        self.proc = peers.start_server([str(FREIGHT), "daemon"], cfg / "daemon.log", env=env)
        deadline = time.monotonic() + 60
        while not (cfg / "msg.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log((cfg / "daemon.log").read_text(errors="replace")[-2000:])
                raise PeerError(f"freight daemon of {user} did not serve its socket")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        peers.stop_server(self.proc)


def login(hub: RelayHub, user: str, cfg: Path) -> Path:
    cfg.mkdir(parents=True)
    hub._run(
        cfg, "login", hub.url, "--user", user, "--password-stdin",
        "--fingerprint", peers.freight_fingerprint(hub.data), stdin=USER_PASSWORD,
    )  # fmt: skip
    return cfg


class PeerServers:
    """nats-server with JetStream and mosquitto on free ports, when installed."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nats = self.mqtt = ""

    def start(self) -> PeerServers:
        if nats := shutil.which("nats-server"):
            port = peers.free_port()
            store = self.dir / "jetstream"
            cmd = [nats, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]
            proc = peers.start_server(cmd, self.dir / "nats.log")
            self.procs.append(proc)
            peers.wait_port(port, proc)
            self.nats = f"nats://127.0.0.1:{port}"
        if mosq := shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto"):
            port = peers.free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_inflight_messages 0\nmax_queued_messages 0\n"
            )
            proc = peers.start_server([mosq, "-c", str(conf)], self.dir / "mosquitto.log")
            self.procs.append(proc)
            peers.wait_port(port, proc)
            self.mqtt = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        for proc in self.procs:
            peers.stop_server(proc)


# ------------------------------------------------------------------ apps (child processes)


def _child(tree: str, fn: Any, conn: Any, *args: Any) -> None:
    if tree:  # --ab: this app runs the other tree's freight
        sys.path.insert(0, tree)
    try:
        conn.send(("ok", asyncio.run(fn(conn, *args))))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", repr(exc)))


async def _receiver(conn: Any, cfg: str, app: str, regs: int, expect: int) -> dict[str, Any]:
    """Register `regs` times; count messages until `expect` in all; reply to
    requests (app ECHO). expect 0: serve until the parent says stop."""
    from freight import messaging

    async with messaging.connect(config_dir=Path(cfg), own_host=False) as bus:
        got = 0
        done = asyncio.Event()

        # Replies are written at once and their spooling awaited beside the
        # loop (at most 256 at a time): the NATS responder does not wait
        # for its server either before it takes the next request.
        replying: set[asyncio.Task[Any]] = set()
        room = asyncio.Semaphore(256)

        async def reply(msg: Any) -> None:
            try:
                await msg.reply(msg.body, timeout=5)
            finally:
                room.release()

        async def drain(reg: Any) -> None:
            nonlocal got
            async for msg in reg:
                if app == ECHO:
                    await room.acquire()
                    t = asyncio.create_task(reply(msg))
                    replying.add(t)
                    t.add_done_callback(replying.discard)
                got += 1
                if got == expect:
                    done.set()

        handles = [await bus.register(app, interest=0xFFFFFFFF) for _ in range(regs)]
        tasks = [asyncio.create_task(drain(r)) for r in handles]
        conn.send(("ready", None))
        # expect 0: serve until the parent says "stop"
        finished = asyncio.create_task(done.wait() if expect else asyncio.to_thread(conn.recv))
        await asyncio.wait({finished, *tasks}, timeout=900, return_when=asyncio.FIRST_COMPLETED)
        for t in [*tasks, finished]:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return {"received": got}


async def _stalled(conn: Any, cfg: str) -> dict[str, Any]:
    """Register, never take anything, until the parent says stop."""
    from freight import messaging

    async with messaging.connect(config_dir=Path(cfg), own_host=False) as bus:
        await bus.register(APP, interest=0xFFFFFFFF)
        conn.send(("ready", None))
        await asyncio.wait_for(asyncio.to_thread(conn.recv), 900)
        return {}


async def _sender(conn: Any, cfg: str, dest: str, app: str, n: int, size: int, window: int,
                  connections: int, timeout: float) -> dict[str, Any]:  # fmt: skip
    """Send n messages with `window` unanswered at most; sum the counts."""
    from freight import messaging
    from freight.errors import FreightError

    async with contextlib.AsyncExitStack() as stack:
        buses = [
            await stack.enter_async_context(messaging.connect(config_dir=Path(cfg), own_host=False))
            for _ in range(connections)
        ]
        conn.send(("ready", None))
        await asyncio.wait_for(asyncio.to_thread(conn.recv), 600)  # "go"
        body = os.urandom(size)
        counts = 0
        refused: dict[str, int] = {}
        nxt = iter(range(n))

        async def lane(bus: Any) -> None:
            nonlocal counts
            for _ in nxt:
                try:
                    count = await bus.send(dest, app, type=1, body=body, timeout=timeout)
                except FreightError as exc:
                    key = type(exc).__name__
                    refused[key] = refused.get(key, 0) + 1
                else:
                    counts += count  # not `counts += await ...`: that reads counts before

        per_bus = max(1, window // connections)
        t0 = time.perf_counter()
        await asyncio.gather(*(lane(b) for b in buses for _ in range(per_bus)))
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "counts": counts, "refused": refused}


async def _requester(conn: Any, cfg: str, rate: float, seconds: float, warmup: int,
                     size: int) -> dict[str, Any]:  # fmt: skip
    from freight import messaging

    async with messaging.connect(config_dir=Path(cfg), own_host=False) as bus:
        body = os.urandom(size)
        # Route and host keys cached, as in a program that has been running.
        for _ in range(20):
            await bus.request(RECEIVER, ECHO, type=1, body=body, timeout=10)
        conn.send(("ready", None))
        total = warmup + int(rate * seconds)
        rtts = [0.0] * total
        failures: list[str] = []

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                reply = await bus.request(RECEIVER, ECHO, type=1, body=body, timeout=5)
            except Exception as exc:  # counted and reported
                failures.append(repr(exc))
                return
            rtts[i] = time.perf_counter() - t0
            if reply.body != body:
                failures.append("reply differs from the request")

        loop = asyncio.get_running_loop()
        tasks = set()
        start = loop.time()
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(one(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        offered = total / (loop.time() - start)
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return {"rtts": rtts[warmup:], "failures": failures, "offered": offered}


class App:
    """One app in a spawned process; talks to the parent through a pipe."""

    tree = ""  # set by Freight for --ab

    def __init__(self, fn: Any, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(App.tree, fn, child, *args), daemon=True)
        self.proc.start()

    def expect(self, what: str, timeout: float = 120) -> Any:
        if not self.conn.poll(timeout):
            raise PeerError(f"app {self.proc.pid}: no {what} within {timeout:g} s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise PeerError(f"app {self.proc.pid}: {value}")
        if kind != what:
            raise PeerError(f"app {self.proc.pid}: {kind} instead of {what}")
        return value

    def tell(self, what: str) -> None:
        self.conn.send(what)

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# ------------------------------------------------------------------ Freight measures


@contextlib.contextmanager
def source(tree: Path | None) -> Any:
    """Processes started in the block run the freight of `tree` (PYTHONPATH),
    or the venv's when None."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = str(tree)
    App.tree = str(tree or "")
    try:
        yield
    finally:
        App.tree = ""
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class Freight:
    def __init__(self, opts: argparse.Namespace, workdir: Path, tree: Path | None = None) -> None:
        self.opts = opts
        self.tree = tree
        with source(tree):
            self.hub = RelayHub(workdir, ["--msg-warmup", "0.2"]).start()
            self.alice = Daemon(self.hub, SENDER, self.hub.cfgs[SENDER])
            self.bob = Daemon(self.hub, RECEIVER, self.hub.cfgs[RECEIVER])
        self.mc: list[Daemon] = []

    def stop(self) -> None:
        for d in [self.alice, self.bob, *self.mc]:
            d.stop()
        with contextlib.suppress(OSError):
            shutil.copyfile(self.hub.dir / "hub.log", self.opts.tmp / "hub.log")
        self.hub.stop()

    def unicast(self, spy_dir: Path | None) -> dict[str, Any]:
        with source(self.tree):
            return self._unicast(spy_dir)

    def _unicast(self, spy_dir: Path | None) -> dict[str, Any]:
        o = self.opts
        recv = App(_receiver, str(self.bob.cfg), APP, 1, o.messages)
        recv.expect("ready")
        send = App(_sender, str(self.alice.cfg), RECEIVER, APP, o.messages, 128, o.window,
                   o.connections, 60.0)  # fmt: skip
        send.expect("ready")
        procs = {**self.servers(), "app-alice": send.proc, "app-bob": recv.proc}
        t_cpu = {n: peers.tree_cpu(d.pid) for n, d in procs.items()}
        with contextlib.ExitStack() as stack:
            if spy_dir is not None:
                for name, d in procs.items():
                    stack.enter_context(spy(spy_dir, name, d))
            send.tell("go")
            res = send.expect("ok", o.deadline)
            cpu = {n: peers.tree_cpu(d.pid) - t_cpu[n] for n, d in procs.items()}
        got = recv.expect("ok", 60)
        send.stop()
        recv.stop()
        if res["counts"] != o.messages or got["received"] < o.messages:
            raise PeerError(
                f"unicast: counts {res['counts']}, received {got['received']} of "
                f"{o.messages}, refused {res['refused']}"
            )
        rate = o.messages / res["seconds"]
        us = {n: c / o.messages * 1e6 for n, c in cpu.items()}
        return {"rate": rate, "cpu_us": us}

    def servers(self) -> dict[str, Any]:
        return {"hub": self.hub.proc, "daemon-alice": self.alice.proc, "daemon-bob": self.bob.proc}

    def reqrep(self, rate: float) -> dict[str, Any]:
        o = self.opts
        resp = App(_receiver, str(self.bob.cfg), ECHO, 1, 0)
        resp.expect("ready")
        req = App(_requester, str(self.alice.cfg), rate, o.seconds, o.warmup, 128)
        req.expect("ready", 60)
        res = req.expect("ok", o.seconds * 3 + 60)
        resp.tell("stop")
        resp.expect("ok", 30)
        req.stop()
        resp.stop()
        if res["failures"]:
            raise PeerError(f"reqrep: {len(res['failures'])} failed, first {res['failures'][0]}")
        rtts = res["rtts"]
        return {
            "median_ms": statistics.median(rtts) * 1e3,
            "p99_ms": nearest_rank(rtts, 0.99) * 1e3,
            "offered": res["offered"],
        }

    def multicast(self) -> dict[str, Any]:
        o = self.opts
        if not self.mc:
            for i in range(o.mc_hosts):
                cfg = login(self.hub, RECEIVER, self.hub.dir / f"client-mc{i}")
                self.mc.append(Daemon(self.hub, RECEIVER, cfg))
        # The receivers serve until told: a copy counted by a send was taken
        # by its application before the send was answered, so once the
        # sender is done they have every counted copy.
        recvs = [App(_receiver, str(d.cfg), MC, o.mc_regs, 0) for d in self.mc]
        for r in recvs:
            r.expect("ready")
        send = App(_sender, str(self.alice.cfg), RECEIVER, MC, o.mc_messages, 1024, o.window,
                   o.connections, 60.0)  # fmt: skip
        send.expect("ready")
        send.tell("go")
        res = send.expect("ok", o.deadline)
        for r in recvs:
            r.tell("stop")
        got = [r.expect("ok", 60)["received"] for r in recvs]
        for r in recvs:
            r.stop()
        send.stop()
        want = o.mc_messages * o.mc_hosts * o.mc_regs
        if sum(got) != res["counts"] or res["refused"]:
            raise PeerError(f"multicast: counts {res['counts']}, received {sum(got)}, "
                            f"refused {res['refused']}")  # fmt: skip
        # A registration whose queue is full refuses its copy (busy) and the
        # others take theirs: the send's count says how many did
        # (docs/protocol.md 15.5). Those are reported, not hidden.
        return {"rate": res["counts"] / res["seconds"], "busy": want - res["counts"]}

    def stall(self) -> dict[str, Any]:
        o = self.opts
        stalled = App(_stalled, str(self.bob.cfg))
        stalled.expect("ready")
        n = o.stall_bytes // MiB
        send = App(_sender, str(self.alice.cfg), RECEIVER, APP, n, MiB, o.window,
                   o.connections, o.stall_timeout)  # fmt: skip
        send.expect("ready")
        pid = self.hub.pid
        before = proc_status(pid).get("VmRSS", 0)
        with Sampler(lambda: proc_status(pid).get("VmRSS", 0)) as s:
            send.tell("go")
            res = send.expect("ok", o.deadline + n * o.stall_timeout)
        peak = max([v for _, v in s.samples] or [before])
        stalled.tell("stop")
        stalled.expect("ok", 30)
        send.stop()
        stalled.stop()
        return {"before": before, "peak": peak, "growth": peak - before,
                "delivered": res["counts"], "refused": res["refused"],
                "seconds": res["seconds"], "offered": n * MiB}  # fmt: skip


@contextlib.contextmanager
def spy(where: Path, name: str, proc: Any) -> Any:
    where.mkdir(parents=True, exist_ok=True)
    exe = peers.VENV / "bin" / "py-spy"
    out = where / f"{name}.txt"
    cmd = [str(exe), "record", "-r", "200", "-f", "raw", "--nonblocking",
           "-o", str(out), "-p", str(proc.pid)]  # fmt: skip
    spyp = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spyp.send_signal(signal.SIGINT)
        try:
            spyp.wait(30)
        except subprocess.TimeoutExpired:
            spyp.kill()
        log(f"py-spy profile of {name}: {out}")


# ------------------------------------------------------------------ driver


def peer_opts(o: argparse.Namespace, servers: PeerServers) -> argparse.Namespace:
    return argparse.Namespace(
        size=128, messages=o.messages, rate=o.rate, seconds=o.seconds, warmup=o.warmup,
        inflight=1000, js_pending=4000, deadline=o.deadline, nats=servers.nats,
        mqtt=servers.mqtt,
    )  # fmt: skip


async def peer(name: str, o: argparse.Namespace, servers: PeerServers,
               rate: float = 0.0) -> dict[str, float]:  # fmt: skip
    if msgpeers is None:
        raise PeerError("bench/msgpeers.py could not be imported (nats-py, paho-mqtt missing?)")
    popts = peer_opts(o, servers)
    popts.rate = rate or o.rate
    figures = await msgpeers.MEASURES[name](popts)
    return {f.name: f.value for f in figures}


class Terminated(Exception):
    """SIGTERM/SIGHUP: unwind so that every server started here is stopped."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def run(o: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    o.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=o.tmp))
    results: dict[str, list[Any]] = {}
    errors: list[str] = []
    loads = [loadavg()]

    def record(key: str, fn: Any) -> None:
        log(f"{key} (load {loadavg()})")
        try:
            value = fn()
        except Exception as exc:  # one failed measure must not hide the others
            errors.append(f"{key}: {exc}")
            log(f"{key} failed: {exc}")
            return
        log(f"  {key}: {value}")
        results.setdefault(key, []).append(value)

    servers = PeerServers(work).start()
    fr = Freight(o, work)
    frb = Freight(o, work, o.ab) if o.ab else None
    try:
        for r in range(o.rounds):
            first = r % 2 == 0  # Freight first in even rounds, peers first in odd ones
            if "unicast" in o.only:
                steps = [("freight-unicast", lambda r=r: fr.unicast(o.py_spy if r == 0 else None))]
                if frb is not None:
                    steps.insert(1, ("freight-unicast-b", lambda: frb.unicast(None)))
                if servers.nats:
                    steps.append(("nats-js", lambda: asyncio.run(peer("nats-js", o, servers))))
                if servers.mqtt:
                    steps.append(("mqtt-qos1", lambda: asyncio.run(peer("mqtt-qos1", o, servers))))
                for key, fn in steps if first else steps[::-1]:
                    record(key, fn)
            if "reqrep" in o.only:
                # The light rate first: the target rate may leave a backlog behind.
                pairs = []
                if o.low_rate:
                    pairs.append([("freight-reqrep-low", lambda: fr.reqrep(o.low_rate))])
                    if servers.nats:
                        pairs[-1].append(("nats-req-low", lambda: asyncio.run(
                            peer("nats-req", o, servers, o.low_rate))))  # fmt: skip
                pairs.append([("freight-reqrep", lambda: fr.reqrep(o.rate))])
                if servers.nats:
                    pairs[-1].append(
                        ("nats-req", lambda: asyncio.run(peer("nats-req", o, servers)))
                    )
                for steps in pairs:
                    for key, fn in steps if first else steps[::-1]:
                        record(key, fn)
            if "multicast" in o.only:
                steps = [("freight-multicast", fr.multicast)]
                if frb is not None:
                    steps.append(("freight-multicast-b", frb.multicast))
                for key, fn in steps if first else steps[::-1]:
                    record(key, fn)
            loads.append(loadavg())
        if "stall" in o.only:
            record("freight-stall", fr.stall)
    finally:
        fr.stop()
        if frb is not None:
            frb.stop()
        servers.stop()
        loads.append(loadavg())
        if not o.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report(o, results, errors, loads)


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(o: argparse.Namespace, res: dict[str, list[Any]], errors: list[str],
           loads: list[str]) -> int:  # fmt: skip
    rows: list[list[str]] = []
    targets: list[list[str]] = []
    missed = bool(errors)

    def rng(vals: list[float], fmt: str) -> str:
        return f"{fmt.format(min(vals))}-{fmt.format(max(vals))}" if len(vals) > 1 else ""

    def target(name: str, measured: str, ok: bool) -> None:
        nonlocal missed
        targets.append([name, measured, "met" if ok else "missed"])
        missed |= not ok

    fu = [x["rate"] for x in res.get("freight-unicast", [])]
    js = [x["nats-js-publish-async"] for x in res.get("nats-js", [])]
    mq = [x["mqtt-qos1"] for x in res.get("mqtt-qos1", [])]
    for name, vals in (("Freight unicast (SDK, daemons, hub)", fu),
                       ("NATS JetStream publish_async", js), ("Mosquitto QoS 1", mq)):  # fmt: skip
        if vals:
            rows.append([name, f"{med(vals):,.0f} msg/s", rng(vals, "{:,.0f}"), str(len(vals))])
    if fu:
        target("unicast ≥ 30,000 msg/s", f"{med(fu):,.0f} msg/s", med(fu) >= 30_000)
    if fu and js:
        ratios = [a / b for a, b in zip(fu, js, strict=False)]
        target("unicast ≥ 0.7 x NATS JetStream", f"{med(ratios):.2f} x (per round: "
               + ", ".join(f"{x:.2f}" for x in ratios) + ")", med(ratios) >= 0.7)  # fmt: skip
    if fu and mq:
        ratios = [a / b for a, b in zip(fu, mq, strict=False)]
        rows.append(["Freight / Mosquitto QoS 1", f"{med(ratios):.2f} x", rng(ratios, "{:.2f}"),
                     str(len(ratios))])  # fmt: skip
    fb = [x["rate"] for x in res.get("freight-unicast-b", [])]
    if fb:
        rows.append([f"Freight unicast, {o.ab}", f"{med(fb):,.0f} msg/s", rng(fb, "{:,.0f}"),
                     str(len(fb))])  # fmt: skip
        ratios = [b / a for a, b in zip(fu, fb, strict=False)]
        rows.append(["unicast B/A (this tree = A)", f"{med(ratios):.2f} x", ", ".join(
            f"{x:.2f}" for x in ratios), str(len(ratios))])  # fmt: skip
    for suffix, rate in (("", o.rate), ("-low", o.low_rate)):
        fr = res.get("freight-reqrep" + suffix, [])
        nr = res.get("nats-req" + suffix, [])
        if fr:
            m, p = [x["median_ms"] for x in fr], [x["p99_ms"] for x in fr]
            rows.append([f"Freight request/reply median at {rate:g}/s", f"{med(m):.2f} ms",
                         rng(m, "{:.2f}"), str(len(m))])  # fmt: skip
            rows.append([f"Freight request/reply p99 at {rate:g}/s", f"{med(p):.2f} ms",
                         rng(p, "{:.2f}"), str(len(p))])  # fmt: skip
            if not suffix:
                target(f"request/reply median ≤ 2 ms at {rate:g}/s", f"{med(m):.2f} ms",
                       med(m) <= 2.0)  # fmt: skip
                target(f"request/reply p99 ≤ 10 ms at {rate:g}/s", f"{med(p):.2f} ms",
                       med(p) <= 10.0)  # fmt: skip
        elif not suffix and any(e.startswith("freight-reqrep:") for e in errors):
            target(f"request/reply median ≤ 2 ms, p99 ≤ 10 ms at {rate:g}/s",
                   "did not complete", False)  # fmt: skip
        if nr:
            m = [x["nats-reqrep-median"] for x in nr]
            p = [x["nats-reqrep-p99"] for x in nr]
            rows.append([f"NATS request/reply median at {rate:g}/s", f"{med(m):.3f} ms",
                         rng(m, "{:.3f}"), str(len(m))])  # fmt: skip
            rows.append([f"NATS request/reply p99 at {rate:g}/s", f"{med(p):.3f} ms",
                         rng(p, "{:.3f}"), str(len(p))])  # fmt: skip
    mc = [x["rate"] for x in res.get("freight-multicast", [])]
    if mc:
        busy = [x["busy"] for x in res.get("freight-multicast", [])]
        rows.append([f"Freight multicast 1 KiB to {o.mc_hosts * o.mc_regs} registrations on "
                     f"{o.mc_hosts} hosts", f"{med(mc):,.0f} deliveries/s", rng(mc, "{:,.0f}"),
                     str(len(mc))])  # fmt: skip
        rows.append(["… copies refused busy (a registration's queue full), per round",
                     ", ".join(f"{b:,}" for b in busy), "", str(len(busy))])  # fmt: skip
        target("multicast ≥ 50,000 deliveries/s", f"{med(mc):,.0f}/s", med(mc) >= 50_000)
    mcb = [x["rate"] for x in res.get("freight-multicast-b", [])]
    if mc and mcb:
        rows.append([f"Freight multicast, {o.ab}", f"{med(mcb):,.0f} deliveries/s",
                     rng(mcb, "{:,.0f}"), str(len(mcb))])  # fmt: skip
        ratios = [b / a for a, b in zip(mc, mcb, strict=False)]
        rows.append(["multicast B/A (this tree = A)", f"{med(ratios):.2f} x", ", ".join(
            f"{x:.2f}" for x in ratios), str(len(ratios))])  # fmt: skip
    for st in res.get("freight-stall", []):
        rows.append([f"Stalled consumer, {st['offered'] / MiB:,.0f} MiB offered in 1 MiB messages",
                     f"hub RSS {st['before'] / MiB:.1f} → peak {st['peak'] / MiB:.1f} MiB",
                     f"delivered {st['delivered']}, refused {st['refused']}",
                     f"{st['seconds']:.1f} s"])  # fmt: skip
        target("stalled consumer: hub RSS grows < 50 MiB", f"{st['growth'] / MiB:.1f} MiB",
               st["growth"] < 50 * MiB)  # fmt: skip
    cpu = [x["cpu_us"] for x in res.get("freight-unicast", [])]
    notes = []
    if cpu:
        per = {k: med([c[k] for c in cpu]) for k in cpu[0]}
        notes.append("CPU per unicast message (process and its children): "
                     + ", ".join(f"{k} {v:.0f} µs" for k, v in per.items()))  # fmt: skip
    notes.append(
        f"load average (1/5/15 min) at start, after each round, at end: {' | '.join(loads)}"
    )
    notes += [f"failed: {e}" for e in errors]
    table = markdown_table(["measure", "median", "range", "rounds"], rows)
    ttable = markdown_table(["target", "measured", "verdict"], targets)
    text = "\n".join([table, "", ttable, "", *(f"- {n}" for n in notes)]) + "\n"
    print("\n" + text, flush=True)
    if o.markdown:
        append_section(o.markdown, "Messaging", this_command(), [text],
                       {"load average": " | ".join(loads)})  # fmt: skip
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--only", default="unicast,reqrep,multicast,stall")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=50_000, help="unicast messages per round")
    p.add_argument("--window", type=int, default=1024, help="unanswered sends at most")
    p.add_argument("--connections", type=int, default=4, help="sender's socket connections")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s (the target's)")
    p.add_argument("--low-rate", type=float, default=100.0, help="a second, light rate (0: no)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--mc-hosts", type=int, default=5)
    p.add_argument("--mc-regs", type=int, default=10, help="registrations per multicast host")
    p.add_argument("--mc-messages", type=int, default=2000)
    p.add_argument("--stall-bytes", type=int, default=1 << 30)
    p.add_argument("--stall-timeout", type=float, default=2.0)
    p.add_argument("--deadline", type=float, default=600.0)
    p.add_argument("--tmp", type=Path, default=DEFAULT_TMP)
    p.add_argument("--keep", action="store_true", help="keep the hub's and daemons' folders")
    p.add_argument("--py-spy", type=Path, help="profile hub and daemons in round 1 (unicast)")
    p.add_argument("--ab", type=Path, help="another freight source tree: unicast and multicast A/B")
    p.add_argument("--markdown", type=Path)
    o = p.parse_args(argv)
    o.only = {x.strip() for x in o.only.split(",")}
    return run(o)


if __name__ == "__main__":
    sys.exit(main())
