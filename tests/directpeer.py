"""The receiving end of a direct job, as a process (run inside a network
namespace by tests/integration/test_directjob_netns.py, and by
bench/jobs.py): prints the listener's completion as one JSON line, accepts
one sender, reads until its end and prints what arrived.

    python -m tests.directpeer [--bind HOST:PORT] [--accept-timeout S]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time

from freight.errors import FreightError
from freight.transport.directjob import DirectListener


async def serve(bind: str | None, accept_timeout: float) -> dict[str, object]:
    async with await DirectListener.open(bind) as listener:
        print(json.dumps(listener.completion()), flush=True)
        try:
            conn = await listener.accept(accept_timeout)
        except FreightError as exc:
            return {"error": exc.message, "refused": listener.refused}
    digest = hashlib.sha256()
    count = 0
    started = time.perf_counter()
    async with conn:
        while chunk := await conn.recv():
            digest.update(chunk)
            count += len(chunk)
        elapsed = time.perf_counter() - started
        await conn.send(digest.hexdigest().encode())
    return {"bytes": count, "sha256": digest.hexdigest(), "seconds": elapsed, "peer": conn.peer}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default=None)
    parser.add_argument("--accept-timeout", type=float, default=10.0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    coro = serve(args.bind, args.accept_timeout)
    if args.uvloop:
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)
    sys.exit(0 if "error" not in result else 1)


if __name__ == "__main__":
    main()
