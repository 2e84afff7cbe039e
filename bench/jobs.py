"""Transfer-job manners against their targets:

    .venv/bin/python bench/jobs.py [--size 1G] [--rounds 3] [--message 1M]
        [--loop uvloop|asyncio] [--markdown FILE] [--py-spy DIR]

direct     the direct manner's byte pipe (freight.transport.directjob) on
           loopback: a receiving process opens a DirectListener (every
           address, free port) and prints its completion; a sending process
           dials it (Happy Eyeballs over the advertised addresses, loopback
           reached last) and sends --size bytes in --message messages, every
           one AES-256-GCM sealed, then closes its side; the receiver counts
           them and answers with the count. Rate = bytes / (first send ->
           the receiver's answer), MB = 10^6 bytes; the median of --rounds.
           Target: >= 600 MB/s.
by-ref     (not measured yet) see ``bench_by_reference`` below.

Both ends are processes of their own (2 cores: one each), as a job's two
hosts would be. With --py-spy DIR both are profiled (py-spy, 200 Hz,
speedscope JSON) in the first round. Exit status 1 if a target is missed or
a measure failed. Run by ``make bench-jobs``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import markdown_table, parse_size

REPO = Path(__file__).resolve().parent.parent

DIRECT_TARGET = 600.0  # MB/s
REF_TARGET = 400.0  # MB/s, by-reference from the hub


def log(msg: str) -> None:
    print(f"[jobs] {msg}", file=sys.stderr, flush=True)


def run_loop(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# ------------------------------------------------------------ the two ends


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _receive(accept_timeout: float) -> dict[str, object]:
    from freight.transport.directjob import DirectListener

    async with await DirectListener.open() as listener:
        print(json.dumps(listener.completion()), flush=True)
        conn = await listener.accept(accept_timeout)
    cpu = cpu_seconds()
    count = 0
    async with conn:
        while chunk := await conn.recv():
            count += len(chunk)
        await conn.send(str(count).encode())
    return {"bytes": count, "peer": conn.peer, "cpu": cpu_seconds() - cpu}


async def _send(completion: dict[str, object], size: int, message: int) -> dict[str, object]:
    from freight.transport.directjob import dial_direct

    block = os.urandom(message)
    started = time.perf_counter()
    conn = await dial_direct(completion, timeout=5.0)
    dialled = time.perf_counter()
    cpu = cpu_seconds()
    left = size
    async with conn:
        while left > 0:
            await conn.send(block if left >= message else block[:left])
            left -= message
        await conn.shutdown()
        answer = await conn.recv()
        ended = time.perf_counter()
    return {
        "bytes": int(answer or b"0"),
        "dial_seconds": dialled - started,
        "seconds": ended - dialled,
        "peer": conn.peer,
        "cpu": cpu_seconds() - cpu,
    }


def _tcp_receive() -> dict[str, object]:
    """Plain TCP, blocking sockets, no sealing: what the machine does now."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        print(json.dumps({"addrs": [f"127.0.0.1:{port}"]}), flush=True)
        server.settimeout(60)
        conn, _ = server.accept()
    cpu = cpu_seconds()
    buf = bytearray(1 << 20)
    count = 0
    with conn:
        while n := conn.recv_into(buf):
            count += n
        conn.sendall(str(count).encode())
    return {"bytes": count, "cpu": cpu_seconds() - cpu}


def _tcp_send(completion: dict[str, Any], size: int, message: int) -> dict[str, object]:
    host, _, port = completion["addrs"][0].rpartition(":")
    block = os.urandom(message)
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        started = time.perf_counter()
        cpu = cpu_seconds()
        left = size
        while left > 0:
            conn.sendall(block if left >= message else block[:left])
            left -= message
        conn.shutdown(socket.SHUT_WR)
        answer = conn.recv(64)
        ended = time.perf_counter()
    return {"bytes": int(answer or b"0"), "dial_seconds": 0.0, "seconds": ended - started,
            "cpu": cpu_seconds() - cpu, "peer": f"{host}:{port}"}  # fmt: skip


# ------------------------------------------------------------- the measure


def _spy(cmd: list[str], spy: Path | None, name: str) -> list[str]:
    if spy is None:
        return cmd
    tool = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = spy / f"{name}.speedscope.json"
    return [tool, "record", "-r", "200", "-f", "speedscope", "-o", str(out), "--", *cmd]


