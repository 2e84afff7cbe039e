"""Pulling a folder of many small files: batches instead of one stream each
(docs/protocol.md 6.13).

The client asks for up to a batch of small files at once (GetFiles); the
hub answers with one PutFiles holding all of them, each with the digest it
recorded when the file was stored. Every file is checked against that
digest *and* the listing's, written beside its place as
``NAME.freight-partial`` (opened without following a link), made durable
with one syncfs for the whole batch and only then renamed into place, so a
crash never leaves a file with the wrong bytes under its name. A batch that
failed is asked for again whole (the retry loop is the caller's).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ..engine.durable import sync_filesystem
from ..engine.hashing import digest_bytes
from ..errors import IntegrityError, code_to_error
from ..protocol import messages as m
from ..protocol.batch import decode_batch, encode_request, fits
from ..protocol.errors import RemoteProtocolError
from .safefs import DEFAULT_FILE_MODE, FileExists, Tree
from .session import Link

PARTIAL = ".freight-partial"


class Wanted(Protocol):
    """A file of a folder pull (``pulltree.PullItem``)."""

    @property
    def name(self) -> str: ...

    @property
    def dest(self) -> Path: ...

    @property
    def size(self) -> int: ...

    @property
    def digest(self) -> str: ...


def groups(items: Sequence[Wanted]) -> Iterator[list[Wanted]]:
    """The items in batches by count and listed size."""
    group: list[Wanted] = []
    size = 0
    for item in items:
        if group and not fits(len(group), size, item.size):
            yield group
            group, size = [], 0
        group.append(item)
        size += item.size
    if group:
        yield group


async def fetch(link: Link, group: Sequence[Wanted], timeout: float) -> list[tuple[bytes, float]]:
    """One attempt: the group's bytes and mtimes, in order, each checked
    against the listing's digest."""
    sid = "g" + secrets.token_hex(15)
    msg, payload = encode_request(sid, [i.name for i in group])
    port = await link.stream_port(sid)
    try:
        await port.send(msg, payload)
        reply, body = await asyncio.wait_for(port.recv(), timeout)
    finally:
        await link.release(port)
    if isinstance(reply, m.Abort | m.Error):
        raise code_to_error(reply.code, reply.message)
    if not isinstance(reply, m.PutFiles):
        raise RemoteProtocolError(f"expected the batch, got {type(reply).__name__}")
    files = decode_batch(reply, body)
    if [e.name for e, _ in files] != [i.name for i in group]:
        raise RemoteProtocolError("the hub answered a batch with other files")
    out = []
    for (entry, data), item in zip(files, group, strict=True):
        actual = digest_bytes(data)
        if actual != item.digest or actual != entry.digest:
            raise IntegrityError(f"{item.name} arrived with a different digest; pull it again")
        out.append((bytes(data), entry.mtime))
    return out


def place(
    root: Path, group: Sequence[Wanted], got: Sequence[tuple[bytes, float]], keep: bool
) -> None:
    """Write the files beside their places, make them durable, rename them
    in (blocking: run in a thread). ``keep``: refuse to replace a file."""
    tree = Tree.open(root, create=True)
    try:
        where = [item.dest.relative_to(root).parts for item in group]
        if keep:
            for parts, item in zip(where, group, strict=True):
                if tree.lstat(parts) is not None:
                    raise FileExists(f"{item.dest} already exists")
        partials = [(*parts[:-1], parts[-1] + PARTIAL) for parts in where]
        for part, (data, mtime) in zip(partials, got, strict=True):
            fd = tree.open_write(part, truncate=True)
            try:
                view, pos = memoryview(data), 0
                while pos < len(view):
                    pos += os.write(fd, view[pos:])
                os.fchmod(fd, DEFAULT_FILE_MODE)
                if mtime:
                    os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
        sync_filesystem(tree.fd)
        for part, parts in zip(partials, where, strict=True):
            folder = tree.folder(parts[:-1])
            os.replace(part[-1], parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        tree.close()
