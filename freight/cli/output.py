"""How the CLI talks to people: progress bars, tables, errors."""

from __future__ import annotations

import io
import json
import os
import select
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from ..client.options import TransferResult


class ErrConsole:
    """Standard error as a rich Console, made on first use: rich is not
    imported by a command that prints nothing there."""

    def __init__(self) -> None:
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)


err_console = ErrConsole()


class WholeWriter(io.RawIOBase):
    """A file descriptor that takes every byte it is given.

    Two things lose output otherwise. A blocking write to a pipe can return
    short: right after uvloop's loop closes, a write that waits for a slow
    reader comes back with 65,536 of 575,242 bytes (no signal, no O_NONBLOCK;
    seen with strace), and with PYTHONUNBUFFERED the text layer drops the
    rest. And O_NONBLOCK belongs to the open pipe or terminal, not to this
    process: whoever shares it (or our own event loop reading standard input
    from the same terminal or socket) can set it, and a write then fails with
    EAGAIN. Here a short write continues and EAGAIN waits until the descriptor
    takes more, as a blocking write would.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except BlockingIOError:
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll()  # as long as a blocking write would wait
        return done

    def close(self) -> None:
        # The descriptor stays open: it is the process's standard output.
        super().close()


def whole_std_streams() -> None:
    """Put sys.stdout and sys.stderr on WholeWriters, so every output path
    (print_json, typer.echo, the rich consoles, error lines) writes whole.
    Streams that are not real descriptors (a test harness's) stay as they are."""
    for name in ("stdout", "stderr"):
        old = getattr(sys, name)
        try:
            fd = old.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        if isinstance(getattr(old, "buffer", None), io.BufferedWriter) and isinstance(
            old.buffer.raw, WholeWriter
        ):
            continue
        old.flush()
        new = io.TextIOWrapper(
            io.BufferedWriter(WholeWriter(fd), 1 << 16),
            encoding=old.encoding,
            errors=old.errors,
            # A terminal sees each line at once; stderr always (progress,
            # errors); a pipe or file gets stdout in blocks, flushed by the
            # commands after each answer and at exit.
            line_buffering=name == "stderr" or os.isatty(fd),
        )
        setattr(sys, name, new)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=None) + "\n")
    sys.stdout.flush()


class RichReporter:
    """Progress bars per file plus a total bar, on stderr."""

    def __init__(
        self, total_bytes: int, total_files: int, *, quiet: bool = False, json_out: bool = False
    ) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.quiet = quiet or json_out
        self.json_out = json_out  # notices become {"event": "notice"} lines
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console.console,
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
