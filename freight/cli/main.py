"""The ``freight`` command. Errors become one line and an exit code in one
place, ``common.run_async`` (see freight.errors for the codes); account
commands live in ``users``."""

from __future__ import annotations

import gc
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..allocator import tune_allocator
from ..client.config import ClientConfig
from ..client.options import (
    QuietReporter,
    TransferOptions,
    retry_policy_from_env,
    stall_timeout_from_env,
)
from ..client.pulltree import PullPlan, plan_pull, pull_many
from ..client.relay import register_identity
from ..client.session import (
    CA_FILE_ENV,
    DATA_PATHS,
    PROXY_ENV,
    HubSession,
    canonical_url,
    check_transport,
    fetch_fingerprint,
    hostport,
    mismatch_error,
    parse_hub_url,
)
from ..client.transfer import expand_sources, push_many
from ..errors import Conflict, FingerprintMismatch, UsageError, from_exception
from ..logs import configure_client_logging
from ..protocol.messages import LEVELS
from ..transport.proxy import choose_proxy, redact
from ..units import format_bytes, format_rate, parse_rate
from . import agentcmd, agents, collect, hubcmd, relay, users
from .common import (
    HubOpt,
    JsonOpt,
    QuietOpt,
    TransportOpt,
    normalise_fingerprint,
    report,
    run_async,
)
from .helptext import plain_help
from .output import RichReporter, err_console, print_json, whole_std_streams

app = typer.Typer(
    name="freight",
    help="Move files between machines that cannot reach each other directly, through a hub.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as plain lines; help: see helptext
)
admin_app = typer.Typer(help="Hub administration (admin accounts only).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    proxy: Annotated[
        str | None,
        typer.Option(
            "--proxy",
            envvar=PROXY_ENV,
            help=(
                "HTTP proxy for this command, http://HOST:PORT or http://USER:PASS@HOST:PORT, or "
                "'none' to connect directly; wins over the proxy saved at login and HTTPS_PROXY. "
                f"Same as ${PROXY_ENV}."
            ),
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            envvar=CA_FILE_ENV,
            help=(
                "Trust the CA certificates in this PEM file (chain and host name checked) instead "
                f"of the pinned fingerprint, for this command. Same as ${CA_FILE_ENV}."
            ),
        ),
    ] = None,
) -> None:
    """Move files between machines that cannot reach each other directly, through a hub."""
    # Handed on through the environment, where HubSession.from_config looks,
    # so every command (and any it starts) takes the same route and trust.
    if proxy is not None:
        os.environ[PROXY_ENV] = proxy
    if ca_file is not None:
        os.environ[CA_FILE_ENV] = str(ca_file.expanduser().resolve())


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


