"""Logging in and the file commands: push, pull, ls, rm, and the admin
commands that read or change the hub's budget and event log. Errors become
one line and an exit code in one place, ``common.run_async`` (see
freight.errors for the codes).

The SDK (aiohttp, TLS, the protocol machines) is imported by the command
that runs, not by this module: ``freight push --help`` does not load it."""

from __future__ import annotations

import getpass
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..client.config import DATA_PATHS
from ..errors import UsageError
from ..protocol.messages import LEVELS
from ..units import format_bytes, format_rate, parse_limit
from .common import HubOpt, JsonOpt, QuietOpt, TransportOpt, run_async
from .output import err_console, print_json

if TYPE_CHECKING:
    from ..client.api import Pulled
    from ..client.options import TransferOptions


def login(
    url: Annotated[
        str,
        typer.Argument(
            help="Hub address, e.g. https://hub.example:8443; a cluster's nodes "
            "comma-separated (https://a:8443,https://b:8443)"
        ),
    ],
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

    A cluster's nodes all serve one certificate: give them comma-separated
    and later commands use the node that answers fastest, moving to another
    when one fails or is drained (the nodes the hub lists are added).
    """
    from ..client.api import Client
    from ..client.session import hostport, parse_node_urls

    # Asked on a terminal only: a script gives --fingerprint or --trust-on-first-use.
    ask = sys.stdin.isatty() and not password_stdin

    def confirm(seen: str) -> bool:
        return typer.confirm("Trust this hub and pin its certificate?", err=True)

    def password() -> str:
        if password_stdin:
            return sys.stdin.readline().rstrip("\n")
        return getpass.getpass(f"Password for {user}@{hostport(parse_node_urls(url)[0])}: ")

    async def go() -> dict[str, Any]:
        hub = await Client.login(
            url,
            user,
            password,
            fingerprint=fingerprint,
            trust_on_first_use=trust_on_first_use,
            confirm=confirm if ask else None,
            ca_file=ca_file,
            proxy=proxy,
            notice=lambda text: err_console.print(text, markup=False),
        )
        assert hub.last_login is not None
        for warning in hub.last_login.warnings:
            err_console.print(f"freight: warning: {warning}", markup=False)
        return hub.last_login.as_dict()

    info = run_async(go)
    if json_out:
        print_json(info)
    else:
        err_console.print(f"Logged in to {info['hub']} as {info['user']} ({info['role']})")


def transfer_options(
    limit: str,
    compress: str,
    data_path: str,
    parallel: int = 1,
    *,
    priority: str = "normal",
) -> TransferOptions:
    from ..client.options import TransferOptions, retry_policy_from_env, stall_timeout_from_env

    if compress not in LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LEVELS)}", param_hint="--compress")
    if data_path not in DATA_PATHS:
        raise typer.BadParameter(f"use one of {', '.join(DATA_PATHS)}", param_hint="--data-path")
    if priority not in ("normal", "background"):
        raise typer.BadParameter("use normal or background", param_hint="--priority")
    try:
        wanted = parse_limit(limit)
    except UsageError as exc:
        raise typer.BadParameter(exc.message, param_hint="--limit") from None
    return TransferOptions(
        limit=wanted.rate or 0,
        percent=wanted.percent,
        priority=priority,
        compress=compress,
        data_path=data_path,
        parallel=max(1, parallel),
        stall_timeout=stall_timeout_from_env(),
        retry=retry_policy_from_env(),
    )


LimitOpt = Annotated[
    str, typer.Option("--limit", help="Max rate, bytes/s with K/M/G suffix (1024-based), e.g. 20M.")
]
ShareLimitOpt = Annotated[
    str,
    typer.Option(
        "--limit",
        help="Max rate, bytes/s with K/M/G suffix (1024-based), e.g. 20M; or a share of the "
        "path's measured available bandwidth, e.g. 50%.",
    ),
]
CompressOpt = Annotated[str, typer.Option("--compress", help="none, fast or max (zstd).")]
DataPathOpt = Annotated[
    str,
    typer.Option(
        "--data-path",
        help="auto: sealed data connection, falling back to TLS; direct or tls force one.",
    ),
]


def push(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to upload.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Name on the hub (one path).")] = None,
    limit: ShareLimitOpt = "off",
    priority: Annotated[
        str,
        typer.Option(
            "--priority",
            help="normal, or background: yield to other traffic on the path (delay-based), "
            "take the link back when it is idle.",
        ),
    ] = "normal",
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
    from ..client.api import Client
    from ..client.session import check_transport
    from ..client.transfer import expand_sources
    from .output import RichReporter

    opts = transfer_options(limit, compress, data_path, parallel, priority=priority)
    check_transport(transport)
    items = expand_sources(paths, as_name)
    total = sum(p.stat().st_size for p, _ in items)

    async def go() -> list[dict[str, Any]]:
        async with Client(hub_url, transport=transport, data_path=data_path) as hub:
            if quiet or json_out:
                results = await hub.push(*paths, as_name=as_name, options=opts)
            else:
                with RichReporter(total, len(items)) as rep:
                    results = await hub.push(*paths, as_name=as_name, options=opts, reporter=rep)
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
    limit: ShareLimitOpt = "off",
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
    from ..client.api import Client
    from ..client.options import QuietReporter
    from ..client.session import check_transport
    from .output import RichReporter

    opts = transfer_options(limit, compress, data_path, parallel)
    check_transport(transport)

    async def go() -> tuple[Pulled, list[dict[str, Any]], float]:
        started = time.monotonic()
        async with Client(hub_url, transport=transport, data_path=data_path) as hub:
            notices = QuietReporter() if quiet else RichReporter(0, 0, json_out=json_out)
            if quiet or json_out:
                pulled = await hub.pull(name, dest, options=opts, notices=notices)
            else:
                with RichReporter(0, 0) as rep:
                    pulled = await hub.pull(
                        name,
                        dest,
                        options=opts,
                        reporter=rep,
                        notices=notices,
                        on_plan=rep.set_totals,
                    )
        return pulled, [r.as_dict() for r in pulled.files], time.monotonic() - started

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
        from . import agents

        agents.remote_ls(target, hub_url, json_out, transport)
        return
    from ..client.api import Client

    async def go() -> Any:
        async with Client(hub_url) as hub:
            return await hub.ls()

    files = run_async(go)
    if json_out:
        print_json(files)
        return
    for f in files:
        when = datetime.fromtimestamp(f["created"]).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{f['size']:>14}  {when}  {f['name']}")


def rm_cmd(
    names: Annotated[list[str], typer.Argument(help="Names to delete on the hub.")],
    hub_url: HubOpt = None,
) -> None:
    """Delete files from the hub."""
    from ..client.api import Client

    async def go() -> None:
        async with Client(hub_url) as hub:
            for n in names:
                await hub.rm(n)
                err_console.print(f"removed {n}", markup=False)

    run_async(go)


def admin_bandwidth(
    budget: Annotated[
        str | None,
        typer.Argument(help='New budget: 100M, off, or "08:00,10M 18:00,off". Omit to show.'),
    ] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or change the hub's bandwidth budget at run time."""
    from ..client.api import Client

    async def go() -> Any:
        async with Client(hub_url) as hub:
            return await (hub.bandwidth() if budget is None else hub.set_bandwidth(budget))

    status = run_async(go)
    if json_out:
        print_json(status)
    else:
        typer.echo(
            f"budget: {status['budget']}  (now {format_rate(status['now'])}, "
            f"{status['active_streams']} active streams)"
        )


def admin_compression(
    level: Annotated[
        str | None,
        typer.Argument(
            metavar="[LEVEL]", help="auto, none, fast or max; omit to show the levels in force."
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Set it for this account only (auto: unset).")
    ] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or change the compression the hub asks of pushes.

    The receiving end chooses the level of a stream: the hub asks for an
    account's own level if it has one, else the hub's, else (auto) the
    sender's wish; while the hub is busy it steps down (max to fast) and,
    overloaded, asks for none.
    """
    from ..client.api import Client

    async def go() -> Any:
        async with Client(hub_url) as hub:
            if level is None:
                return await hub.compression()
            return await hub.set_compression(level, user or "")

    status = run_async(go)
    if json_out:
        print_json(status)
        return
    typer.echo(f"hub: {status['hub']}  (load {status['load']:.2f} per processor)")
    for name, lvl in status["users"].items():
        typer.echo(f"{name}: {lvl}")


def register(app: typer.Typer, admin_app: typer.Typer) -> None:
    app.command()(login)
    app.command()(push)
    app.command()(pull)
    app.command("ls")(ls_cmd)
    app.command("rm")(rm_cmd)
    admin_app.command("bandwidth")(admin_bandwidth)
    admin_app.command("compression")(admin_compression)
