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
from ..units import format_bytes
from . import toplevel
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
        typer.Option(
            "--csv", metavar="FILE", help="Write them as CSV to FILE (-: standard output)."
        ),
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


def _progress(r: dict[str, Any]) -> str:
    done = format_bytes(r["done"])
    if r["size"]:
        return f"{done}/{format_bytes(r['size'])} ({100 * r['done'] // max(1, r['size'])}%)"
    return done


def transfers(
    done: Annotated[
        bool, typer.Option("--done", help="The finished ones, newest first, with their verdict.")
    ] = False,
    mine: Annotated[
        bool, typer.Option("--mine", help="Only yours (admins see everyone's).")
    ] = False,
    limit: Annotated[int, typer.Option(metavar="N", min=1, max=1000, help="With --done.")] = 50,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show transfers in flight: pushes, pulls and relayed connections.

    Each with its bytes done, the rate over the last ten seconds and an
    ETA. Yours only, unless you are an admin (then everyone's; --mine:
    yours).
    """
    page = on_hub(hub_url, lambda hub: hub.transfers(done=done, mine=mine, limit=limit))
    rows = page["transfers"]
    if json_out:
        print_json(rows)
        return
    if not rows:
        err_console.print("No finished transfers." if done else "No transfers in flight.")
        return
    for r in rows:
        if done:
            size = format_bytes(r["size"]) if r["size"] is not None else "?"
            typer.echo(
                f"{_when(r['ended'])}  {r['kind']:<5} {r['user']:<12} {r['verdict']:<20} "
                f"{size:>10}  {r['name']}"
            )
            continue
        eta = f"ETA {r['eta']:.0f}s" if r["eta"] is not None else ""
        typer.echo(
            f"{r['kind']:<5} {r['user']:<12} {_progress(r):<28} "
            f"{format_bytes(r['rate'])}/s  {eta:<10} {r['name']}"
        )


conns_app = typer.Typer(help=toplevel.COMMANDS["conns"][1], invoke_without_command=True)


@conns_app.callback()
def conns(ctx: typer.Context, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Your live relayed connections; end one with: freight conns kill ID."""
    if ctx.invoked_subcommand is not None:
        return
    rows = on_hub(hub_url, lambda hub: hub.my_connections())
    if json_out:
        print_json(rows)
        return
    if not rows:
        err_console.print("No live connections.")
        return
    typer.echo(f"{'ID':<26} {'FROM':<12} {'TO':<12} {'APP':<16} {'STATE':<10} BYTES  ELAPSED")
    for r in rows:
        moved = format_bytes(r["bytes_from"] + r["bytes_to"])
        typer.echo(
            f"{r['id']:<26} {r['from']:<12} {r['to']:<12} {r['app']:<16} {r['state']:<10} "
            f"{moved}  {r['elapsed']:.0f}s"
        )


@conns_app.command("kill")
def conns_kill(
    cid: Annotated[str, typer.Argument(metavar="ID", help="The connection's id (freight conns).")],
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """End one of your connections: both ends are told at once."""
    res = on_hub(hub_url, lambda hub: hub.end_connection(cid))
    if json_out:
        print_json(res)
    else:
        err_console.print(f"Ended {cid}.", markup=False)


def status(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Show the hub at a glance (admins): uptime, who is attached, throughput."""
    o = on_hub(hub_url, lambda hub: hub.overview())
    if json_out:
        print_json(o)
        return
    bw = o["bandwidth"]
    lines = [
        f"version      {o['version']}, up {o['uptime'] / 3600:.1f} h",
        f"attached     {o['attached']['users']} users, {o['attached']['agents']} agents",
        f"in flight    {o['transfers']} transfers, {o['connections']} relayed connections",
        f"throughput   {format_bytes(o['throughput'])}/s now",
        f"disk free    {format_bytes(o['disk']['free'])} of {format_bytes(o['disk']['total'])}",
        f"bandwidth    {bw['budget']} (now {bw['now_text']})",
    ]
    typer.echo("\n".join(lines))
    if o["security"]:
        typer.echo("security events:")
        for e in o["security"]:
            detail = " ".join(f"{k}={v}" for k, v in e["detail"].items())
            typer.echo(f"  {_when(e['ts'])}  {e['kind']:<16} {e['actor']:<12} {detail}")


def nodes(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List the cluster's nodes (admins): state, heartbeat, clients, pushes."""
    rows = on_hub(hub_url, lambda hub: hub.nodes())
    if json_out:
        print_json(rows)
        return
    typer.echo(f"{'NODE':<16} {'STATE':<9} {'SEEN':>6} {'CLIENTS':>8} {'PUSHES':>7}  ADDRESS")
    for n in rows:
        typer.echo(
            f"{n['name']:<16} {n['state']:<9} {n['seen']:>5.0f}s {n['clients']:>8} "
            f"{n['transfers']:>7}  {n['url']}"
        )


def drain(
    node: Annotated[str, typer.Argument(help="The node's name (freight admin nodes).")],
    undo: Annotated[bool, typer.Option("--undo", help="Let the node serve again.")] = False,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Drain a node: it takes no new work, its clients move to the other
    nodes (50 a second), and transfers under way finish there."""
    on_hub(hub_url, lambda hub: hub.drain(node, undo=undo))
    if json_out:
        print_json({"node": node, "draining": not undo})
    else:
        err_console.print(f"{node}: {'serving again' if undo else 'draining'}", markup=False)


def remove_node(
    node: Annotated[str, typer.Argument(help="The node's name (freight admin nodes).")],
    hub_url: HubOpt = None,
) -> None:
    """Forget a node that is down (one that is up is refused: drain and stop it first)."""
    on_hub(hub_url, lambda hub: hub.remove_node(node))
    err_console.print(f"{node}: removed", markup=False)


def register(app: typer.Typer, admin_app: typer.Typer) -> None:
    admin_app.command("nodes")(nodes)
    admin_app.command("drain")(drain)
    admin_app.command("remove-node")(remove_node)
    app.command("events")(events)
    admin_app.command("events")(events)
    app.command("transfers")(transfers)
    app.add_typer(conns_app, name="conns")
    app.command("status")(status)
