"""Collection: ``freight collect …`` (policies) and ``freight collected …``
(what the hub holds, once per unique content)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import blake3
import typer

from ..client.config import ClientConfig
from ..client.session import HubSession
from ..errors import NotFound, StorageError, UsageError
from ..units import format_bytes, parse_duration
from .agents import split_remote
from .common import HubOpt, JsonOpt, run_async
from .output import err_console, print_json

collect_app = typer.Typer(help="Collection policies (admin accounts only).", no_args_is_help=True)
collected_app = typer.Typer(help="What collection has gathered.", no_args_is_help=True)


async def _call(hub_url: str | None, method: str, path: str, body: Any = None) -> Any:
    async with HubSession.from_config(ClientConfig(), hub_url) as session:
        return await session.request(method, path, body)


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
    body = {
        "agents": agents,
        "include": include or [],
        "exclude": exclude or [],
        "max_size": max_size,
        "every": parse_duration(every),
    }
    row = run_async(lambda: _call(hub_url, "PUT", f"/v1/collect/policies/{name}", body))
    if json_out:
        print_json(row)
    else:
        typer.echo(f"policy {name}: agents {agents}, include {row['include'] or ['everything']}")


@collect_app.command("ls")
def collect_ls(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List collection policies."""
    rows = run_async(lambda: _call(hub_url, "GET", "/v1/collect/policies"))
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
    run_async(lambda: _call(hub_url, "DELETE", f"/v1/collect/policies/{name}"))
    typer.echo(f"removed policy {name}")


@collected_app.command("ls")
def collected_ls(
    policy: Annotated[str | None, typer.Option(help="Only this policy.")] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One line per unique content, with the agents and paths holding it."""
    query = f"?policy={policy}" if policy else ""
    rows = run_async(lambda: _call(hub_url, "GET", "/v1/collected" + query))
    if json_out:
        print_json(rows)
        return
    for r in rows:
        where = ", ".join(f"{h['agent']}:{h['path']}" for h in r["holders"])
        typer.echo(f"{r['digest'][:16]}  {r['size']:>12}  {r['state']:<7} {where}")


@collected_app.command("stats")
def collected_stats(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Unique files and bytes held, bytes received, pending and failed."""
    s = run_async(lambda: _call(hub_url, "GET", "/v1/collected/stats"))
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

    async def go() -> tuple[str, int, Path]:
        async with HubSession.from_config(ClientConfig(), hub_url) as session:
            digest, name = what, what[:16]
            remote = split_remote(what)
            if remote is not None:
                rows = await session.request("GET", "/v1/collected")
                match = [r for r in rows for h in r["holders"] if (h["agent"], h["path"]) == remote]
                if not match:
                    raise NotFound(f"{what} was not offered for collection")
                digest, name = match[0]["digest"], Path(remote[1]).name
            elif len(what) != 64:
                raise UsageError("give a 64-digit BLAKE3 digest or AGENT:/path")
            target = out / name if out.is_dir() else out
            part = target.with_name(target.name + ".freight-part")
            url = session.url.with_path(f"/v1/collected/{digest}")
            size = 0
            hasher = blake3.blake3()
            async with session.http.get(url) as resp:
                if resp.status == 404:
                    raise NotFound(f"{what} is not (yet) stored on the hub")
                resp.raise_for_status()
                try:
                    with open(part, "wb") as f:
                        async for block in resp.content.iter_chunked(1 << 20):
                            f.write(block)
                            hasher.update(block)
                            size += len(block)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as exc:
                    raise StorageError(f"cannot write {part}: {exc.strerror or exc}") from None
            if hasher.hexdigest() != digest:
                part.unlink(missing_ok=True)
                raise StorageError("what arrived does not match its digest; try again")
            os.replace(part, target)
            return digest, size, target

    try:
        digest, size, target = run_async(go)
    except aiohttp.ClientResponseError as exc:
        raise UsageError(f"the hub refused: {exc.status}") from None
    err_console.print(f"{target}: {format_bytes(size)} ({digest[:16]}…)")


def register(app: typer.Typer) -> None:
    app.add_typer(collect_app, name="collect")
    app.add_typer(collected_app, name="collected")
