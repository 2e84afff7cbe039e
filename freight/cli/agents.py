"""Agents: ``freight agents …`` (admins manage them) and the file manager:
``freight ls AGENT:PATH`` and ``freight cp`` with ``AGENT:PATH`` on either
side. ``freight agent …`` (the daemon's side) lives in ``agentcmd``."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import typer

from ..agent.roots import OutsideRoots
from ..client.config import ClientConfig
from ..client.options import QuietReporter
from ..client.relay import RelayClient
from ..client.remote import cp_plan, download, list_remote, split_remote, upload
from ..client.sendrecv import Summary, build_manifest, shaping_for
from ..client.session import (
    HubSession,
    check_transport,
)
from ..errors import UsageError
from ..units import format_bytes, parse_duration, parse_rate
from .common import HubOpt, JsonOpt, QuietOpt, TransportOpt, on_hub, run_async
from .output import RichReporter, err_console, print_json
from .overwrite import OverwriteOpt, consent
from .shaping import RelayCompressOpt, RelayLimitOpt, check_shaping

agents_app = typer.Typer(help="Enrolled agents (admin accounts only).", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="The agent's name.")]


async def _admin(hub_url: str | None, method: str, path: str, body: Any = None) -> Any:
    async with HubSession.from_config(ClientConfig(), hub_url) as session:
        return await session.request(method, path, body)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "never"


# --- freight agents (admins) ----------------------------------------------------


@agents_app.command("token")
def agents_token(
    name: Annotated[str, typer.Option("--name", help="Name the agent will have.")],
    ttl: Annotated[str, typer.Option(help="How long the token stays valid.")] = "24h",
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A one-time enrolment token (single use, expires, revocable)."""
    seconds = parse_duration(ttl)
    body = run_async(
        lambda: _admin(hub_url, "POST", "/v1/agents/tokens", {"name": name, "ttl": seconds})
    )
    if json_out:
        print_json(body)
        return
    typer.echo(body["token"])
    err_console.print(
        f"One-time token for agent {name!r}, valid until {_when(body['expires'])}. On the "
        "machine, with the token on standard input (not in its process list):\n"
        f"  freight agent enroll HUB_URL --token-stdin --root /some/folder",
        markup=False,
    )


@agents_app.command("revoke")
def agents_revoke(name: NameArg, hub_url: HubOpt = None) -> None:
    """Revoke the unused enrolment tokens made for NAME."""
    body = run_async(lambda: _admin(hub_url, "DELETE", f"/v1/agents/tokens/{name}"))
    typer.echo(f"revoked {body['revoked']} token(s) for {name}")


