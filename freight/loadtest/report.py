"""What a run shows: a live table each second, the summary at the end (per
row and in total, with every expect clause's verdict), the same as JSON,
a CSV line per row and second, and HDR histogram logs of the latencies."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hdrh.log import HistogramLogWriter
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..units import format_bytes
from .runner import Result, Sample
from .stats import RowStats

CSV_COLUMNS = (
    "t",
    "row",
    "clients",
    "attached",
    "ops_s",
    "bytes_s",
    "p50",
    "p99",
    "errors",
    "faults",
    "recovered",
)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def live_table(sample: Sample) -> Table:
    table = Table(title=f"freight loadtest: {sample.t:.0f} s", title_justify="left")
    for head in ("row", "clients", "attached", "ops/s", "MB/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(head, justify="left" if head == "row" else "right")
    table.add_column("faults (recovered)", justify="right")
    for rid, r in sample.rows.items():
        table.add_row(
            rid,
            str(r["clients"]),
            str(r["attached"]),
            str(r["ops_s"]),
            f"{r['bytes_s'] / 1e6:.2f}",
            _ms(r.get("p50")),
            _ms(r.get("p99")),
            str(r["errors"]),
            f"{r['faults']} ({r['recovered']})",
        )
    if sample.hub_rss is not None:
        cpu = "-" if sample.hub_cpu is None else f"{sample.hub_cpu:.0f} %"
        table.caption = f"hub: CPU {cpu} of a core, memory {format_bytes(sample.hub_rss)}"
    return table


class Outputs:
    """Where each second goes: the live table, a CSV file, HDR logs."""

    def __init__(
        self,
        console: Console | None,
        csv_path: Path | None = None,
        hdr_prefix: Path | None = None,
    ) -> None:
        self.console = console
        self.live: Live | None = None
        self.csv_file: IO[str] | None = csv_path.open("w", newline="") if csv_path else None
        self.csv = csv.writer(self.csv_file) if self.csv_file else None
        if self.csv is not None:
            self.csv.writerow(CSV_COLUMNS)
        self.hdr_prefix = hdr_prefix
        self.hdr_files: dict[str, IO[str]] = {}
        self.hdr: dict[str, Any] = {}
        self.last_t = 0.0

    @contextmanager
    def showing(self) -> Iterator[Outputs]:
        if self.console is not None and self.console.is_terminal:
            with Live(console=self.console, refresh_per_second=2, transient=False) as live:
                self.live = live
                yield self
        else:
            yield self
        self.close()

    def sample(self, sample: Sample) -> None:
        if self.live is not None:
            self.live.update(live_table(sample))
        if self.csv is not None:
            for rid, r in sample.rows.items():
                self.csv.writerow([sample.t, rid, *(r.get(c, "") for c in CSV_COLUMNS[2:])])
        if self.csv_file is not None:
            self.csv_file.flush()  # a file one can follow while the run goes on
        if self.hdr_prefix is not None:
            for rid, hist in sample.intervals.items():
                writer = self.hdr.get(rid)
                if writer is None:
                    f = Path(f"{self.hdr_prefix}-{rid}.hlog").open("w")  # noqa: SIM115 (closed in close)
                    self.hdr_files[rid] = f
                    writer = self.hdr[rid] = HistogramLogWriter(f)
                    writer.output_comment(f"freight loadtest row {rid}; values in microseconds")
                    writer.output_legend()
                writer.output_interval_histogram(hist, self.last_t, sample.t, 1000.0)
                self.hdr_files[rid].flush()
        self.last_t = sample.t

    def close(self) -> None:
        """Stop the live table and close the files (once; again is nothing)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = self.csv = None
        for f in self.hdr_files.values():
            f.close()
        self.hdr_files.clear()
        self.hdr_prefix = None


