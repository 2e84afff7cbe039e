"""The bandwidth probe, ``--limit 50%`` and ``--priority background`` on
shaped paths, iperf3 on the same path in the same run:

    .venv/bin/python bench/bandwidth.py [--rates 10,50,100] [--rtts 20,80]
        [--rounds 2] [--limit-seconds 62] [--markdown FILE]
        [--only probe,limit,background] [--background-rounds 1]

For each rate (Mbit/s, tbf each way on a veth pair into a network
namespace) and round trip (a userspace TUN delay line: this kernel may have
no netem), a hub runs here and the client in the namespace:

probe       iperf3 (-t 6 -O 2: steady state, slow start left out) and
            ``freight probe`` alternate, --rounds times each; ratio = median
            probe / median iperf3, up and down. Target: within +-15 %.
limit       ``freight push --limit 50%`` of a file that lasts; the hub's
            partial file is sampled every 0.5 s for --limit-seconds (from
            its first byte); every 30 s window's rate / iperf3's up rate.
            Target: every window 45-55 %.
background  ``freight push --priority background``, then iperf3 beside it;
            then the push alone for 10 s; then iperf3 alone. Targets: iperf3
            loses <= 10 %; the push has >= 90 % of the link within 10 s.

Needs root, iproute2 (ip, tc) and iperf3 (``make test-proxies``). Exit
status 1 if a target is missed. Run by ``make bench-bandwidth``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import markdown_table  # noqa: E402
from tests.shapedpath import (  # noqa: E402
    BackgroundResult,
    ShapedPath,
    background_run,
    make_file,
    push,
    sample_partials,
    shaped_path,
    stop,
    window_rates,
)
from tests.support import Client, Hub  # noqa: E402

HEADERS = ["path", "measure", "iperf3", "freight", "ratio", "target", "met"]


def log(msg: str) -> None:
    print(f"[bandwidth] {msg}", file=sys.stderr, flush=True)


def mbit(rate: float) -> str:
    return f"{rate * 8 / 1e6:.2f} Mbit/s"


def bench_path(rate: float, rtt: float, args: argparse.Namespace) -> list[list[str]]:
    rows: list[list[str]] = []
    name = f"{rate:g} Mbit/s, {rtt:g} ms"
    with shaped_path(rate, octet=234) as path, path.delay(rtt), tempfile.TemporaryDirectory() as d:
        hub = Hub(Path(d) / "hub", host=path.outside).start()
        try:
            client = Client(Path(d) / "client", hub)
            path.login(client)
            with path.iperf3_server() as port:
                if "probe" in args.only:
                    up = probe_rows(path, client, port, name, args, rows)
                else:
                    up = path.iperf3(port, 6.0)
                if "limit" in args.only:
                    limit_rows(path, hub, client, Path(d), up, name, args, rows)
                if "background" in args.only:
                    src = make_file(Path(d) / "background.bin", int(up * 40))
                    for k in range(args.background_rounds):
                        result = background_run(path, hub, client, src, port)
                        round_name = name if args.background_rounds == 1 else f"{name}, #{k + 1}"
                        background_rows(result, round_name, rows)
                    src.unlink()
        finally:
            hub.stop()
    return rows


def probe_rows(
    path: ShapedPath,
    client: Client,
    port: int,
    name: str,
    args: argparse.Namespace,
    rows: list[list[str]],
) -> float:
    """iperf3 and the probe alternating; returns iperf3's median rate up."""
    found: dict[str, list[float]] = {"up": [], "down": [], "p-up": [], "p-down": []}
    for _ in range(args.rounds):
        found["up"].append(path.iperf3(port, 6.0))
        found["down"].append(path.iperf3(port, 6.0, reverse=True))
        probe = json.loads(path.freight(client.env, "probe", "--json"))
        found["p-up"].append(probe["up"]["available"])
        found["p-down"].append(probe["down"]["available"])
    for way in ("up", "down"):
        peer, ours = statistics.median(found[way]), statistics.median(found["p-" + way])
        ratio = ours / peer
        met = abs(ratio - 1) <= 0.15
        rows.append(
            [
                name,
                f"probe {way}",
                mbit(peer),
                mbit(ours),
                f"{ratio:.2f}",
                "0.85-1.15",
                "yes" if met else "NO",
            ]
        )
        log(f"{name} probe {way}: {mbit(ours)} vs iperf3 {mbit(peer)}")
    return statistics.median(found["up"])


def limit_rows(
    path: ShapedPath,
    hub: Hub,
    client: Client,
    d: Path,
    up: float,
    name: str,
    args: argparse.Namespace,
    rows: list[list[str]],
) -> None:
    size = int(up * 0.5 * (args.limit_seconds + 20))
    src = make_file(d / "half.bin", size)
    proc = push(path, client, src, "--limit", "50%")
    try:
        samples = sample_partials(hub, proc, args.limit_seconds)
    finally:
        stop(proc)
    src.unlink()
    windows = window_rates(samples[2:], 30.0)
    shares = [w / up for w in windows]
    met = bool(shares) and all(0.45 <= s <= 0.55 for s in shares)
    rows.append(
        [
            name,
            "--limit 50%, 30 s windows",
            mbit(up),
            ", ".join(mbit(w) for w in windows) or "-",
            ", ".join(f"{s:.2f}" for s in shares) or "-",
            "0.45-0.55",
            "yes" if met else "NO",
        ]
    )
    log(f"{name} limit 50%: {shares}")


def background_rows(result: BackgroundResult, name: str, rows: list[list[str]]) -> None:
    took = result.seconds_to(0.9)
    rows.append(
        [
            name,
            "iperf3 beside background",
            mbit(result.alone),
            mbit(result.beside),
            f"loses {result.competitor_loss:.1%}",
            "<= 10 %",
            "yes" if result.competitor_loss <= 0.10 else "NO",
        ]
    )
    rows.append(
        [
            name,
            "background takes back 90 %",
            mbit(result.link),
            ", ".join(mbit(r) for r in result.after[:4]) + " ...",
            f"{took:g} s" if took is not None else "never",
            "<= 10 s",
            "yes" if took is not None and took <= 10 else "NO",
        ]
    )
    log(f"{name} background: {result}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="10,50,100", help="Mbit/s, comma-separated")
    p.add_argument("--rtts", default="20,80", help="round trips in ms, comma-separated")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--limit-seconds", type=float, default=62.0)
    p.add_argument(
        "--only",
        default="probe,limit,background",
        help="steps to run, comma-separated (probe, limit, background)",
    )
    p.add_argument(
        "--background-rounds",
        type=int,
        default=1,
        help="background runs per path, one after the other (the competitor's loss varies)",
    )
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    args.only = set(args.only.split(","))
    rows: list[list[str]] = []
    for rate in (float(r) for r in args.rates.split(",")):
        for rtt in (float(r) for r in args.rtts.split(",")):
            rows += bench_path(rate, rtt, args)
    table = markdown_table(HEADERS, rows)
    print(table)
    if args.markdown:
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        command = shlex.join(["bench/bandwidth.py", *sys.argv[1:]])
        env = f"- uname -a: `{' '.join(platform.uname())}`\n- nproc: `{os.cpu_count()}`\n"
        with open(args.markdown, "a") as f:
            f.write(
                f"\n## Bandwidth probe and priorities ({now})\n\nCommand: `{command}`\n\n{env}\n{table}\n"
            )
        log(f"appended results to {args.markdown}")
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
