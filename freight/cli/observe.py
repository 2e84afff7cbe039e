"""What the hub is doing, for the person at the terminal: ``freight
events`` (the event log, filtered and sorted, or exported as CSV),
``freight transfers`` (in flight, or ``--done``), ``freight conns`` (your
relayed connections; ``conns kill ID``) and ``freight status`` (the
hub's overview, admins)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..eventcsv import csv_header, csv_lines
from .common import HubOpt, JsonOpt, on_hub
from .output import err_console, print_json

if TYPE_CHECKING:
    from ..client.api import Client

PAGE = 1000  # events asked per request


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def events(
    kind: Annotated[
        list[str] | None,
        typer.Option(metavar="KIND", help="Only this kind, e.g. login_failure (repeatable)."),
    ] = None,
    actor: Annotated[str | None, typer.Option(metavar="NAME", help="Only by this account.")] = None,
    agent: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only about this agent.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(metavar="IP", help="Only from this network address.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="From this time: epoch seconds or ISO 8601 (UTC)."),
    ] = None,
    until: Annotated[str | None, typer.Option(metavar="TIME", help="Before this time.")] = None,
    search: Annotated[
        str | None,
        typer.Option(metavar="TEXT", help="Words that begin words of the kind, actor or detail."),
    ] = None,
    sort: Annotated[
        str, typer.Option(metavar="COL", help="ts, kind or actor; a - in front: descending.")
    ] = "-ts",
    limit: Annotated[int, typer.Option(metavar="N", min=1, help="How many at most.")] = 50,
    csv_file: Annotated[
        str | None,
        typer.Option("--csv", metavar="FILE|-", help="Write them as CSV to FILE (- : stdout)."),
    ] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the hub's event log (admins), filtered and sorted, or as CSV.

    Logins and failures, pushes and pulls, connections, agents and
    commands: newest first unless --sort says; the filters combine.
    """

    async def go(hub: Client) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        cursor = None
        while len(rows) < limit:
            page = await hub.events(
                kinds=kind or (),
                actor=actor,
                agent=agent,
                address=address,
                since=since,
                until=until,
                search=search,
                sort=sort,
                limit=min(PAGE, limit - len(rows)),
                cursor=cursor,
            )
            rows.extend(page["events"])
            cursor = page["next"]
            if cursor is None:
                break
        return rows

    rows = on_hub(hub_url, go)
    if csv_file is not None:
        text = csv_header() + csv_lines(rows)
        if csv_file == "-":
            sys.stdout.write(text)
        else:
            Path(csv_file).write_text(text, encoding="utf-8", newline="")
            err_console.print(f"Wrote {len(rows)} events to {csv_file}.", markup=False)
        return
    if json_out:
        print_json(rows)
        return
    if not rows:
        err_console.print("No events.")
    for e in rows:
        detail = " ".join(f"{k}={v}" for k, v in e["detail"].items())
        typer.echo(f"{_when(e['ts'])}  {e['kind']:<16} {e['actor']:<12} {detail}")


def register(app: typer.Typer, admin_app: typer.Typer) -> None:
    app.command("events")(events)
    admin_app.command("events")(events)
