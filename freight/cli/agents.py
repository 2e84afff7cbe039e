"""Agents: ``freight agents …`` (admins manage them) and the file manager:
``freight ls AGENT:PATH`` and ``freight cp`` with ``AGENT:PATH`` on either
side. ``freight agent …`` (the daemon's side) lives in ``agentcmd``."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import msgspec
import typer

from ..agent.roots import OutsideRoots
from ..client.config import ClientConfig
from ..client.options import QuietReporter
from ..client.receiving import Destination, receive_entries
from ..client.relay import Connection, RelayClient
from ..client.sendrecv import Summary, build_manifest, send_entries
from ..client.session import (
    HubSession,
    check_transport,
)
from ..errors import UsageError, code_to_error
from ..protocol.files import APP, Answer, Entry, Request, decode_answer, encode_request
from ..units import format_bytes, parse_duration, parse_rate
from .common import HubOpt, JsonOpt, QuietOpt, TransportOpt, run_async
from .output import RichReporter, err_console, print_json
from .overwrite import OverwriteOpt, consent

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
    rows = run_async(lambda: _admin(hub_url, "GET", "/v1/agents"))
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


def split_remote(spec: str) -> tuple[str, str] | None:
    """``AGENT:/path`` → (agent, path); None for a local path."""
    name, sep, path = spec.partition(":")
    if not sep or not name or "/" in name or not path.startswith("/"):
        return None
    return name, path


# Codes an agent's refusal may carry that are defined beside the agent:
# importing them lets code_to_error() turn them back into their errors.
AGENT_ERRORS = (OutsideRoots,)


def _accepted(data: bytes) -> Answer:
    """The agent's ``A`` answer; a refusal raises the error its code names."""
    answer = decode_answer(data)
    if not answer.ok:
        raise code_to_error(answer.code, answer.error)
    return answer


async def _open(
    hub_url: str | None, agent: str, request: Request, transport: str
) -> tuple[RelayClient, Connection, Answer]:
    config = ClientConfig()
    session = HubSession.from_config(config, hub_url, transport=transport)
    relay = RelayClient(session, config, transport=transport)
    await relay.start()
    opened = False
    try:
        conn = await relay.connect(agent, APP, timeout=60)
        await conn.send(encode_request(request))
        answer = _accepted(await conn.recv())
        opened = True
        return relay, conn, answer
    finally:
        if not opened:
            await relay.aclose()


def remote_ls(target: str, hub_url: str | None, json_out: bool, transport: str = "auto") -> None:
    remote = split_remote(target)
    if remote is None:
        raise UsageError(f"{target!r} is not AGENT:/path")
    agent, path = remote
    check_transport(transport)

    async def go() -> list[Entry]:
        relay, conn, answer = await _open(hub_url, agent, Request(op="ls", path=path), transport)
        try:
            entries = list(answer.entries)
            # A large folder comes in pages, each answer saying where the next starts.
            while answer.next is not None:
                answer = _accepted(await conn.recv())
                entries += answer.entries
            await conn.close()
        finally:
            await relay.aclose()
        return entries

    entries = run_async(go)
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
    *sources, dest = paths
    remote_dest = split_remote(dest)
    remote_sources = [split_remote(s) for s in sources]
    started = time.monotonic()
    if remote_dest is not None:
        if any(r is not None for r in remote_sources):
            raise UsageError("copy between two agents is not supported; copy through here")
        local = [Path(s) for s in sources]
        for p in local:
            if p.is_dir() and not recursive:
                raise UsageError(f"{p} is a folder: use -r")
        summary = run_async(
            lambda: _upload(hub_url, remote_dest, local, overwrite, quiet or json_out, transport)
        )
    else:
        if len(sources) != 1 or remote_sources[0] is None:
            raise UsageError("download one AGENT:/path at a time (upload takes several)")
        summary = run_async(
            lambda: _download(
                hub_url,
                remote_sources[0],
                dest,
                recursive,
                overwrite,
                quiet or json_out,
                transport,
            )
        )
    took = time.monotonic() - started
    if json_out:
        print_json(
            {
                "files": summary.files,
                "bytes": summary.bytes,
                "sent": summary.sent,
                "resumed": summary.resumed,
                "seconds": round(took, 3),
            }
        )
    elif not quiet:
        err_console.print(f"{summary.files} file(s), {format_bytes(summary.bytes)} in {took:.1f} s")


async def _upload(
    hub_url: str | None,
    remote: tuple[str, str],
    local: list[Path],
    overwrite: bool,
    quiet: bool,
    transport: str,
) -> Summary:
    agent, path = remote
    entries = build_manifest(local)
    total = sum(e.size for e in entries)
    files = sum(1 for e in entries if e.type == "file")
    request = Request(op="put", path=path, overwrite=overwrite)
    relay, conn, _ = await _open(hub_url, agent, request, transport)
    try:
        with RichReporter(total, files, quiet=quiet) as reporter:
            summary = await send_entries(conn, entries, reporter)
        await conn.close()
        return summary
    finally:
        await relay.aclose()


async def _download(
    hub_url: str | None,
    remote: tuple[str, str],
    dest: str,
    recursive: bool,
    overwrite: bool,
    quiet: bool,
    transport: str,
) -> Summary:
    agent, path = remote
    # The copy is named as asked (cp AGENT:/data/latest . makes ./latest),
    # whatever the agent calls what it sends.
    target = Destination.local(dest, top_name=PurePosixPath(path).name)
    request = Request(op="get", path=path, recursive=recursive)
    relay, conn, _ = await _open(hub_url, agent, request, transport)
    try:
        reporter: Any = QuietReporter()
        if quiet:
            summary = await receive_entries(conn, target, reporter, consent=consent(overwrite))
        else:
            with RichReporter(0, 0) as reporter:
                summary = await receive_entries(
                    conn, target, reporter, consent=consent(overwrite, reporter)
                )
        await conn.close()
        return summary
    finally:
        await relay.aclose()


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app, name="agents")
    app.command()(cp)
