"""Messaging peers on this machine: NATS JetStream, NATS core, Mosquitto (MQTT).

    .venv/bin/python bench/msgpeers.py [--only NAME,...] [--rounds 3] [--json FILE]

Each measure prints one line per figure, `name rate unit`, e.g.

    nats-js-publish-async 41234.5 msg/s
    nats-reqrep-median 0.412 ms
    nats-reqrep-p99 1.870 ms
    mqtt-qos1 18234.0 msg/s

Measures (128-byte payloads unless --size says otherwise):

* nats-js    JetStream asynchronous publish: `js.publish_async` of --messages
             messages to a file-backed stream (the server's default storage),
             every PubAck awaited; rate = messages / (first publish -> last ack).
* nats-req   NATS core request/reply paced at --rate requests/s for --seconds
             (open loop: each request leaves at its scheduled time, whether or
             not the previous one was answered, so a slow answer cannot hide
             the ones queued behind it); the responder is another process with
             its own connection; median and p99 of the round trips, after
             --warmup requests that are not counted.
* mqtt-qos1  Mosquitto, MQTT 5, QoS 1 publish -> subscribe: one publisher and
             one subscriber client (paho-mqtt, each in its own process with its
             network thread),
             publisher in-flight window --inflight (paho's default is 20),
             subscriber Receive Maximum --inflight (the broker keeps that many
             unacknowledged deliveries in flight to it), no queue limit; rate
             = messages / (first publish -> last message received), every
             message's sequence number checked.

More than one round runs every selected measure once per round, every other
round in reverse order (the machine is shared: drift hits each alike); the
lines printed at the end are medians over rounds. MEASURES maps each name to
an async callable taking the options and returning its figures, so another
system's measure (e.g. Freight's own messaging) is one more entry.

Servers: NATS with JetStream at --nats (default nats://127.0.0.1:4222),
Mosquitto at --mqtt (default 127.0.0.1:1883); neither is started here.
Packages: nats-py and paho-mqtt (dev extras of pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str

    def line(self) -> str:
        digits = 3 if self.unit == "ms" else 1
        return f"{self.name} {self.value:.{digits}f} {self.unit}"


Measure = Callable[[argparse.Namespace], Awaitable[list[Figure]]]


class BenchError(RuntimeError):
    """A measure could not complete (server missing, messages lost, deadline)."""


# --------------------------------------------------------------------------- NATS JetStream


async def nats_js(opts: argparse.Namespace) -> list[Figure]:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(opts.nats, connect_timeout=5)
    try:
        # publish_async_max_pending bounds the acks outstanding (nats-py's default: 4000).
        js = nc.jetstream(publish_async_max_pending=opts.js_pending)
        stream = f"BENCH_{uuid.uuid4().hex[:8]}"
        subject = f"bench.{stream.lower()}"
        await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
        try:
            payload = os.urandom(opts.size)
            # Warm-up: the async reply subscription and the stream's first write.
            await asyncio.wait_for(await js.publish_async(subject, payload), timeout=10)
            futures = []
            start = time.perf_counter()
            for _ in range(opts.messages):
                futures.append(await js.publish_async(subject, payload))
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=opts.deadline)
            seconds = time.perf_counter() - start
            if acks[-1].seq != opts.messages + 1:
                raise BenchError(f"nats-js: last ack seq {acks[-1].seq}, want {opts.messages + 1}")
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()
    return [Figure("nats-js-publish-async", opts.messages / seconds, "msg/s")]


# --------------------------------------------------------------------------- NATS request/reply


def _responder(url: str, subject: str, ready: Connection) -> None:
    """Child process: answer every request on `subject` with its own payload."""

    async def main() -> None:
        import nats

        nc = await nats.connect(url, connect_timeout=5)
        stop = asyncio.Event()

        async def answer(msg):  # type: ignore[no-untyped-def]
            await msg.respond(msg.data)

        async def quit_(_msg):  # type: ignore[no-untyped-def]
            stop.set()

        await nc.subscribe(subject, cb=answer)
        await nc.subscribe(subject + ".quit", cb=quit_)
        await nc.flush()
        ready.send("ready")
        await asyncio.wait_for(stop.wait(), timeout=600)
        await nc.drain()

    asyncio.run(main())


async def nats_req(opts: argparse.Namespace) -> list[Figure]:
    import nats

    subject = f"bench.req.{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_responder, args=(opts.nats, subject, child), daemon=True)
    proc.start()
    try:
        if not await asyncio.to_thread(parent.poll, 30):
            raise BenchError("nats-req: the responder did not subscribe within 30 s")
        parent.recv()
        nc = await nats.connect(opts.nats, connect_timeout=5)
        try:
            figures = await _paced_requests(nc, subject, opts)
            await nc.publish(subject + ".quit", b"")
            await nc.flush()
        finally:
            await nc.close()
        await asyncio.to_thread(proc.join, 10)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    return figures


async def _paced_requests(nc, subject: str, opts: argparse.Namespace) -> list[Figure]:  # type: ignore[no-untyped-def]
    payload = os.urandom(opts.size)
    total = opts.warmup + int(opts.rate * opts.seconds)
    interval = 1.0 / opts.rate
    rtts: list[float] = [0.0] * total
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        t0 = time.perf_counter()
        try:
            reply = await nc.request(subject, payload, timeout=2.0)
        except Exception:  # counted and reported: a timeout or a lost connection
            failures += 1
            return
        rtts[i] = time.perf_counter() - t0
        if reply.data != payload:
            raise BenchError("nats-req: reply differs from the request")

    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(total):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_seconds = loop.time() - start
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    if failures:
        raise BenchError(f"nats-req: {failures} of {total} requests failed")
    counted = sorted(rtts[opts.warmup :])
    p99 = counted[min(len(counted) - 1, int(0.99 * len(counted)))]  # nearest rank
    return [
        Figure("nats-reqrep-median", statistics.median(counted) * 1e3, "ms"),
        Figure("nats-reqrep-p99", p99 * 1e3, "ms"),
        Figure("nats-reqrep-offered", total / sent_seconds, "req/s"),
    ]


# --------------------------------------------------------------------------- MQTT QoS 1


def _mqtt_client(name: str, inflight: int):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)  # no limit on paho's own queue
    return c


def _mqtt_connect(c, host: str, port: int, properties=None) -> None:  # type: ignore[no-untyped-def]
    connected = threading.Event()

    def on_connect(_c, _u, _flags, reason, _props):  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            connected.set()

    c.on_connect = on_connect
    c.connect(host, port, keepalive=60, clean_start=True, properties=properties)
    c.loop_start()
    if not connected.wait(10):
        raise BenchError(f"mqtt-qos1: not connected to {host}:{port} in 10 s")


def _mqtt_subscriber(host: str, port: int, topic: str, n: int, inflight: int,
                     report: Connection) -> None:  # fmt: skip
    """Child process: subscribe with QoS 1, check the sequence numbers, report
    ("ready",) and then ("done", monotonic time of the last message, disorder)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    received = 0
    out_of_order = 0
    done = threading.Event()
    subscribed = threading.Event()
    last = 0.0

    def on_message(_c, _u, msg):  # type: ignore[no-untyped-def]
        nonlocal received, out_of_order, last
        if int.from_bytes(msg.payload[:8], "big") != received:
            out_of_order += 1
        received += 1
        if received == n:
            last = time.monotonic()
            done.set()

    def on_subscribe(_c, _u, _mid, _reasons, _props):  # type: ignore[no-untyped-def]
        subscribed.set()

    sub = _mqtt_client("sub", inflight)
    sub.on_message = on_message
    sub.on_subscribe = on_subscribe
    # Receive Maximum: how many unacknowledged QoS 1 deliveries the broker may
    # have in flight to this client (the MQTT 5 default is 65535, mosquitto's
    # own cap max_inflight_messages applies on top).
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = inflight
    try:
        _mqtt_connect(sub, host, port, props)
        sub.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise BenchError("mqtt-qos1: subscription not acknowledged in 10 s")
        report.send(("ready",))
        if done.wait(600):
            report.send(("done", last, out_of_order))
        else:
            report.send(("error", f"{received} of {n} messages arrived"))
    except Exception as exc:  # reported to the parent, which raises it
        report.send(("error", repr(exc)))
    finally:
        sub.disconnect()
        sub.loop_stop()