def _json_line(stream: Any) -> str:
    """The next line of ours (py-spy writes lines of its own in between)."""
    while line := stream.readline():
        if line.startswith("{"):
            return str(line)
    raise RuntimeError("the receiving process ended without a word")


def direct_round(args: argparse.Namespace, spy: Path | None, kind: str = "") -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve())]
    receiver = subprocess.Popen(
        _spy([*me, f"_{kind}receive", "--loop", args.loop], spy, "receiver"),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert receiver.stdout is not None
        completion = _json_line(receiver.stdout)
        sender = subprocess.run(
            _spy(
                [
                    *me,
                    f"_{kind}send",
                    "--loop",
                    args.loop,
                    "--size",
                    str(args.size),
                    "--message",
                    str(args.message),
                ],
                spy,
                "sender",
            ),
            input=completion,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        if sender.returncode != 0:
            raise RuntimeError(f"the sender failed: {sender.stderr.strip()[-800:]}")
        sent = json.loads([x for x in sender.stdout.splitlines() if x.startswith("{")][-1])
        got = json.loads(_json_line(receiver.stdout))
        receiver.wait(60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(10)
    if got["bytes"] != args.size or sent["bytes"] != args.size:
        raise RuntimeError(f"sent {args.size} bytes, {got['bytes']} arrived")
    # On a machine others use too, wall time says little: CPU time says
    # what each end costs, and the busier end bounds the rate.
    busiest = max(sent["cpu"], got["cpu"])
    return {**sent, "mbps": args.size / sent["seconds"] / 1e6,
            "cpu_mbps": args.size / busiest / 1e6, "cpu_send": sent["cpu"], "cpu_recv": got["cpu"]}  # fmt: skip


def bench_direct(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]], bool]:
    """Direct rounds, each followed by a plain-TCP round (same processes'
    shape, same sizes) unless --no-baseline: on a shared machine the ratio
    of the two says more than either figure."""
    rounds: list[dict[str, Any]] = []
    tcp: list[dict[str, Any]] = []
    for i in range(args.rounds):
        spy = args.py_spy if (args.py_spy is not None and i == 0) else None
        r = direct_round(args, spy)
        log(
            f"direct round {i + 1}: {r['mbps']:.0f} MB/s wall, {r['cpu_mbps']:.0f} MB/s by CPU "
            f"(send {r['cpu_send']:.2f} s, receive {r['cpu_recv']:.2f} s CPU; "
            f"dial {r['dial_seconds'] * 1000:.1f} ms)"
        )
        rounds.append(r)
        if args.baseline:
            t = direct_round(args, None, "tcp_")
            log(f"plain TCP round {i + 1}: {t['mbps']:.0f} MB/s wall, {t['cpu_mbps']:.0f} by CPU")
            tcp.append(t)
    rows = [_row("direct (loopback)", args, rounds)]
    if tcp:
        rows.append(_row("plain TCP, blocking, unsealed (baseline)", args, tcp))
    median = statistics.median(r["mbps"] for r in rounds)
    ok = median >= DIRECT_TARGET
    targets = [["direct job on loopback", f">= {DIRECT_TARGET:.0f} MB/s", f"{median:.0f} MB/s",
                "met" if ok else "MISSED"]]  # fmt: skip
    if tcp:
        ratio = median / statistics.median(t["mbps"] for t in tcp)
        targets.append(["direct / plain TCP in the same run", "-", f"{ratio:.0%}", "-"])
    return rows, targets, ok


def _row(name: str, args: argparse.Namespace, rounds: list[dict[str, Any]]) -> list[str]:
    rates = [r["mbps"] for r in rounds]
    return [
        name,
        f"{args.size / 2**20:.0f} MiB",
        f"{args.message / 2**20:g} MiB",
        " / ".join(f"{x:.0f}" for x in rates),
        f"{statistics.median(rates):.0f}",
        f"{statistics.median(r['cpu_mbps'] for r in rounds):.0f}",
        f"{statistics.median(r['dial_seconds'] for r in rounds) * 1000:.1f} ms",
    ]


# By reference: put_reference on one account, fetch_reference into a fresh
# folder with no login on the fetching side (the link is the capability).
def bench_by_reference(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]], bool]:
    import tempfile

    from relay import SENDER, RelayHub

    from freight.client import references as links
    from freight.client.api import Client

    rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        work = Path(tmp)
        src = work / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size // args.message):
                f.write(os.urandom(args.message))
        hub = RelayHub(work).start()
        try:
            for i in range(args.rounds):

                async def one(n: int = i) -> float:
                    async with Client(config_dir=hub.cfgs[SENDER]) as client:
                        ref = await links.put_reference(client, [src], expires=600)
                    # The fetching side needs no login: the link is the capability.
                    started = time.perf_counter()
                    await links.fetch_reference(ref, work / f"out{n}")
                    took = time.perf_counter() - started
                    # What fetch_reference counts is the packed stream (the
                    # list of files and their records); the file is the data.
                    got = (work / f"out{n}" / src.name).stat().st_size
                    if got != args.size:
                        raise RuntimeError(f"fetched {got} bytes of {args.size}")
                    return args.size / took / 1e6

                rates.append(run_loop(one(), args.loop))
                log(f"by-reference round {i + 1}: {rates[-1]:.0f} MB/s")
                shutil.rmtree(work / f"out{i}", ignore_errors=True)
        finally:
            hub.stop()
    median = statistics.median(rates)
    ok = median >= REF_TARGET
    rows = [["by-reference (hub on loopback)", f"{args.size / 2**20:.0f} MiB", "-",
             " / ".join(f"{x:.0f}" for x in rates), f"{median:.0f}", "-", "-"]]  # fmt: skip
    targets = [["by-reference fetch from the hub", f">= {REF_TARGET:.0f} MB/s",
                f"{median:.0f} MB/s", "met" if ok else "MISSED"]]  # fmt: skip
    return rows, targets, ok


