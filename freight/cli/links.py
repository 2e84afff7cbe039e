"""Links to files on the hub: ``freight share``, ``freight fetch`` and
``freight links`` (list, revoke). The SDK is imported by the command that
runs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..units import format_bytes, parse_duration
from .common import HubOpt, JsonOpt, QuietOpt, on_hub, run_async
from .output import err_console, print_json

links_app = typer.Typer(
    help="Links you shared and links shared with you; revoke one with: freight links revoke ID.",
    invoke_without_command=True,
)

MAX_SHARE = 30 * 86400.0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def share(
    name: Annotated[str, typer.Argument(help="A file of yours on the hub (see: freight ls).")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The user who may fetch it (they log in to fetch). Without it, whoever "
            "holds the link can.",
        ),
    ] = None,
    expires: Annotated[
        str,
        typer.Option("--expires", help="How long the link works: 90s, 15m, 1d, … (at most 30d)."),
    ] = "1d",
    uses: Annotated[
        int, typer.Option("--uses", min=1, max=1000, help="Whole downloads it allows.")
    ] = 1,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Share one of your files on the hub through a link; prints the link."""
    seconds = parse_duration(expires)
    if not 0 < seconds <= MAX_SHARE:
        raise typer.BadParameter("must be more than 0 and at most 30d", param_hint="--expires")
    res = on_hub(hub_url, lambda hub: hub.share(name, to, expires=seconds, uses=uses))
    if json_out:
        print_json(res)
        return
    who = f"with {to}" if to else "with whoever holds the link"
    times = "once" if uses == 1 else f"{uses} times"
    err_console.print(
        f"Shared {name} ({format_bytes(res['size'])}) {who}, until {_when(res['expires_at'])}, "
        f"to be fetched {times}.",
        markup=False,
    )
    login = f" (logged in as {to})" if to else ""
    err_console.print(f"They run{login}:  freight fetch '{res['url']}'", markup=False)
    typer.echo(res["url"])


def fetch(
    link: Annotated[str, typer.Argument(help="The link (https://HUB/v1/links/TOKEN#SHA256:…).")],
    out: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="A file to write, or a folder to put it in."),
    ] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fetch a shared link into a file (resumes if run again).

    A link shared with one user needs that user's login on this machine
    (freight login). The file is checked against its BLAKE3 digest before
    it takes its place."""
    from ..client.config import ClientConfig
    from ..client.links import fetch_link
    from .output import RichReporter

    async def go() -> dict[str, Any]:
        config = ClientConfig()
        if quiet or json_out:
            return await fetch_link(link, out, config=config)
        with RichReporter(0, 0) as rep:
            return await fetch_link(link, out, config=config, reporter=rep)

    res = run_async(go)
    if json_out:
        print_json(res)
    elif not quiet:
        extra = f", resumed from {format_bytes(res['resumed_from'])}" if res["resumed_from"] else ""
        err_console.print(
            f"{res['path']}: {format_bytes(res['size'])} in {res['seconds']:.1f} s "
            f"({format_bytes(res['bytes_per_second'])}/s{extra}), BLAKE3 checked",
            markup=False,
        )


@links_app.callback()
def links_ls(
    ctx: typer.Context,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Links you shared and links shared with you."""
    if ctx.invoked_subcommand is not None:
        return
    rows = on_hub(hub_url, lambda hub: hub.links())
    if json_out:
        print_json(rows)
        return
    if not rows:
        err_console.print("No links.")
        return
    for r in rows:
        if r["mine"]:
            who = f"to {r['to']}" if r["to"] else "to anyone with the link"
        else:
            who = f"from {r['owner']}"
        typer.echo(
            f"{r['id']}  {r['state']:<7}  {r['used']}/{r['uses']} used  "
            f"until {_when(r['expires_at'])}  {who}  {r['name']} ({format_bytes(r['size'])})"
        )


@links_app.command("revoke")
def links_revoke(
    token: Annotated[str, typer.Argument(help="The link, its token, or its ID (freight links).")],
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke one of your links: it stops working at once."""
    res = on_hub(hub_url, lambda hub: hub.revoke_link(token))
    if json_out:
        print_json(res)
    else:
        err_console.print(f"Revoked {res['revoked']} link{'s' if res['revoked'] != 1 else ''}.")


def register(app: typer.Typer) -> None:
    app.command("share")(share)
    app.command("fetch")(fetch)
    app.add_typer(links_app, name="links")
