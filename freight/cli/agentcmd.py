"""``freight agent …``: enrol this machine, print its key, run the agent
(the daemon on a managed machine)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..agent.config import AgentConfig
from ..agent.enrol import enrol
from ..client.config import ClientConfig
from ..client.relay import identity_key
from ..client.session import check_transport
from ..errors import UsageError
from ..protocol.e2e import public_of
from ..protocol.tunnel import AllowList
from .common import TransportOpt, run_async
from .output import err_console

agent_app = typer.Typer(help="Run this machine as an agent.", no_args_is_help=True)


ENROL_TOKEN_ENV = "FREIGHT_ENROL_TOKEN"


def enrol_token(given: str | None, token_file: Path | None, token_stdin: bool) -> str:
    """The enrolment token from exactly one place. On the command line it
    shows in every user's process list, so the others are preferred."""
    sources = [s for s in (given, token_file, token_stdin or None) if s is not None]
    if len(sources) > 1:
        raise UsageError("give the token one way: TOKEN, --token-file or --token-stdin")
    if token_file is not None:
        try:
            text = token_file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    elif token_stdin:
        text = sys.stdin.readline()
    else:
        text = given if given is not None else os.environ.get(ENROL_TOKEN_ENV, "")
    token = text.strip()
    if not token:
        raise UsageError(
            "no enrolment token",
            hint=f"pipe it in with --token-stdin, or use --token-file or ${ENROL_TOKEN_ENV}",
        )
    return token


@agent_app.command("enroll")
def agent_enroll(
    url: Annotated[str, typer.Argument(help="The hub, e.g. https://hub.example.com:8443")],
    root: Annotated[
        list[Path], typer.Option("--root", help="A folder this agent serves (repeatable).")
    ],
    token: Annotated[
        str | None,
        typer.Argument(
            help="The one-time token from freight agents token. Other users of this machine "
            "can read a command line: prefer --token-stdin, --token-file or "
            f"${ENROL_TOKEN_ENV}.",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Read the token from this file.")
    ] = None,
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read the token from standard input.")
    ] = False,
    fingerprint: Annotated[
        str | None,
        typer.Option(
            help="The hub's certificate fingerprint, checked and pinned; with --ca-file (a "
            "TLS-inspecting proxy's CA), the hub's own certificate that logins are bound to."
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="Trust this CA instead of pinning.")
    ] = None,
    proxy: Annotated[str | None, typer.Option(help="HTTP proxy to reach the hub.")] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use",
            help="Pin the certificate the hub presents without asking (no --fingerprint).",
        ),
    ] = False,
    allow_overwrite: Annotated[
        bool,
        typer.Option(
            "--allow-overwrite",
            help="Let an admin's cp --overwrite replace existing files in the roots.",
        ),
    ] = False,
    allow_forward: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-forward",
            metavar="HOST:PORT",
            help="A target this agent forwards to (freight forward AGENT:HOST:PORT); "
            "repeat for more; HOST:* for every port, udp/HOST:PORT for datagrams. "
            "Nothing else is forwarded.",
        ),
    ] = None,
) -> None:
    """Enrol this machine once; then run: freight agent run."""
    for r in root:  # before the token is read
        if not r.is_dir():
            raise UsageError(f"--root {r}: not a folder")
    try:
        AllowList(allow_forward or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    secret = enrol_token(token, token_file, token_stdin)
    ask = not token_stdin and sys.stdin.isatty()

    def confirm(seen: str) -> bool:
        return typer.confirm("Trust this hub and pin its certificate?", err=True)

    async def go() -> dict[str, Any]:
        cfg = await enrol(
            url,
            secret,
            root,
            fingerprint=fingerprint,
            ca_file=ca_file,
            proxy=proxy,
            trust_on_first_use=yes,
            confirm=confirm if ask else None,
            notice=err_console.print,
            allow_overwrite=allow_overwrite,
            allow_forward=allow_forward or [],
        )
        return {"name": cfg.name, "hub": cfg.hub, "roots": cfg.roots}

    info = run_async(go)
    err_console.print(
        f"Enrolled as {info['name']!r} at {info['hub']}, serving {', '.join(info['roots'])}.\n"
        "Now run: freight agent run   (or install the unit from: freight agent run --print-unit)"
    )


@agent_app.command("key")
def agent_key() -> None:
    """Print this machine's identity public key (made if there is none yet),
    for an admin to set with: freight agents key NAME KEY."""
    typer.echo(public_of(identity_key(ClientConfig())).hex())


@agent_app.command("run")
def agent_run(
    print_unit: Annotated[
        bool, typer.Option("--print-unit", help="Print a systemd unit for this agent and exit.")
    ] = False,
    unit_user: Annotated[
        str, typer.Option("--unit-user", help="The user the printed unit runs the agent as.")
    ] = "freight",
    transport: TransportOpt = "auto",
) -> None:
    """Run the agent: stay attached to the hub, serve files and commands."""
    from ..agent.daemon import Agent, systemd_unit
    from ..hub.observe import configure_logging

    check_transport(transport)
    config = ClientConfig()
    if print_unit:
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", unit_user):
            raise UsageError(f"--unit-user {unit_user!r}: not a user name")
        typer.echo(systemd_unit(config, unit_user), nl=False)
        return
    cfg = AgentConfig.load(config)
    configure_logging()
    err_console.print(f"Agent {cfg.name!r} serving {', '.join(cfg.roots)} via {cfg.hub}")
    run_async(lambda: Agent(cfg, config, transport).run())


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
