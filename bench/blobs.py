"""What keeping files in an S3-compatible bucket costs a push and a pull.

    .venv/bin/python bench/blobs.py [--size 256M] [--rounds 3] [--endpoint URL --bucket NAME]

Starts two hubs on loopback, one on its data folder and one with
``--blobs s3://BUCKET/bench`` (against moto's S3 server, started here, or
the S3-compatible server given with --endpoint, credentials from AWS_*),
and per round pushes then pulls a --size random file through each, the
two hubs alternating. Figures are MB/s of the whole command (start-up
included); the median over rounds is printed with each round's, and the
bucket's ratio to the folder's. The pulled copy is compared each time.
Note that moto keeps objects in its own Python process's memory: its own
speed bounds the bucket's figures here, not a real store's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # the test helpers: real hub processes

from freight.units import parse_size  # noqa: E402
from tests.s3support import CREDENTIALS, S3Server  # noqa: E402
from tests.support import Client, Hub, random_file, same_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint", default="", help="an S3-compatible server (default: moto)")
    parser.add_argument("--bucket", default="freight-bench", help="with --endpoint: must exist")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="freight-bench-blobs-"))
    s3: S3Server | None = None
    hubs: dict[str, Hub] = {}
    try:
        endpoint = args.endpoint
        if not endpoint:
            for k, v in CREDENTIALS.items():
                os.environ.setdefault(k, v)
            s3 = S3Server()
            s3.bucket(args.bucket)
            endpoint = s3.url
        hubs["folder"] = Hub(work / "folder").start()
        blobs = ["--blobs", f"s3://{args.bucket}/bench", "--s3-endpoint", endpoint]
        hubs["bucket"] = Hub(work / "bucket", extra=blobs).start()
        clients = {}
        for name, hub in hubs.items():
            clients[name] = Client(work / f"client-{name}", hub)
            clients[name].login()
        src = random_file(work / "data.bin", size, seed=1)
        rates: dict[tuple[str, str], list[float]] = {}
        for n in range(args.rounds):
            for name, client in clients.items():
                began = time.monotonic()
                client.run("push", str(src), "--as", f"r{n}.bin", "--quiet", timeout=1800)
                rates.setdefault((name, "push"), []).append(size / (time.monotonic() - began))
                back = work / f"back-{name}.bin"
                began = time.monotonic()
                client.run("pull", f"r{n}.bin", str(back), "--quiet", timeout=1800)
                rates.setdefault((name, "pull"), []).append(size / (time.monotonic() - began))
                assert same_bytes(src, back), f"{name}: the pulled copy differs"
                back.unlink()
                client.run("rm", f"r{n}.bin")
        print(f"{size / 2**20:.0f} MiB, {args.rounds} rounds, MB/s of the whole command")
        for way in ("push", "pull"):
            med = {h: statistics.median(rates[(h, way)]) for h in hubs}
            each = {h: " ".join(f"{r / 1e6:.0f}" for r in rates[(h, way)]) for h in hubs}
            print(
                f"{way}: folder {med['folder'] / 1e6:.0f} ({each['folder']}), "
                f"bucket {med['bucket'] / 1e6:.0f} ({each['bucket']}), "
                f"bucket/folder {med['bucket'] / med['folder']:.2f}"
            )
    finally:
        for hub in hubs.values():
            hub.stop()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