@agents_app.command("ls")
def agents_ls(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Agents: online or not, last seen, version, address, busy, commands queued."""
    rows = on_hub(hub_url, lambda hub: hub.agents())  # 1,000 at a time
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("no agents enrolled (freight agents token --name NAME)")
        return
    typer.echo(
        f"{'NAME':<20} {'STATE':<9} {'LAST SEEN':<20} {'VERSION':<22} {'ADDRESS':<16} "
        f"{'BUSY':<5} QUEUED"
    )
    for r in rows:
        state = "disabled" if r["disabled"] else "online" if r["online"] else "offline"
        typer.echo(
            f"{r['name']:<20} {state:<9} {_when(r['last_seen']):<20} {r['version']:<22} "
            f"{r['address']:<16} {r['busy']:<5} {r['queued']}"
        )


@agents_app.command("disable")
def agents_disable(name: NameArg, hub_url: HubOpt = None) -> None:
    """Stop an agent at once (its key is refused until enabled)."""
    run_async(lambda: _admin(hub_url, "POST", f"/v1/agents/{name}/disable"))
    typer.echo(f"disabled {name}")


@agents_app.command("enable")
def agents_enable(name: NameArg, hub_url: HubOpt = None) -> None:
    """Let a disabled agent back in."""
    run_async(lambda: _admin(hub_url, "POST", f"/v1/agents/{name}/enable"))
    typer.echo(f"enabled {name}")


@agents_app.command("rm")
def agents_rm(name: NameArg, hub_url: HubOpt = None) -> None:
    """Remove an agent: its key stops working at once."""
    run_async(lambda: _admin(hub_url, "DELETE", f"/v1/agents/{name}"))
    typer.echo(f"removed {name}")


@agents_app.command("key")
def agents_key(
    name: NameArg,
    key: Annotated[str, typer.Argument(help="Its new login key (freight agent key prints it).")],
    hub_url: HubOpt = None,
) -> None:
    """Replace an agent's login key (a new machine, or a key that leaked):
    its logins end at once and only the new key logs in."""
    body = run_async(lambda: _admin(hub_url, "PUT", f"/v1/agents/{name}/key", {"key": key}))
    typer.echo(f"{name}: new login key {body['key'][:16]}…, {body['logins_ended']} login(s) ended")


@agents_app.command("cap")
def agents_cap(
    name: NameArg,
    rate: Annotated[
        str, typer.Argument(help="Bytes per second to and from it, e.g. 20M; 0: none.")
    ],
    hub_url: HubOpt = None,
) -> None:
    """Cap an agent's bandwidth through the hub."""
    cap = parse_rate(rate)
    run_async(lambda: _admin(hub_url, "PUT", f"/v1/agents/{name}/cap", {"cap": cap}))
    typer.echo(f"{name}: {'no cap' if not cap else format_bytes(cap) + '/s'}")


@agents_app.command("cmd")
def agents_cmd(
    name: NameArg,
    kind: Annotated[
        str,
        typer.Argument(
            help="ping, list_dir (path, offset), send_file (path, name), receive_file (name, dest, "
            "overwrite), "
            "rescan, resend_offers or reload_config."
        ),
    ],
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="KEY=VALUE for the command (repeatable).")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the result (0: just queue it).")
    ] = 30.0,
    hub_url: HubOpt = None,
) -> None:
    """Queue a command for an agent (delivered when it is online) and show
    its result."""
    bad = [a for a in arg or [] if "=" not in a]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r}: give KEY=VALUE", param_hint="--arg")
    args = dict(a.split("=", 1) for a in arg or [])

    async def go() -> Any:
        body = await _admin(
            hub_url, "POST", f"/v1/agents/{name}/commands", {"kind": kind, "args": args}
        )
        if wait <= 0:
            return body
        return await _await_command(hub_url, int(body["id"]), wait)

    _show_command(run_async(go), wait)


@agents_app.command("result")
def agents_result(
    command_id: Annotated[int, typer.Argument(help="The id `agents cmd` printed.")],
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the result (0: its state now).")
    ] = 30.0,
    hub_url: HubOpt = None,
) -> None:
    """Show a queued command's state and, once the agent answered, its result."""
    _show_command(run_async(lambda: _await_command(hub_url, command_id, wait)), wait)


async def _await_command(hub_url: str | None, command_id: int, wait: float) -> Any:
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        row = await _admin(
            hub_url, "GET", f"/v1/agents/commands/{command_id}?wait={min(left, 60):.1f}"
        )
        if row["state"] in ENDED or time.monotonic() >= deadline:
            return row


ENDED = ("done", "failed", "cancelled")


def _show_command(row: Any, wait: float) -> None:
    print_json(row)
    if row.get("state") in ("failed", "cancelled"):
        raise typer.Exit(7)
    if wait > 0 and row.get("state") not in ENDED:
        # A long send_file, or an agent that is offline: the command stays
        # queued at the hub; say how to look again.
        err_console.print(
            f"command {row['id']} is {row['state']}, not answered yet; "
            f"later: freight agents result {row['id']} --wait 600"
        )


@agents_app.command("cancel")
def agents_cancel(
    command_id: Annotated[int, typer.Argument(help="The id `agents cmd` printed.")],
    hub_url: HubOpt = None,
) -> None:
    """Cancel a queued command: it is not delivered again, and its result is
    refused if the agent was already running it."""
    row = run_async(lambda: _admin(hub_url, "POST", f"/v1/agents/commands/{command_id}/cancel"))
    err_console.print(f"cancelled command {row['id']} ({row['kind']})", markup=False)