hubcmd.register(app)


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="Hub address, e.g. https://hub.example:8443")],
    user: Annotated[str, typer.Option("--user", "-u", help="Account name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    fingerprint: Annotated[
        str | None,
        typer.Option(help="Expected certificate fingerprint (SHA256:...), checked and pinned."),
    ] = None,
    trust_on_first_use: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use",
            help=(
                "Pin whatever certificate the hub presents if none is pinned yet, without "
                "asking (needed instead of --fingerprint when there is no terminal to ask on)."
            ),
        ),
    ] = False,
    proxy: Annotated[
        str | None,
        typer.Option(
            "--proxy",
            help=(
                "HTTP proxy to reach this hub through, http://HOST:PORT or "
                "http://USER:PASS@HOST:PORT ('none': directly, even if HTTPS_PROXY is set); "
                "saved for later commands."
            ),
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help=(
                "Trust the CA certificates in this PEM file (chain and host name checked) "
                "instead of pinning the fingerprint; saved for later commands."
            ),
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Log in to a hub and pin its certificate (trust on first use, like SSH).

    A certificate seen for the first time is pinned after you confirm it on
    the terminal, or when it matches --fingerprint; without a terminal (a
    script, --password-stdin) give --fingerprint or --trust-on-first-use.
    With --ca-file the certificate is verified with that CA instead of pinned.
    --proxy and --ca-file, given here or before the command, are saved with the
    login and used by later commands.
    """
    config = ClientConfig()
    u = parse_hub_url(url)
    wanted_proxy = proxy if proxy is not None else os.environ.get(PROXY_ENV)
    route = choose_proxy(u, explicit=wanted_proxy, saved=None)
    ca_text = str(ca_file) if ca_file is not None else os.environ.get(CA_FILE_ENV)
    ca = Path(ca_text).expanduser().resolve() if ca_text else None

    async def go() -> dict[str, Any]:
        # With a CA the handshake itself verifies the chain and host name.
        seen = await fetch_fingerprint(u, proxy=route, ca_file=ca)
        pinned = config.pinned(hostport(u))
        wanted = normalise_fingerprint(fingerprint) if fingerprint else None
        if wanted and wanted != seen:
            raise FingerprintMismatch(
                f"the hub presents {seen}, not the expected {wanted}",
                hint="check the address and the fingerprint the hub printed at start-up",
            )
        if ca is not None:
            err_console.print(f"The hub's certificate is signed by a CA in {ca}", markup=False)
        elif pinned and pinned != seen and not wanted:
            raise mismatch_error(u, pinned, seen)
        elif not pinned and not wanted:
            err_console.print(f"The hub's certificate fingerprint is {seen}")
            if trust_on_first_use:
                err_console.print("Pinning it (trust on first use).")
            elif sys.stdin.isatty() and not password_stdin:
                if not typer.confirm("Trust this hub and pin its certificate?", err=True):
                    raise UsageError("not trusted; nothing saved")
            else:
                raise UsageError(
                    "this hub's certificate is not pinned yet and there is no terminal to "
                    "confirm it on; nothing saved",
                    hint="compare it with the fingerprint the hub printed at start-up and give "
                    f"--fingerprint {seen}, or --trust-on-first-use to pin it unchecked",
                )
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"Password for {user}@{hostport(u)}: ")
        pin = seen if ca is None else ""  # a CA replaces pinning
        async with HubSession(
            canonical_url(u), fingerprint=pin, ca_file=ca, proxy=route
        ) as session:
            body = await session.request("POST", "/v1/login", {"user": user, "password": password})
            # This device's identity key, which connect/listen prove themselves with.
            session.token = body["token"]
            await session.aclose()
            try:
                await register_identity(session, config)
            except Conflict as exc:  # logged in all the same: keys rm works from here
                err_console.print(f"freight: warning: {exc.user_message()}", markup=False)
        if ca is None:
            config.pin(hostport(u), seen)
        config.save_login(
            canonical_url(u),
            user,
            body["token"],
            body["role"],
            proxy=wanted_proxy.strip() if wanted_proxy is not None else None,
            ca_file=str(ca) if ca is not None else None,
        )
        return {
            "hub": canonical_url(u),
            "user": user,
            "role": body["role"],
            "fingerprint": seen,
            "ca_file": str(ca) if ca is not None else None,
            "proxy": redact(route) if route is not None else None,
        }

    info = run_async(go)
    if json_out:
        print_json(info)
    else:
        err_console.print(f"Logged in to {info['hub']} as {info['user']} ({info['role']})")


def transfer_options(
    limit: str, compress: str, data_path: str, parallel: int = 1
) -> TransferOptions:
    if compress not in LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LEVELS)}", param_hint="--compress")
    if data_path not in DATA_PATHS:
        raise typer.BadParameter(f"use one of {', '.join(DATA_PATHS)}", param_hint="--data-path")
    try:
        rate = parse_rate(limit)
    except UsageError as exc:
        raise typer.BadParameter(exc.message, param_hint="--limit") from None
    return TransferOptions(
        limit=rate,
        compress=compress,
        data_path=data_path,
        parallel=max(1, parallel),
        stall_timeout=stall_timeout_from_env(),
        retry=retry_policy_from_env(),
    )


LimitOpt = Annotated[
    str, typer.Option("--limit", help="Max rate, bytes/s with K/M/G suffix (1024-based), e.g. 20M.")
]
CompressOpt = Annotated[str, typer.Option("--compress", help="none, fast or max (zstd).")]
DataPathOpt = Annotated[
    str,
    typer.Option(
        "--data-path",
        help="auto: sealed data connection, falling back to TLS; direct or tls force one.",
    ),
]


@app.command()
def push(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to upload.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Name on the hub (one path).")] = None,
    limit: LimitOpt = "off",
    compress: CompressOpt = "none",
    parallel: Annotated[int, typer.Option(help="Files sent at once.")] = 1,
    data_path: DataPathOpt = "auto",
    transport: TransportOpt = "auto",
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Upload files and folders to the hub.

    Folders go recursively, each file named by its path under the folder's
    name (photos/2024/a.jpg); pull brings them back. Interrupted? Run the same
    command again: it resumes from the last checkpoint.
    """
    opts = transfer_options(limit, compress, data_path, parallel)
    check_transport(transport)
    items = expand_sources(paths, as_name)
    total = sum(p.stat().st_size for p, _ in items)

    async def go() -> list[dict[str, Any]]:
        config = ClientConfig()
        async with HubSession.from_config(config, hub_url, transport=transport) as session:
            if quiet or json_out:
                results = await push_many(session, config, items, opts, QuietReporter())
            else:
                with RichReporter(total, len(items)) as rep:
                    results = await push_many(session, config, items, opts, rep)
        return [r.as_dict() for r in results]

    results = run_async(go)
    if json_out:
        print_json({"pushed": results})
    elif not quiet:
        for r in results:
            extra = f", resumed from {format_bytes(r['resumed_from'])}" if r["resumed_from"] else ""
            err_console.print(
                f"{r['name']}: {format_bytes(r['size'])} in {r['seconds']:.1f} s "
                f"({format_bytes(r['bytes_per_second'])}/s{extra})",
                markup=False,
            )


@app.command()
def pull(
    name: Annotated[
        str, typer.Argument(help="A file on the hub, or a folder (NAME/) as push made it.")
    ],
    dest: Annotated[
        Path | None,
        typer.Argument(
            help="Where to put it. An existing folder receives it; another path names the copy."
        ),
    ] = None,
    limit: LimitOpt = "off",
    compress: CompressOpt = "none",
    parallel: Annotated[int, typer.Option(help="Files fetched at once (folders).")] = 1,
    data_path: DataPathOpt = "auto",
    transport: TransportOpt = "auto",
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download a file or a folder from the hub.

    A folder comes back as cp -r copies one: into an existing folder DEST it
    arrives as DEST/NAME, a DEST that does not exist becomes the copy, and
    without DEST it lands in ./NAME. Interrupted? Run the same command again:
    each file resumes, and files already in place are not fetched again.
    """
    opts = transfer_options(limit, compress, data_path, parallel)
    check_transport(transport)

    async def go() -> tuple[PullPlan, list[dict[str, Any]], float]:
        config = ClientConfig()
        async with HubSession.from_config(config, hub_url, transport=transport) as session:
            notices = QuietReporter() if quiet else RichReporter(0, 0, json_out=json_out)
            plan = await plan_pull(session, config, name, dest, opts, notices)
            started = time.monotonic()
            if quiet or json_out:
                results = await pull_many(session, config, plan, opts, QuietReporter())
            else:
                total = sum(i.size for i in plan.items)
                with RichReporter(total, len(plan.items)) as rep:
                    results = await pull_many(session, config, plan, opts, rep)
        return plan, [r.as_dict() for r in results], time.monotonic() - started

    plan, results, seconds = run_async(go)
    if json_out:
        # One file: its object, as always; a folder: one object per file.
        print_json({"pulled": results if plan.folder else results[0]})
    elif quiet:
        return
    elif plan.folder:
        there = sum(1 for r in results if r["skipped"])
        err_console.print(
            f"{name} -> {plan.root}: {len(results)} files, "
            f"{format_bytes(sum(r['size'] for r in results))} in {seconds:.1f} s"
            + (f" ({there} already there)" if there else ""),
            markup=False,
        )
    else:
        result = results[0]
        err_console.print(
            f"{result['name']} -> {result['path']}: {format_bytes(result['size'])} in "
            f"{result['seconds']:.1f} s",
            markup=False,
        )


@app.command("ls")
def ls_cmd(
    target: Annotated[
        str | None, typer.Argument(help="AGENT:/path to list a folder on an agent.")
    ] = None,
    transport: TransportOpt = "auto",
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List your files on the hub, or a folder on an agent (AGENT:/path)."""
    if target is not None:
        agents.remote_ls(target, hub_url, json_out, transport)
        return

    async def go() -> Any:
        config = ClientConfig()
        async with HubSession.from_config(config, hub_url) as session:
            return await session.request("GET", "/v1/files")

    files = run_async(go)
    if json_out:
        print_json(files)
        return
    from datetime import datetime

    for f in files:
        when = datetime.fromtimestamp(f["created"]).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{f['size']:>14}  {when}  {f['name']}")


@app.command("rm")
def rm_cmd(
    names: Annotated[list[str], typer.Argument(help="Names to delete on the hub.")],
    hub_url: HubOpt = None,
) -> None:
    """Delete files from the hub."""

    async def go() -> None:
        config = ClientConfig()
        async with HubSession.from_config(config, hub_url) as session:
            for n in names:
                await session.request("DELETE", f"/v1/files/{n}")
                err_console.print(f"removed {n}", markup=False)

    run_async(go)


@admin_app.command("bandwidth")
def admin_bandwidth(
    budget: Annotated[
        str | None,
        typer.Argument(help='New budget: 100M, off, or "08:00,10M 18:00,off". Omit to show.'),
    ] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or change the hub's bandwidth budget at run time."""

    async def go() -> Any:
        config = ClientConfig()
        async with HubSession.from_config(config, hub_url) as session:
            if budget is None:
                return await session.request("GET", "/v1/bandwidth")
            return await session.request("PUT", "/v1/admin/bandwidth", {"budget": budget})

    status = run_async(go)
    if json_out:
        print_json(status)
    else:
        typer.echo(
            f"budget: {status['budget']}  (now {format_rate(status['now'])}, "
            f"{status['active_streams']} active streams)"
        )


@admin_app.command("events")
def admin_events(
    kind: Annotated[str | None, typer.Option(help="Only this kind, e.g. login_failure.")] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="How many, newest first.")] = 50,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the hub's event log (logins, failures, streams)."""

    async def go() -> Any:
        config = ClientConfig()
        async with HubSession.from_config(config, hub_url) as session:
            query = f"?limit={limit}" + (f"&kind={kind}" if kind else "")
            return await session.request("GET", "/v1/admin/events" + query)

    events = run_async(go)
    if json_out:
        print_json(events)
        return
    from datetime import datetime

    for e in events:
        when = datetime.fromtimestamp(e["ts"]).strftime("%Y-%m-%d %H:%M:%S")
        detail = " ".join(f"{k}={v}" for k, v in e["detail"].items())
        typer.echo(f"{when}  {e['kind']:<16} {e['actor']:<12} {detail}")


users.register(app)
relay.register(app, admin_app)
agents.register(app)
agentcmd.register(app)
collect.register(app)


def command() -> Any:
    """The ``freight`` command tree, with help as helptext renders it."""
    cli = typer.main.get_command(app)
    plain_help(cli)
    return cli


def run() -> None:
    whole_std_streams()
    tune_allocator()
    configure_client_logging()
    # Everything imported so far lives until exit: keep the collector from
    # walking it again and again (and once more at exit, ~0.3 s).
    gc.freeze()
    try:
        command().main(prog_name="freight")
    except Exception as exc:  # raised outside run_async, e.g. checking arguments
        mapped = from_exception(exc)
        if mapped is None:
            raise
        report(mapped)
        sys.exit(mapped.exit_code)


if __name__ == "__main__":
    run()
