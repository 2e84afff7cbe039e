"""The ``freight`` command tree, built with only the command modules a run
needs (``freight ls`` does not import the relay's or the agents' modules)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..client.config import CA_FILE_ENV, PROXY_ENV
from . import toplevel
from .helptext import plain_help

# Module names (under freight.cli) in the order they register: a command's
# place in ``freight --help`` follows it.
MODULES = (
    "hubcmd",
    "files",
    "users",
    "relay",
    "agents",
    "agentcmd",
    "collect",
    "links",
    "msg",
    "job",
    "probe",
    "tunnel",
    "observe",
    "loadtest",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help=toplevel.VERSION_HELP
        ),
    ] = False,
    proxy: Annotated[
        str | None, typer.Option("--proxy", envvar=PROXY_ENV, help=toplevel.PROXY_HELP)
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", envvar=CA_FILE_ENV, help=toplevel.CA_FILE_HELP)
    ] = None,
) -> None:
    """Move files between machines that cannot reach each other directly, through a hub."""
    # Handed on through the environment, where HubSession.from_config looks,
    # so every command (and any it starts) takes the same route and trust.
    if proxy is not None:
        os.environ[PROXY_ENV] = proxy
    if ca_file is not None:
        os.environ[CA_FILE_ENV] = str(ca_file.expanduser().resolve())


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def build(modules: Collection[str] = MODULES) -> Any:
    """The click command of ``freight`` with the commands of ``modules``
    (all of them by default), with help as freight.cli.helptext renders it."""
    app = typer.Typer(
        name="freight",
        help=toplevel.DESCRIPTION,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # usage errors as plain lines; help: see helptext
    )
    app.callback()(_main)
    app.command()(version)
    admin_app = typer.Typer(help=toplevel.COMMANDS["admin"][1], no_args_is_help=True)
    if "files" in modules or "relay" in modules or "tunnel" in modules or "observe" in modules:
        app.add_typer(admin_app, name="admin")
    # Each module imported only when asked for: importing is most of the cost.
    if "hubcmd" in modules:
        from . import hubcmd

        hubcmd.register(app)
    if "files" in modules:
        from . import files

        files.register(app, admin_app)
    if "users" in modules:
        from . import users

        users.register(app)
    if "relay" in modules:
        from . import relay

        relay.register(app, admin_app)
    if "agents" in modules:
        from . import agents

        agents.register(app)
    if "agentcmd" in modules:
        from . import agentcmd

        agentcmd.register(app)
    if "collect" in modules:
        from . import collect

        collect.register(app)
    if "links" in modules:
        from . import links

        links.register(app)
    if "msg" in modules:
        from . import msg

        msg.register(app)
    if "job" in modules:
        from . import job

        job.register(app)
    if "probe" in modules:
        from . import probe

        probe.register(app)
    if "tunnel" in modules:
        from . import tunnel

        tunnel.register(app, admin_app)
    if "observe" in modules:
        from . import observe

        observe.register(app, admin_app)
    if "loadtest" in modules:
        from . import loadtest

        loadtest.register(app)
    cli = typer.main.get_command(app)
    plain_help(cli)
    return cli
