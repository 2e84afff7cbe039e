"""What most of the hub's services share, built once by
:func:`~.compose.build_hub`: the database, the data folder, the event log
and the metrics."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from ..store import Database, DataLayout
from ..store.bucket import Bucket
from .observe import EventLog, Metrics


@dataclass(frozen=True, slots=True)
class Core:
    db: Database
    layout: DataLayout
    events: EventLog
    metrics: Metrics
    bucket: Bucket | None = None  # stored files' bytes there, not in the data folder

    async def forget_file(self, user_id: int, name: str) -> bool:
        """Remove a stored file: its record, and its bytes in the data folder
        (a bucket's content is swept once nothing names it). False when
        there was no such file."""
        if not await self.db.delete_file(user_id, name):
            return False
        if self.bucket is None:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self.layout.file_path(user_id, name).unlink)
        return True
