"""Making what was written durable in one step for many files."""

from __future__ import annotations

import os


def sync_filesystem(folder: int) -> None:
    """Flush the filesystem holding the open ``folder`` (syncfs(2)): what
    was written there reaches the disk, without flushing every other disk
    of the machine as sync(2) would (the fallback where syncfs is missing)."""
    import ctypes  # here, not at start-up: called once per transfer or batch

    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    if syncfs(folder) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
