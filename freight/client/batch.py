"""Pushing many small files: batches instead of one stream each
(:mod:`freight.protocol.batch`).

Files of at most ``SMALL_FILE_BYTES`` are read (in a worker thread),
hashed and packed into batches; each batch is one request the hub stores
all or none and acknowledges once every file is durable and
digest-checked. A batch that was not acknowledged (the connection broke,
the hub restarted) is sent again whole on the same retry policy as a push:
storing it twice gives the same files. A file that grew past the small
limit while it was read goes through an ordinary stream instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..engine.hashing import digest_bytes
from ..errors import StorageError, code_to_error
from ..names import check_name
from ..protocol import messages as m
from ..protocol.batch import BatchEntry, encode_batch, fits
from ..protocol.bucket import TokenBucket
from ..protocol.errors import RemoteProtocolError
from ..protocol.limits import SMALL_FILE_BYTES
from .options import Reporter, TransferOptions, TransferResult
from .session import Link

Item = tuple[Path, str]  # (local file, stored name)


class Links(Protocol):
    """Where a batch gets its link to the hub (a push's LinkHolder)."""

    async def get(self) -> Link: ...


@dataclass
class Batch:
    """Files read for one batch, and the ones that turned out too big."""

    sid: str
    entries: list[BatchEntry] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    grown: list[Item] = field(default_factory=list)
    size: int = 0  # bytes of the files held

    def add(self, entry: BatchEntry, blob: bytes, path: Path) -> None:
        self.entries.append(entry)
        self.blobs.append(blob)
        self.paths.append(path)
        self.size += len(blob)

    def halves(self) -> list[Batch]:
        """The batch as two smaller ones (sent instead of one that a path
        keeps cutting short)."""
        mid = len(self.entries) // 2
        return [
            Batch(
                _new_sid(),
                self.entries[a:b],
                self.blobs[a:b],
                self.paths[a:b],
                size=sum(len(blob) for blob in self.blobs[a:b]),
            )
            for a, b in ((0, mid), (mid, len(self.entries)))
        ]


def _new_sid() -> str:
    return "b" + secrets.token_hex(15)


def split_small(items: list[Item]) -> tuple[list[tuple[Path, str, int]], list[Item]]:
    """(small files for batches with their sizes now, the rest)."""
    small: list[tuple[Path, str, int]] = []
    large: list[Item] = []
    for path, name in items:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        if size <= SMALL_FILE_BYTES:
            small.append((path, name, size))
        else:
            large.append((path, name))
    return small, large


def plan(items: list[tuple[Path, str, int]]) -> Iterator[list[Item]]:
    """Group small files into batches by count and size."""
    group: list[Item] = []
    size = 0
    for path, name, more in items:
        if group and not fits(len(group), size, more):
            yield group
            group, size = [], 0
        group.append((path, name))
        size += more
    if group:
        yield group


def read_batch(group: list[Item]) -> Batch:
    """Read and hash a group of files (blocking: run in a thread)."""
    batch = Batch(sid=_new_sid())
    for path, name in group:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            data = _read_upto(fd, SMALL_FILE_BYTES + 1)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > SMALL_FILE_BYTES or not fits(len(batch.blobs), batch.size, len(data)):
            batch.grown.append((path, name))  # it grew meanwhile: a stream of its own
            continue
        entry = BatchEntry(
            name=check_name(name), size=len(data), mtime=st.st_mtime, digest=digest_bytes(data)
        )
        batch.add(entry, data, path)
    return batch


def _read_upto(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = os.read(fd, limit - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class BatchSender:
    """Sends batches over a push's link, paced by ``--limit`` and by the
    rate the hub gives back."""

    def __init__(self, opts: TransferOptions, reporter: Reporter) -> None:
        self.opts = opts
        self.reporter = reporter
        self.bucket: TokenBucket | None = None
        self._retune(0)

    async def send(self, holder: Links, batch: Batch) -> m.PutFilesAck:
        """One attempt: the batch's request and the hub's answer."""
        msg, payload = encode_batch(batch.sid, batch.entries, batch.blobs)
        await self._pace(len(payload))
        link = await holder.get()
        port = await link.stream_port(batch.sid)
        try:
            await port.send(msg, payload)
            reply, _ = await asyncio.wait_for(port.recv(), self.opts.stall_timeout)
        finally:
            await link.release(port)
        if isinstance(reply, m.Abort | m.Error):
            raise code_to_error(reply.code, reply.message)
        if not isinstance(reply, m.PutFilesAck) or reply.stored != len(batch.entries):
            raise RemoteProtocolError(f"expected the batch's ack, got {type(reply).__name__}")
        self._retune(reply.rate)
        return reply

    async def _pace(self, size: int) -> None:
        if self.bucket is None:
            return
        delay = self.bucket.reserve(size, time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)

    def _retune(self, hub_rate: int) -> None:
        rates = [r for r in (self.opts.limit, hub_rate) if r > 0]
        if not rates:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(min(rates), time.monotonic())
        else:
            self.bucket.set_rate(min(rates), time.monotonic())

    def results(self, batch: Batch, seconds: float, attempts: int) -> list[TransferResult]:
        return [
            TransferResult(
                name=e.name,
                path=str(p),
                size=e.size,
                digest=e.digest,
                seconds=seconds,
                attempts=attempts,
                wire_bytes=e.size,
            )
            for e, p in zip(batch.entries, batch.paths, strict=True)
        ]
