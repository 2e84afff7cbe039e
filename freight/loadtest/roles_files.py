"""``push`` and ``pull`` clients: files of the row's sizes to and from the
hub's store, each one checked by its BLAKE3 digest, resumable across the
faults as the CLI's transfers are."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from ..client.api import Client
from ..errors import FreightError
from .clients import RowRun, digest_of, issue, retried, write_file
from .schedule import draw_size


async def push_client(run: RowRun, i: int) -> None:
    client = Client(run.gate.url, config_dir=run.login(i), **run.transport())
    numbers = itertools.count(1)
    assert run.row.size is not None
    size = run.row.size

    async def one(due: float) -> None:
        k = next(numbers)
        n = draw_size(size, run.rng, run.file_size)
        path = run.work / f"{i}-{k}"
        digest = await asyncio.to_thread(write_file, path, run, n, k)
        name = f"{run.tag}/{run.row.id}/{i}-{k}"
        start = run.clock()
        try:
            results = await client.push(path, as_name=name)
        finally:
            path.unlink(missing_ok=True)
        run.stats.record(due, start, run.clock(), n)
        if results and results[0].digest == digest:
            run.stats.verified += 1
        else:
            run.stats.mismatched += 1
        run.ok(i)
        with contextlib.suppress(FreightError):
            await client.rm(name)

    try:
        await issue(run, i, one)
    finally:
        await client.aclose()


async def pull_client(run: RowRun, i: int) -> None:
    """Push one file of the row's size first (its own, so every pull is
    checked against the digest it was written with), then pull it again
    and again."""
    client = Client(run.gate.url, config_dir=run.login(i), **run.transport())
    assert run.row.size is not None
    n = draw_size(run.row.size, run.rng, run.file_size)
    name = f"{run.tag}/{run.row.id}/{i}"
    source = run.work / f"source-{i}"
    digest = ""
    numbers = itertools.count(1)

    async def put() -> None:
        nonlocal digest
        if not digest:
            digest = await asyncio.to_thread(write_file, source, run, n, i)
        await client.push(source, as_name=name)

    async def one(due: float) -> None:
        dest = run.work / f"pulled-{i}-{next(numbers)}"
        start = run.clock()
        try:
            pulled = await client.pull(name, dest)
            got = await asyncio.to_thread(digest_of, dest)
        finally:
            dest.unlink(missing_ok=True)
        run.stats.record(due, start, run.clock(), n)
        if pulled.files and pulled.files[0].digest == digest == got:
            run.stats.verified += 1
        else:
            run.stats.mismatched += 1
        run.ok(i)

    try:
        await retried(run, put)
        source.unlink(missing_ok=True)
        await issue(run, i, one)
    finally:
        try:
            with contextlib.suppress(FreightError, OSError):
                await client.rm(name)
        finally:
            await client.aclose()
