"""Collection: ``freight collect …`` (policies) and ``freight collected …``
(what the hub holds, once per unique content)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..units import format_bytes, parse_duration
from .common import HubOpt, JsonOpt, on_hub
from .output import err_console, print_json

collect_app = typer.Typer(help="Collection policies (admin accounts only).", no_args_is_help=True)
collected_app = typer.Typer(help="What collection has gathered.", no_args_is_help=True)


@collect_app.command("add")
def collect_add(
    name: Annotated[str, typer.Argument(help="Policy name.")],
    agents: Annotated[str, typer.Option(help="Which agents (a glob on names).")] = "*",
    include: Annotated[
        list[str] | None, typer.Option(help="Glob of files to take, e.g. '**/*.jpg' (repeatable).")
    ] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob of files to leave.")] = None,
    max_size: Annotated[str, typer.Option(help="Skip files larger than this (0: no limit).")] = "0",
    every: Annotated[str, typer.Option(help="How often agents rescan, e.g. 10m, 1h.")] = "1h",
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add or replace a collection policy."""
    seconds = parse_duration(every)
    row = on_hub(
        hub_url,
        lambda hub: hub.set_collect_policy(
            name,
            agents=agents,
            include=include,
            exclude=exclude,
            max_size=max_size,
            every=seconds,
        ),
    )
    if json_out:
        print_json(row)
    else:
        typer.echo(f"policy {name}: agents {agents}, include {row['include'] or ['everything']}")


@collect_app.command("ls")
def collect_ls(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List collection policies."""
    rows = on_hub(hub_url, lambda hub: hub.collect_policies())
    if json_out:
        print_json(rows)
        return
    for r in rows:
        limit = format_bytes(r["max_size"]) if r["max_size"] else "no limit"
        typer.echo(
            f"{r['name']:<16} agents={r['agents']} include={r['include']} "
            f"exclude={r['exclude']} max={limit} every={r['every']:.0f}s"
        )


@collect_app.command("rm")
def collect_rm(
    name: Annotated[str, typer.Argument(help="Policy name.")], hub_url: HubOpt = None
) -> None:
    """Remove a policy (what was collected stays)."""
    on_hub(hub_url, lambda hub: hub.remove_collect_policy(name))
    typer.echo(f"removed policy {name}")


@collected_app.command("ls")
def collected_ls(
    policy: Annotated[str | None, typer.Option(help="Only this policy.")] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One line per unique content, with the agents and paths holding it."""
    rows = on_hub(hub_url, lambda hub: hub.collected(policy))
    if json_out:
        print_json(rows)
        return
    for r in rows:
        where = ", ".join(f"{h['agent']}:{h['path']}" for h in r["holders"])
        typer.echo(f"{r['digest'][:16]}  {r['size']:>12}  {r['state']:<7} {where}")


@collected_app.command("stats")
def collected_stats(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Unique files and bytes held, bytes received, pending and failed."""
    s = on_hub(hub_url, lambda hub: hub.collected_stats())
    if json_out:
        print_json(s)
        return
    typer.echo(
        f"{s['unique_files']} unique files, {format_bytes(s['unique_bytes'])}; received "
        f"{format_bytes(s['received_bytes'])}; pending {s['pending']}; failed {s['failed']}"
        + ("; paused: hub disk low" if s.get("paused_for_disk") else "")
    )


@collected_app.command("get")
def collected_get(
    what: Annotated[str, typer.Argument(help="A BLAKE3 digest, or AGENT:/path as offered.")],
    out: Annotated[Path, typer.Argument(help="File (or folder) to write to.")],
    hub_url: HubOpt = None,
) -> None:
    """Fetch collected content from the hub (not from the agent)."""

    digest, size, target = on_hub(hub_url, lambda hub: hub.get_collected(what, out))
    err_console.print(f"{target}: {format_bytes(size)} ({digest[:16]}…)")


def register(app: typer.Typer) -> None:
    app.add_typer(collect_app, name="collect")
    app.add_typer(collected_app, name="collected")
