"""The local end of a pull: a resumable partial file next to its
destination, made durable at each checkpoint and published atomically."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..engine.partial import FolderPlace, PartialFile
from ..engine.streams import Acceptance
from ..errors import StorageError
from ..protocol.stream import StreamRequested
from .config import read_json, write_json_atomic
from .options import DISK_FULL_ERRNOS, TransferOptions
from .safefs import DEFAULT_FILE_MODE, FileExists, Tree, same_file


class SideFileCheckpoints:
    """A pull's checkpoint, in a side file of the client's state folder
    (written by an atomic rename): ``{"size": …, "checkpoint": …}``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    async def load(self) -> int | None:
        saved = read_json(self.path, None)
        if not saved or saved.get("size") != self.size:
            return None
        return int(saved.get("checkpoint", 0))

    async def save(self, offset: int) -> None:
        await asyncio.to_thread(
            write_json_atomic, self.path, {"size": self.size, "checkpoint": offset}
        )

    async def clear(self) -> None:
        self.path.unlink(missing_ok=True)


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
        self.file: PartialFile | None = None
        self.folder: Tree | None = None
        self.mtime = 0.0
        self.resumed_from = 0

    @property
    def fd(self) -> int:
        return self.file.fd if self.file is not None else -1

    def _open_folder(self) -> Tree:
        root = self.opts.root
        if root is None:
            return Tree.open(self.dest.parent, create=True)
        return Tree.beneath(root, self.dest.parent.relative_to(root).parts, create=True)

    async def open(self, req: StreamRequested) -> Acceptance:
        self.close()
        self.mtime = req.mtime
        store = SideFileCheckpoints(self.state_path, req.size)
        saved = None if req.fresh else await store.load()
        try:
            folder = self.folder = self._open_folder()
            existing = folder.lstat((self.dest.name,))
            if (
                self.opts.keep_existing
                and existing is not None
                and not same_file(existing, req.size, req.mtime)
            ):
                raise FileExists(f"{self.dest} already exists")
            place = FolderPlace(
                folder,
                (self.partial.name,),
                self.dest.name,
                mode=DEFAULT_FILE_MODE,
                shown=str(self.partial),
            )
            self.file = PartialFile(place, store, req.size)
            checkpoint = await self.file.resume(saved or 0)
            if not checkpoint:
                await store.save(0)
        except OSError as exc:
            raise StorageError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        self.resumed_from = checkpoint
        return Acceptance(
            checkpoint=checkpoint,
            prefix_digest=self.file.hasher.hexdigest() if checkpoint else "",
            level=self.opts.compress,
            rate=self.opts.limit,
        )

    def write(self, offset: int, data: bytes) -> None:
        assert self.file is not None
        try:
            self.file.write(offset, data)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise StorageError(f"local disk full writing {self.partial}") from None
            raise StorageError(f"cannot write {self.partial}: {exc.strerror}") from None

    async def durable(self, offset: int) -> tuple[int, str]:
        assert self.file is not None
        try:
            await self.file.checkpoint(offset)
        except OSError as exc:
            raise StorageError(f"cannot make {self.partial} durable: {exc.strerror}") from None
        return self.opts.limit, self.opts.compress

    async def finish(self, total: int, digest: str) -> tuple[bool, str]:
        assert self.file is not None
        verified, actual = await self.file.finish(digest, mtime=self.mtime or None)
        if verified:
            await self.file.store.clear()
        self.close()
        return verified, actual

    async def aborted(self, code: str, message: str) -> None:
        if code in ("source_changed", "storage", "disk_full"):
            await self.discard()

    async def discard(self) -> None:
        if self.file is not None:
            await self.file.discard()
        else:
            self.state_path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.folder is not None:
            self.folder.close()
            self.folder = None
