"""How the CLI talks to people: progress bars, tables, errors."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..client.transfer import TransferResult

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=None) + "\n")
    sys.stdout.flush()


class RichReporter:
    """Progress bars per file plus a total bar, on stderr."""

    def __init__(
        self, total_bytes: int, total_files: int, *, quiet: bool = False, json_out: bool = False
    ) -> None:
        self.quiet = quiet or json_out
        self.json_out = json_out  # notices become {"event": "notice"} lines
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
            disable=self.quiet,
        )
        self.tasks: dict[str, TaskID] = {}
        self.done: dict[str, int] = {}
        self.total_task: TaskID | None = None
        self.set_totals(total_bytes, total_files)

    def set_totals(self, total_bytes: int, total_files: int) -> None:
        """Add the total bar once the totals are known (a receiver learns
        them from the sender's list)."""
        if total_files > 1 and self.total_task is None:
            self.total_task = self.progress.add_task(
                f"total ({total_files} files)", total=total_bytes
            )

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, name: str, size: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=size)
            self.done[name] = 0

    def update(self, name: str, done: int) -> None:
        if name not in self.tasks:
            return
        delta = done - self.done[name]
        self.done[name] = done
        self.progress.update(self.tasks[name], completed=done)
        if self.total_task is not None and delta:
            self.progress.advance(self.total_task, delta)

    def finish(self, name: str, result: TransferResult) -> None:
        if name in self.tasks and self.total_task is not None:
            self.progress.remove_task(self.tasks[name])

    def notice(self, text: str) -> None:
        if self.json_out:
            print_json({"event": "notice", "message": text})
        elif not self.quiet:
            self.progress.console.print(f"[yellow]{text}[/yellow]")
