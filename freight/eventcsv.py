"""The event log as CSV: one layout for the hub's export
(``GET /v1/admin/events?format=csv``) and ``freight events --csv``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["CSV_COLUMNS", "csv_header", "csv_lines"]

CSV_COLUMNS = ("id", "ts", "time", "kind", "actor", "agent", "address", "detail")


def csv_header() -> str:
    return ",".join(CSV_COLUMNS) + "\r\n"


def csv_lines(events: Iterable[Mapping[str, Any]]) -> str:
    """CSV lines of events as the API gives them: ``ts`` exact (repr),
    ``time`` readable (UTC), ``detail`` as compact JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    for e in events:
        ts = float(e["ts"])
        writer.writerow(
            [
                e["id"],
                repr(ts),
                datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"),
                e["kind"],
                e["actor"],
                e.get("agent", ""),
                e.get("address", ""),
                json.dumps(e["detail"], separators=(",", ":")),
            ]
        )
    return out.getvalue()