# --------------------------------------------------------------------- main


HEADERS = ["manner", "size", "message", "rounds (MB/s)", "median MB/s", "by CPU MB/s", "dial"]
TARGET_HEADERS = ["target", "wanted", "measured", "verdict"]


def environment() -> dict[str, str]:
    return {
        "uname -a": " ".join(platform.uname()),
        "nproc": str(os.cpu_count()),
        "python": sys.version.split()[0],
    }


def write_markdown(path: Path, rows: list[list[str]], targets: list[list[str]]) -> None:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = shlex.join(["bench/jobs.py", *sys.argv[1:]])
    parts = [
        f"\n## Transfer jobs ({now})\n",
        f"Command: `{command}`\n",
        "\n".join(f"- {k}: `{v}`" for k, v in environment().items()) + "\n",
        markdown_table(HEADERS, rows) + "\n",
        markdown_table(TARGET_HEADERS, targets) + "\n",
    ]
    with open(path, "a") as f:
        f.write("\n".join(parts))
    log(f"appended results to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "role",
        nargs="?",
        default="bench",
        choices=["bench", "_receive", "_send", "_tcp_receive", "_tcp_send"],
    )
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--message", type=parse_size, default=parse_size("1M"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--py-spy", type=Path, dest="py_spy")
    p.add_argument("--no-baseline", dest="baseline", action="store_false")
    p.add_argument(
        "--direct-only", action="store_true", help="Measure the direct pipe only, not by-reference."
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "_receive":
        print(json.dumps(run_loop(_receive(60.0), args.loop)), flush=True)
        return 0
    if args.role == "_tcp_receive":
        print(json.dumps(_tcp_receive()), flush=True)
        return 0
    if args.role == "_tcp_send":
        completion = json.loads(sys.stdin.readline())
        print(json.dumps(_tcp_send(completion, args.size, args.message)))
        return 0
    if args.role == "_send":
        completion = json.loads(sys.stdin.readline())
        print(json.dumps(run_loop(_send(completion, args.size, args.message), args.loop)))
        return 0
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    rows, targets, ok = bench_direct(args)
    if not args.direct_only:
        try:
            more = bench_by_reference(args)
        except Exception as exc:  # report the failure, keep the direct figures
            log(f"by-reference failed: {exc!r}")
            targets.append(["by-reference fetch from the hub", f">= {REF_TARGET:.0f} MB/s",
                            "failed", "MISSED"])  # fmt: skip
            ok = False
        else:
            rows += more[0]
            targets += more[1]
            ok = ok and more[2]
    print(markdown_table(HEADERS, rows) + "\n")
    print(markdown_table(TARGET_HEADERS, targets))
    if args.markdown:
        write_markdown(args.markdown, rows, targets)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