def _mqtt_qos1_blocking(opts: argparse.Namespace) -> list[Figure]:
    import paho.mqtt.client as mqtt

    host, _, port_text = opts.mqtt.rpartition(":")
    port = int(port_text)
    topic = f"bench/{uuid.uuid4().hex[:8]}"
    n = opts.messages
    # The subscriber in a process of its own, as a real consumer would be:
    # two paho network threads in one interpreter would share its GIL.
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_mqtt_subscriber, args=(host, port, topic, n, opts.inflight, child), daemon=True
    )
    proc.start()
    pub = _mqtt_client("pub", opts.inflight)
    try:
        if not parent.poll(30):
            raise BenchError("mqtt-qos1: the subscriber was not ready within 30 s")
        ready = parent.recv()
        if ready[0] != "ready":
            raise BenchError(f"mqtt-qos1: subscriber: {ready[1]}")
        _mqtt_connect(pub, host, port)
        filler = os.urandom(max(0, opts.size - 8))
        first_sent = time.monotonic()
        for i in range(n):
            info = pub.publish(topic, i.to_bytes(8, "big") + filler, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BenchError(f"mqtt-qos1: publish {i} refused: {mqtt.error_string(info.rc)}")
        if not parent.poll(opts.deadline):
            raise BenchError(f"mqtt-qos1: not every message arrived in {opts.deadline} s")
        result = parent.recv()
        if result[0] != "done":
            raise BenchError(f"mqtt-qos1: subscriber: {result[1]}")
        _, last_received, out_of_order = result
        if out_of_order:
            raise BenchError(f"mqtt-qos1: {out_of_order} messages out of order")
    finally:
        pub.disconnect()
        pub.loop_stop()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    return [Figure("mqtt-qos1", n / (last_received - first_sent), "msg/s")]


async def mqtt_qos1(opts: argparse.Namespace) -> list[Figure]:
    return await asyncio.to_thread(_mqtt_qos1_blocking, opts)


# --------------------------------------------------------------------------- driver

MEASURES: dict[str, Measure] = {
    "nats-js": nats_js,
    "nats-req": nats_req,
    "mqtt-qos1": mqtt_qos1,
}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def run(opts: argparse.Namespace) -> int:
    names = [n.strip() for n in opts.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        print(
            f"msgpeers: unknown measure {', '.join(unknown)}; known: {', '.join(MEASURES)}",
            file=sys.stderr,
        )
        return 2
    per_figure: dict[str, list[Figure]] = {}
    rc = 0
    for r in range(opts.rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            print(
                f"[msgpeers] round {r + 1}/{opts.rounds} {name} (load {loadavg()})", file=sys.stderr
            )
            try:
                figures = await MEASURES[name](opts)
            except Exception as exc:  # one failed measure must not hide the others
                print(f"[msgpeers] {name} failed: {exc!r}", file=sys.stderr)
                rc = 1
                continue
            for fig in figures:
                per_figure.setdefault(fig.name, []).append(fig)
                if opts.rounds > 1:
                    print(f"[msgpeers]   {fig.line()}", file=sys.stderr)
    medians = []
    for figs in per_figure.values():
        med = Figure(figs[0].name, statistics.median(f.value for f in figs), figs[0].unit)
        medians.append(med)
        print(med.line())
    print(f"[msgpeers] load average at the end: {loadavg()}", file=sys.stderr)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(
                {
                    "medians": [asdict(m) for m in medians],
                    "runs": {k: [f.value for f in v] for k, v in per_figure.items()},
                    "options": {k: v for k, v in vars(opts).items() if k != "json"},
                },
                f,
                indent=2,
            )
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--only", default=",".join(MEASURES), help="comma-separated measures")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--size", type=int, default=128, help="payload bytes (default 128)")
    p.add_argument(
        "--messages",
        type=int,
        default=100_000,
        help="messages per throughput measure (default 100000)",
    )
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s for nats-req")
    p.add_argument("--seconds", type=float, default=10.0, help="paced seconds for nats-req")
    p.add_argument("--warmup", type=int, default=500, help="uncounted requests first")
    p.add_argument(
        "--inflight",
        type=int,
        default=1000,
        help="MQTT in-flight window of publisher and subscriber",
    )
    p.add_argument(
        "--js-pending",
        type=int,
        default=4000,
        help="JetStream async publishes awaiting their ack at most",
    )
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per measure at most")
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--mqtt", default="127.0.0.1:1883")
    p.add_argument("--json", help="also write medians and every run here")
    opts = p.parse_args(argv)
    if opts.size < 8:
        p.error("--size must be at least 8 (MQTT payloads carry a sequence number)")
    return asyncio.run(run(opts))


if __name__ == "__main__":
    sys.exit(main())
