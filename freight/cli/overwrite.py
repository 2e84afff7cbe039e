"""``--overwrite`` for the commands that write what a peer names
(``freight receive``, ``freight cp AGENT:SRC DEST``): an existing file
that is not the transfer's own is replaced only with it, or when the
person at the terminal says yes."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import Annotated, Any

import typer

from ..client.receiving import Consent, existing_files, refuse_to_replace
from .output import err_console

OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace files that already exist (without it: ask on a terminal, else refuse).",
    ),
]

SHOWN = 5  # files named in the question


def consent(overwrite: bool, reporter: Any = None) -> Consent:
    """What a receiving command does about files it would replace."""

    async def decide(paths: list[str]) -> None:
        if overwrite:
            return
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            await refuse_to_replace(paths)
        progress = getattr(reporter, "progress", None)
        if progress is not None:
            progress.stop()  # a live progress display would draw over the question
        try:
            if not await _ask(paths):
                await refuse_to_replace(paths)
        finally:
            if progress is not None:
                progress.start()

    return decide


async def _ask(paths: list[str]) -> bool:
    for p in paths[:SHOWN]:
        err_console.print(f"  {p}", markup=False, highlight=False)
    if len(paths) > SHOWN:
        err_console.print(f"  … and {len(paths) - SHOWN} more", markup=False)
    question = f"{existing_files(paths)}. Replace {'it' if len(paths) == 1 else 'them'}?"
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()

    def ask() -> None:
        # A daemon thread: Ctrl-C at the question ends the program at once,
        # and the event loop keeps the connection alive meanwhile.
        try:
            yes = typer.confirm(question, default=False, err=True)
        except (typer.Abort, EOFError):
            yes = False

        def give() -> None:
            if not answer.done():
                answer.set_result(yes)

        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(give)

    threading.Thread(target=ask, name="overwrite-question", daemon=True).start()
    return await answer
