"""One resumable partial file: written at offsets beside its final place,
made durable at checkpoints, verified by BLAKE3 and renamed into place.

Every receiver of files uses it: the hub's side of a push, a pull, send /
receive (and with it ``cp`` to and from agents). What differs is kept
outside, behind two small interfaces:

* a :class:`Place` says where the partial lives and how it is published
  (:class:`FolderPlace`: a folder reached without following links;
  :class:`PathPlace`: a path of the hub's data folder);
* a :class:`CheckpointStore` records the durable checkpoint (the hub in its
  database, a pull in a side file, send / receive in the partial's own
  length, :class:`LengthCheckpoints`).

The order is always: write, fsync, then record the checkpoint; a crash in
between leaves a checkpoint at or below what the file holds, and a resume
truncates the file to the checkpoint and hashes that prefix again.

The file methods are blocking (callers already in a worker thread use them
as they are); the ``async`` ones run the blocking parts in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .direct import DIRECT_MIN, DirectWriter
from .hashing import Hasher, hash_prefix, new_hasher


class CheckpointStore(Protocol):
    """Where the durable checkpoint of one partial file is recorded."""

    async def load(self) -> int | None:
        """The recorded checkpoint, or None when there is none to resume."""
        ...

    async def save(self, offset: int) -> None:
        """Record that the bytes below ``offset`` are durable."""
        ...

    async def clear(self) -> None:
        """Forget the partial (finished, or worthless)."""
        ...


class Place(Protocol):
    """Where a partial file lives and how it takes its final place."""

    shown: str  # for messages

    def held(self) -> int | None:
        """Size of the partial standing there (a regular file), or None."""
        ...

    def open(self, *, truncate: bool) -> int:
        """The partial for reading and writing, created if missing."""
        ...

    def publish(self, fd: int, mode: int | None, mtime: float | None) -> None:
        """Give the partial open as ``fd`` its mode and time, close it and
        rename it into place."""
        ...

    def remove(self) -> None:
        """Remove the partial if it is there."""
        ...


class Folder(Protocol):
    """What :class:`FolderPlace` needs of a folder (``client.safefs.Tree``)."""

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None: ...

    def open_write(self, parts: tuple[str, ...], *, truncate: bool = False) -> int: ...

    def publish(
        self, fd: int, part: tuple[str, ...], name: str, mode: int, mtime: float | None
    ) -> None: ...

    def unlink(self, parts: tuple[str, ...]) -> None: ...


class FolderPlace:
    """``part`` beside ``name`` inside a folder, every step without following
    a link (the folder's own methods)."""

    def __init__(
        self, folder: Folder, part: Sequence[str], name: str, *, mode: int, shown: str
    ) -> None:
        self.folder = folder
        self.part = tuple(part)
        self.name = name
        self.mode = mode
        self.shown = shown

    def held(self) -> int | None:
        st = self.folder.lstat(self.part)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def open(self, *, truncate: bool) -> int:
        return self.folder.open_write(self.part, truncate=truncate)

    def publish(self, fd: int, mode: int | None, mtime: float | None) -> None:
        self.folder.publish(fd, self.part, self.name, self.mode if mode is None else mode, mtime)

    def remove(self) -> None:
        self.folder.unlink(self.part)


class PathPlace:
    """A partial at ``path`` published as ``target`` (another folder of the
    same file system), the target's folder synced after the rename."""

    def __init__(self, path: Path, target: Path, *, shown: str) -> None:
        self.path = path
        self.target = target
        self.shown = shown

    def held(self) -> int | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open(self, *, truncate: bool) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        return os.open(self.path, os.O_RDWR)

    def publish(self, fd: int, mode: int | None, mtime: float | None) -> None:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if mtime:
            os.utime(self.path, (mtime, mtime))
        self.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, self.target)
        dfd = os.open(self.target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class LengthCheckpoints:
    """Send / receive's record: the partial's own length. Its bytes are not
    fsynced one checkpoint at a time; the sender checks the prefix's digest
    before it resumes, so a prefix the crash left wrong is sent again."""

    def __init__(self, place: Place) -> None:
        self.place = place

    async def load(self) -> int | None:
        return await asyncio.to_thread(self.place.held)

    async def save(self, offset: int) -> None:
        return None

    async def clear(self) -> None:
        return None


class PartialFile:
    """One file being received into ``place``; see the module docstring.

    ``done`` is the offset up to which bytes were written (and hashed).
    A file of at least DIRECT_MIN bytes is written around the page cache
    (:mod:`.direct`): its last bytes may wait in a buffer until
    :meth:`sync`, :meth:`publish` or :meth:`close` puts them in the file."""

    def __init__(self, place: Place, store: CheckpointStore, size: int) -> None:
        self.place = place
        self.store = store
        self.size = size
        self.fd = -1
        self.done = 0
        self.hasher: Hasher = new_hasher()
        self._direct: DirectWriter | None = None

    @property
    def is_open(self) -> bool:
        return self.fd >= 0

    # --- blocking --------------------------------------------------------------

    def open_at(self, checkpoint: int) -> None:
        """Open the partial holding ``checkpoint`` bytes (a fresh one for 0):
        bytes past it were never acknowledged and are dropped; the hasher
        is brought up to it."""
        self.close()
        self.fd = self.place.open(truncate=checkpoint == 0)
        opened = False
        try:
            os.ftruncate(self.fd, checkpoint)
            self.hasher = hash_prefix(self.fd, checkpoint) if checkpoint else new_hasher()
            if self.size >= DIRECT_MIN:
                self._direct = DirectWriter.open(self.fd, checkpoint)
            opened = True
        finally:
            if not opened:
                self.close()
        self.done = checkpoint

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (the end of what was written) and
        feed the hasher; OSError as the disk reports it."""
        if self._direct is not None:
            self._direct.write(offset, data)
            self.hasher.update(data)
            self.done = offset + len(data)
            return
        n = os.pwrite(self.fd, data, offset)
        if n < len(data):  # rare: a signal, or a disk filling up; go on or fail
            view = memoryview(data)
            while n < len(view):
                n += os.pwrite(self.fd, view[n:], offset + n)
        self.hasher.update(data)
        self.done = offset + len(data)

    def flush(self) -> None:
        """Put bytes still buffered (see the class docstring) in the file."""
        if self._direct is not None:
            self._direct.flush()

    def sync(self) -> None:
        """Make every byte written durable."""
        self.flush()
        os.fsync(self.fd)

    def verify(self, digest: str) -> tuple[bool, str]:
        """(the bytes written hash to ``digest``, their digest)."""
        actual = self.hasher.hexdigest()
        return actual == digest, actual

    def publish(self, mode: int | None = None, mtime: float | None = None) -> None:
        """Rename the (verified) partial into place; the file is closed."""
        self.flush()
        self._close_direct()
        fd, self.fd = self.fd, -1
        self.place.publish(fd, mode, mtime)

    def put(self, data: bytes, mode: int | None = None, mtime: float | None = None) -> None:
        """A small file in one go, ``data`` already checked by the caller:
        create, write, publish (no hashing, no checkpoint)."""
        self.close()
        self.fd = self.place.open(truncate=True)
        written = False
        try:
            view, pos = memoryview(data), 0
            while pos < len(view):
                pos += os.pwrite(self.fd, view[pos:], pos)
            written = True
        finally:
            if not written:
                self.close()
        self.done = len(data)
        self.publish(mode, mtime)

    def remove(self) -> None:
        self.close()
        self.place.remove()

    def _close_direct(self) -> None:
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.close()

    def close(self) -> None:
        if self._direct is not None:
            # What was written stays in the partial (a resume keeps it).
            with contextlib.suppress(OSError):
                self._direct.flush()
            self._close_direct()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    # --- with the checkpoint store ------------------------------------------

    async def resume(self, checkpoint: int | None = None) -> int:
        """Open the partial at the store's checkpoint (or the one given),
        if the partial standing there holds at least that much; else start
        afresh. Returns the offset resumed from (0: a fresh file)."""
        if checkpoint is None:
            checkpoint = await self.store.load()
        held = await asyncio.to_thread(self.place.held)
        if not checkpoint or held is None or held < checkpoint or checkpoint > self.size:
            checkpoint = 0  # a partial shorter than its checkpoint cannot be trusted
        await asyncio.to_thread(self.open_at, checkpoint)
        return checkpoint

    async def checkpoint(self, offset: int) -> None:
        """Make the bytes below ``offset`` durable, then record it."""
        await asyncio.to_thread(self.sync)
        await self.store.save(offset)

    async def finish(
        self, digest: str, *, mode: int | None = None, mtime: float | None = None
    ) -> tuple[bool, str]:
        """Sync and verify; publish if the digest matches, else discard.
        Returns (verified, the digest of what was received). The store is
        left to the caller (a hub records the published file with it)."""
        await asyncio.to_thread(self.sync)
        ok, actual = self.verify(digest)
        if not ok:
            await self.discard()
            return False, actual
        await asyncio.to_thread(self.publish, mode, mtime)
        return True, actual

    async def discard(self) -> None:
        """The partial is worthless: remove it and forget its checkpoint."""
        await asyncio.to_thread(self.remove)
        await self.store.clear()