def row_summary(stats: RowStats, seconds: float) -> dict[str, Any]:
    return {
        "clients": stats.clients,
        "attached": stats.attached_end,
        "attached_peak": stats.attached_peak,
        "operations": stats.ops,
        "sent": stats.sent,
        "bytes": stats.bytes,
        "operations_per_second": round(stats.ops / seconds, 1) if seconds else 0.0,
        "bytes_per_second": round(stats.bytes / seconds) if seconds else 0,
        "latency": stats.latencies(),
        "latency_raw": stats.latencies(stats.raw),
        "lost": stats.lost,
        "verified": stats.verified,
        "mismatched": stats.mismatched,
        "errors": dict(stats.errors),
        "faults": stats.faults,
        "recovered": stats.recovered,
    }


def as_json(result: Result) -> dict[str, Any]:
    total = RowStats("total")
    for s in result.stats.values():
        total.latency.add(s.latency)
        total.raw.add(s.raw)
        keys = ("clients", "attached_end", "ops", "sent", "bytes", "lost", "verified", "mismatched")
        for key in keys:
            setattr(total, key, getattr(total, key) + getattr(s, key))
        total.errors.update(s.errors)
        total.faults += s.faults
        total.recovered += s.recovered
    return {
        "seed": result.seed,
        "seconds": round(result.seconds, 2),
        "hub_alive": result.hub_alive,
        "hub_restarts": result.hub_restarts,
        "passed": result.passed,
        "interrupted": result.interrupted,
        "ended_at": round(result.ended_at, 3),
        "rows": {rid: row_summary(s, result.seconds) for rid, s in result.stats.items()},
        "total": row_summary(total, result.seconds),
        "expect": [
            {"row": v.row, "clause": v.clause, "measured": v.shown, "passed": v.passed}
            for v in result.verdicts
        ],
    }


def print_summary(console: Console, result: Result) -> None:
    """Two tables (volume, then latency from the due time) and the verdicts."""
    data = as_json(result)
    rows = [*data["rows"].items(), ("total", data["total"])]
    volume = Table(
        title=f"summary: {data['seconds']:.0f} s, seed {result.seed}", title_justify="left"
    )
    for head in ("row", "clients", "attached", "ops", "bytes", "ops/s", "MB/s", "errors"):
        volume.add_column(head, justify="left" if head == "row" else "right")
    volume.add_column("faults (recovered)", justify="right")
    for rid, r in rows:
        volume.add_row(
            rid,
            str(r["clients"]),
            str(r["attached"]),
            str(r["operations"]),
            format_bytes(r["bytes"]),
            f"{r['operations_per_second']:g}",
            f"{r['bytes_per_second'] / 1e6:.2f}",
            str(sum(r["errors"].values())),
            f"{r['faults']} ({r['recovered']})",
        )
    console.print(volume)
    for rid, r in data["rows"].items():
        if r["errors"]:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["errors"].items()))
            console.print(f"errors of {rid}: {kinds}")
    latency = Table(title="latency from the due time, ms", title_justify="left")
    for head in ("row", "min", "p50", "p90", "p99", "p99.9", "max", "lost"):
        latency.add_column(head, justify="left" if head == "row" else "right")
    for rid, r in rows:
        lat = r["latency"]
        if lat:
            keys = ("min", "p50", "p90", "p99", "p99.9", "max")
            latency.add_row(rid, *(_ms(lat.get(k)) for k in keys), str(r["lost"]))
    console.print(latency)
    for v in result.verdicts:
        mark = "[green]pass[/]" if v.passed else "[red]FAIL[/]"
        what = v.shown if v.measured is None else f"measured {v.shown}"
        console.print(f"{mark}  {v.row}: {v.clause}  ({what})", highlight=False)
    alive = "answering" if result.hub_alive else "[red]not answering[/]"
    console.print(f"hub: {alive}; restarts: {result.hub_restarts}", highlight=False)
    failed = sum(1 for v in result.verdicts if not v.passed)
    if failed:
        console.print(f"[red]{failed} of {len(result.verdicts)} expect clauses failed[/]")
    else:
        console.print(f"all {len(result.verdicts)} expect clauses met")
