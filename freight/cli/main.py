"""The ``freight`` command's entry point (``freight.cli.main:run``).

Start-up is most of what a short command costs, so nothing heavy is
imported here: ``--version`` and the top level's ``--help`` are answered
from freight.cli.toplevel, and any other run builds the command tree with
only the module of the command it names (freight.cli.root); each command
imports the SDK when it runs. Errors become one line and an exit code in
one place, ``common.run_async`` (see freight.errors for the codes)."""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

from .. import __version__
from . import toplevel


def command(modules: Collection[str] | None = None) -> Any:
    """The ``freight`` command tree (click), with help as helptext renders
    it: every command, or only those of ``modules`` (see root.MODULES)."""
    from . import root

    return root.build(root.MODULES if modules is None else modules)


# Commands whose process is no client of a hub (a hub's code may rely on
# aiohttp's defaults): see _prepare_client.
NOT_CLIENTS = {"hub", "version"}


def modules_for(args: list[str]) -> Collection[str] | None:
    """The command modules that running ``args`` needs (None: all, for the
    whole tree's help or an error naming what exists)."""
    name = toplevel.command_name(args)
    if name is None or name not in toplevel.COMMANDS:
        return None
    return toplevel.COMMANDS[name][0]


def run() -> None:
    args = sys.argv[1:]
    if args in (["--version"], ["version"]):
        sys.stdout.write(__version__ + "\n")
        return
    if args == ["--help"]:
        sys.stdout.write(toplevel.help_text())
        return
    _run(args)


def _run(args: list[str]) -> None:
    import gc

    from ..allocator import tune_allocator
    from ..errors import from_exception
    from ..logs import configure_client_logging
    from .common import report
    from .output import whole_std_streams

    whole_std_streams()
    tune_allocator()
    configure_client_logging()
    cli = command(modules_for(args))
    _prepare_client(args)
    # Everything imported so far lives until exit: keep the collector from
    # walking it again and again (and once more at exit, ~0.3 s).
    gc.freeze()
    try:
        cli.main(args, prog_name="freight")
    except Exception as exc:  # raised outside run_async, e.g. checking arguments
        mapped = from_exception(exc)
        if mapped is None:
            raise
        report(mapped)
        sys.exit(mapped.exit_code)


def _prepare_client(args: list[str]) -> None:
    """A command that will talk to a hub gets aiohttp without the CA store
    it would read at import (client.trust.import_web_client: ~45 ms of a
    short command); help, which needs no aiohttp, does not import it."""
    name = toplevel.command_name(args)
    if name is None or name in NOT_CLIENTS or "--help" in args:
        return
    from ..client.trust import import_web_client

    import_web_client()


if __name__ == "__main__":
    run()
