"""How fast a link serves a file from the hub (the by-reference data path).

    .venv/bin/python bench/links.py [--size 1G] [--rounds 3] [--curl] [--reference]

Starts a hub on loopback, pushes a --size random file, then per round makes
a link to it (``freight share --json``) and fetches it (``freight fetch``
into an empty folder; the copy is checked against the file's BLAKE3 by the
fetch itself). The figure is MB/s of the fetch (wall clock of the command,
start-up included); the median over rounds is printed, with each round's.
With --curl each round also fetches a fresh link with ``curl -k -o
/dev/null`` (the hub's serving alone, without Freight's client); with
--reference it also seals the file into a by-reference job reference
(``put_reference``: pack, seal, push, link) and fetches it back
(``fetch_reference``: fetch, open, unpack, check), both timed in-process
with the SDK. The hub and its data folder are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # the test helpers: a real hub process

from freight.units import parse_size  # noqa: E402
from tests.support import Client, Hub, random_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--curl", action="store_true", help="also time curl on a link")
    parser.add_argument("--reference", action="store_true", help="also time references")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="freight-bench-links-"))
    hub = Hub(work / "hub")
    try:
        hub.start()
        client = Client(work / "client", hub)
        client.login()
        src = random_file(work / "data.bin", size, seed=1)
        client.run("push", str(src), "--quiet", timeout=1800)
        rates: list[float] = []
        curl: list[float] = []
        for n in range(args.rounds):
            link = json.loads(client.run("share", "data.bin", "--json").stdout)["url"]
            out = work / f"out{n}"
            out.mkdir()
            began = time.monotonic()
            client.run("fetch", link, "-o", str(out), "--quiet", timeout=1800)
            seconds = time.monotonic() - began
            if (out / "data.bin").stat().st_size != size:
                raise SystemExit("the fetched copy has the wrong size")
            shutil.rmtree(out)
            rates.append(size / seconds / 1e6)
            print(f"round {n + 1}: {rates[-1]:.0f} MB/s ({seconds:.2f} s)", flush=True)
            if args.curl:
                link = json.loads(client.run("share", "data.bin", "--json").stdout)["url"]
                began = time.monotonic()
                subprocess.run(["curl", "-sSfk", "-o", "/dev/null", link.split("#")[0]], check=True)
                curl.append(size / (time.monotonic() - began) / 1e6)
                print(f"round {n + 1}: curl {curl[-1]:.0f} MB/s", flush=True)
        print(f"fetch of a {args.size} link: median {statistics.median(rates):.0f} MB/s")
        if curl:
            print(f"curl of a {args.size} link: median {statistics.median(curl):.0f} MB/s")
        if args.reference:
            references(client, src, work, args.rounds)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)


def references(client: Client, src: Path, work: Path, rounds: int) -> None:
    import freight
    from freight.client.references import fetch_reference

    size = src.stat().st_size
    puts: list[float] = []
    gets: list[float] = []

    async def one(n: int) -> None:
        async with freight.Client(client.hub.url, config_dir=client.config) as sdk:
            began = time.monotonic()
            ref = await sdk.put_reference([src])
            puts.append(size / (time.monotonic() - began) / 1e6)
        out = work / f"ref{n}"
        began = time.monotonic()
        got, _ = await fetch_reference(ref, out)
        gets.append(size / (time.monotonic() - began) / 1e6)
        if got != ref["bytes"]:
            raise SystemExit("the reference came back with another size")
        shutil.rmtree(out)
        print(
            f"round {n + 1}: put_reference {puts[-1]:.0f} MB/s, "
            f"fetch_reference {gets[-1]:.0f} MB/s",
            flush=True,
        )

    for n in range(rounds):
        asyncio.run(one(n))
    print(
        f"put_reference: median {statistics.median(puts):.0f} MB/s; "
        f"fetch_reference: median {statistics.median(gets):.0f} MB/s"
    )


if __name__ == "__main__":
    main()
