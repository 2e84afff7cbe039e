"""The local end of a pull: a resumable partial file next to its
destination, made durable at each checkpoint and published atomically."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ..engine.hashing import hash_prefix, new_hasher
from ..engine.streams import Acceptance
from ..errors import StorageError
from ..protocol.stream import StreamRequested
from .config import read_json, write_json_atomic
from .options import DISK_FULL_ERRNOS, TransferOptions
from .safefs import DEFAULT_FILE_MODE, FileExists, Tree, same_file


class FileSink:
    """Receives a pulled stream into ``DEST.freight-partial`` (``0600``
    until finished, opened without following a link that stands there);
    the checkpoint is durable when the partial is fsynced and the state
    file renamed."""

    def __init__(self, dest: Path, state_path: Path, opts: TransferOptions) -> None:
        self.dest = dest
        self.partial = dest.with_name(dest.name + ".freight-partial")
        self.state_path = state_path
        self.opts = opts
        self.fd = -1
        self.folder: Tree | None = None
        self.size = 0
        self.mtime = 0.0
        self.hasher = new_hasher()
        self.resumed_from = 0

    def _open_folder(self) -> Tree:
        root = self.opts.root
        if root is None:
            return Tree.open(self.dest.parent, create=True)
        return Tree.beneath(root, self.dest.parent.relative_to(root).parts, create=True)

    async def open(self, req: StreamRequested) -> Acceptance:
        saved = read_json(self.state_path, None)
        self.size, self.mtime = req.size, req.mtime
        try:
            folder = self.folder = self._open_folder()
            name, part = (self.dest.name,), (self.partial.name,)
            existing = folder.lstat(name)
            if (
                self.opts.keep_existing
                and existing is not None
                and not same_file(existing, req.size, req.mtime)
            ):
                raise FileExists(f"{self.dest} already exists")
            held = folder.lstat(part)
            checkpoint = 0
            if (
                saved
                and saved.get("size") == req.size
                and not req.fresh
                and held is not None
                and held.st_size >= int(saved.get("checkpoint", 0))
            ):
                checkpoint = int(saved.get("checkpoint", 0))
                self.fd = folder.open_write(part)
                os.ftruncate(self.fd, checkpoint)
                self.hasher = await asyncio.to_thread(hash_prefix, self.fd, checkpoint)
            else:
                self.fd = folder.open_write(part, truncate=True)
                self._save(0)
        except OSError as exc:
            raise StorageError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        self.resumed_from = checkpoint
        return Acceptance(
            checkpoint=checkpoint,
            prefix_digest=self.hasher.hexdigest() if checkpoint else "",
            level=self.opts.compress,
            rate=self.opts.limit,
        )

    def _save(self, checkpoint: int) -> None:
        write_json_atomic(self.state_path, {"size": self.size, "checkpoint": checkpoint})

    def write(self, offset: int, data: bytes) -> None:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise StorageError(f"local disk full writing {self.partial}") from None
            raise StorageError(f"cannot write {self.partial}: {exc.strerror}") from None
        self.hasher.update(data)

    async def durable(self, offset: int) -> tuple[int, str]:
        try:
            await asyncio.to_thread(os.fsync, self.fd)
            await asyncio.to_thread(self._save, offset)
        except OSError as exc:
            raise StorageError(f"cannot make {self.partial} durable: {exc.strerror}") from None
        return self.opts.limit, self.opts.compress

    async def finish(self, total: int, digest: str) -> tuple[bool, str]:
        await asyncio.to_thread(os.fsync, self.fd)
        actual = self.hasher.hexdigest()
        if actual != digest:
            self.discard()
            return False, actual
        assert self.folder is not None
        fd, self.fd = self.fd, -1
        self.folder.publish(
            fd, (self.partial.name,), self.dest.name, DEFAULT_FILE_MODE, self.mtime or None
        )
        self.state_path.unlink(missing_ok=True)
        return True, actual

    async def aborted(self, code: str, message: str) -> None:
        if code in ("source_changed", "storage", "disk_full"):
            self.discard()

    def discard(self) -> None:
        if self.folder is not None:
            self.folder.unlink((self.partial.name,))
        self.close()
        self.state_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.folder is not None:
            self.folder.close()
            self.folder = None