# --- the file manager ---------------------------------------------------------------


# Codes an agent's refusal may carry that are defined beside the agent:
# importing them lets code_to_error() turn them back into their errors.
AGENT_ERRORS = (OutsideRoots,)


def _relays(hub_url: str | None, transport: str) -> Callable[[], RelayClient]:
    """What makes the relay client a file-manager command connects with."""
    config = ClientConfig()

    def make() -> RelayClient:
        session = HubSession.from_config(config, hub_url, transport=transport)
        return RelayClient(session, config, transport=transport)

    return make


def remote_ls(target: str, hub_url: str | None, json_out: bool, transport: str = "auto") -> None:
    remote = split_remote(target)
    if remote is None:
        raise UsageError(f"{target!r} is not AGENT:/path")
    check_transport(transport)
    entries = run_async(lambda: list_remote(_relays(hub_url, transport), *remote))
    if json_out:
        print_json(msgspec.to_builtins(entries))
        return
    for e in entries:
        when = datetime.fromtimestamp(e.mtime).strftime("%Y-%m-%d %H:%M")
        suffix = "/" if e.type == "dir" else ""
        typer.echo(f"{oct(e.mode)[2:]:>4} {e.size:>14}  {when}  {e.name}{suffix}")


def cp(
    paths: Annotated[list[str], typer.Argument(help="SOURCE... DEST; one side AGENT:/path.")],
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Copy folders.")] = False,
    transport: TransportOpt = "auto",
    overwrite: OverwriteOpt = False,
    limit: RelayLimitOpt = "off",
    compress: RelayCompressOpt = "",
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Copy files to or from an agent, like cp and scp: DEST names the copy,
    or is a folder to copy into (a trailing / demands one). Resumable: run
    it again. Existing files are replaced only with --overwrite (on an
    agent, only if it allows that)."""
    if len(paths) < 2:
        raise UsageError("give a source and a destination")
    check_transport(transport)
    wanted = check_shaping(limit, compress)
    *sources, dest = paths
    direction, (remote, local) = cp_plan(sources, dest, recursive)
    relays = _relays(hub_url, transport)
    quiet = quiet or json_out
    started = time.monotonic()

    async def go() -> Summary:
        if wanted[0].percent is None:
            shaping = await shaping_for(*wanted, None)
        else:  # a share of what the path to the hub can carry, measured
            async with relays() as measuring:
                way: Literal["up", "down"] = "up" if direction == "up" else "down"
                shaping = await shaping_for(*wanted, measuring.session, way)
        with ExitStack() as shown:
            if direction == "up":
                entries = build_manifest(local)
                total = sum(e.size for e in entries)
                files = sum(1 for e in entries if e.type == "file")
                up = RichReporter(total, files, quiet=quiet)
                return await upload(
                    relays,
                    remote,
                    local,
                    up,
                    overwrite=overwrite,
                    manifest=entries,
                    on_open=lambda: shown.enter_context(up),
                    shaping=shaping,
                )
            down = RichReporter(0, 0, quiet=quiet)
            return await download(
                relays,
                remote,
                local,
                QuietReporter() if quiet else down,
                recursive=recursive,
                consent=consent(overwrite, None if quiet else down),
                on_open=lambda: shown.enter_context(down),
                shaping=shaping,
            )

    summary = run_async(go)
    took = time.monotonic() - started
    if json_out:
        print_json(
            {
                "files": summary.files,
                "bytes": summary.bytes,
                "sent": summary.sent,
                "resumed": summary.resumed,
                "wire": summary.wire,
                "compress": summary.level,
                "rate": summary.rate,
                "seconds": round(took, 3),
            }
        )
    elif not quiet:
        err_console.print(f"{summary.files} file(s), {format_bytes(summary.bytes)} in {took:.1f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app, name="agents")
    app.command()(cp)
