"""What most of the hub's services share, built once by
:func:`~.compose.build_hub`: the database, the data folder, the event log
and the metrics."""

from __future__ import annotations

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
