"""TCP tunnels through the hub: ``freight forward`` (like ``ssh -L``),
``freight expose`` (like ``ssh -R``, for the named accounts only),
``freight admin tunnels`` and ``freight agents forward-allow``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from typing import Annotated, Any

import typer

from ..client.config import ClientConfig
from ..client.pacing import resolve_limit
from ..client.relay import RelayClient
from ..client.session import HubSession
from ..client.tunnels import DEFAULT_MAX_CONNS, ForwardServer, expose, unexpose
from ..client.udpforward import UdpForward, serve_udp
from ..errors import UsageError
from ..names import check_user_name
from ..protocol.datagrams import IDLE_TIMEOUT, MAX_FLOWS, FlowLimits
from ..protocol.tunnel import (
    Destination,
    parse_bind,
    parse_destination,
    parse_name,
    parse_target,
)
from ..units import format_bytes, parse_limit
from .common import HubOpt, JsonOpt, TransportOpt, run_async
from .output import err_console, print_json


def _client(hub_url: str | None, transport: str) -> RelayClient:
    config = ClientConfig()
    return RelayClient(HubSession.from_config(config, hub_url), config, transport=transport)


async def _until_stopped() -> None:
    """Until Ctrl-C or SIGTERM: then the caller's clean-up runs and the
    command exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _say(text: str, json_out: bool) -> None:
    if not json_out:
        err_console.print(text, markup=False, highlight=False)


def forward(
    local: Annotated[
        str,
        typer.Argument(
            metavar="[BIND:]PORT",
            help="Local port to listen on (address 127.0.0.1 unless given; 0: any free port).",
        ),
    ],
    dest: Annotated[
        str,
        typer.Argument(
            metavar="DEST:TARGET",
            help="AGENT:HOST:PORT (a target the agent allows, as seen from it) or "
            "USER:NAME (a name USER exposed to you).",
        ),
    ],
    max_conns: Annotated[
        int,
        typer.Option(
            "--max-conns", help="Connections open through this forward at once; more are refused."
        ),
    ] = DEFAULT_MAX_CONNS,
    spare: Annotated[
        bool,
        typer.Option(
            "--spare/--no-spare",
            help="Keep one connection dialled ahead, so a new one opens in one round trip.",
        ),
    ] = True,
    limit: Annotated[
        str | None,
        typer.Option(
            "--limit",
            metavar="LIMIT",
            help="At most this rate each way for all connections together, e.g. 20M "
            "(bytes/s), or a share of the bandwidth measured to the hub, e.g. 50%.",
        ),
    ] = None,
    udp: Annotated[
        bool,
        typer.Option(
            "--udp",
            help="Forward UDP datagrams: each local source address is one flow "
            "(implied by a udp/HOST:PORT target).",
        ),
    ] = False,
    idle: Annotated[
        float,
        typer.Option("--idle", metavar="SECONDS", help="With --udp: end a flow this idle."),
    ] = IDLE_TIMEOUT,
    max_flows: Annotated[
        int,
        typer.Option(
            "--max-flows",
            help="With --udp: flows at once; datagrams from more sources are dropped.",
        ),
    ] = MAX_FLOWS,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Forward a local port through the hub, like ssh -L: every connection to
    it is carried end-to-end encrypted to DEST, which connects to TARGET.

    For example, freight forward 5433 lab-pc-7:127.0.0.1:5432 makes lab-pc-7's
    database answer on local port 5433, freight forward 8080 alice:web
    reaches what alice exposed as web, and freight forward --udp 5353
    lab-pc-7:127.0.0.1:53 makes its DNS answer on local UDP port 5353.
    """
    try:
        host, port = parse_bind(local)
        where = parse_destination(dest)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if udp or where.udp:
        if limit:
            raise UsageError("--limit paces TCP forwards only: drop --limit, or --udp")
        forward_udp(host, port, where, idle, max_flows, spare, hub_url, transport, json_out)
        return
    wanted = parse_limit(limit) if limit else None

    def event(ev: dict[str, Any]) -> None:
        if json_out:
            print_json(ev)
        elif ev["event"] == "failed":
            err_console.print(f"connection {ev['id']} failed: {ev['error']}", markup=False)
        elif ev["event"] == "refused":
            err_console.print(
                f"refused a connection: {ev['limit']} are open (--max-conns)", markup=False
            )

    async def go() -> None:
        async with _client(hub_url, transport) as client:
            await client.start()
            up = down = 0
            if wanted is not None:
                up = await resolve_limit(wanted, client.session, "up")
                down = await resolve_limit(wanted, client.session, "down")
            server = ForwardServer(
                client,
                where,
                host,
                port,
                max_conns=max_conns,
                spare=spare,
                on_event=event,
                limit_up=up,
                limit_down=down,
            )
            await server.start()
            try:
                bound_host, bound_port = server.address
                if json_out:
                    print_json(
                        {"event": "listening", "host": bound_host, "port": bound_port, "to": dest}
                    )
                _say(f"Forwarding {bound_host}:{bound_port} -> {where}  (Ctrl-C to stop)", json_out)
                await _until_stopped()
            finally:
                await server.aclose()
            _say(f"Stopped: {server.opened} connections forwarded", json_out)

    run_async(go)


def forward_udp(
    host: str,
    port: int,
    where: Destination,
    idle: float,
    max_flows: int,
    spare: bool,
    hub_url: str | None,
    transport: str,
    json_out: bool,
) -> None:
    """``freight forward --udp``: a local UDP port, one flow per source."""
    try:
        limits = FlowLimits(idle_timeout=idle, max_flows=max_flows)
    except ValueError as exc:
        raise UsageError(f"--idle / --max-flows: {exc}") from None

    def event(ev: dict[str, Any]) -> None:
        if json_out:
            print_json(ev)
        elif ev["event"] == "failed":
            err_console.print(f"a flow could not open: {ev['error']}", markup=False)

    async def go() -> None:
        async with _client(hub_url, transport) as client:
            await client.start()
            fwd = UdpForward(client, where, host, port, limits=limits, spare=spare, on_event=event)
            await fwd.start()
            try:
                bound_host, bound_port = fwd.address
                to = str(fwd.dest)
                if json_out:
                    print_json(
                        {
                            "event": "listening",
                            "host": bound_host,
                            "port": bound_port,
                            "to": to,
                            "udp": True,
                        }
                    )
                _say(
                    f"Forwarding udp {bound_host}:{bound_port} -> {to}  (Ctrl-C to stop)", json_out
                )
                await _until_stopped()
            finally:
                await fwd.aclose()
            stats = fwd.stats()
            if json_out:
                print_json({"event": "stopped", **stats})
            _say(
                f"Stopped: {stats['flows_opened']} flows, {stats['datagrams_out']} datagrams "
                f"sent, {stats['datagrams_in']} received",
                json_out,
            )

    run_async(go)


def expose_cmd(
    name: Annotated[str, typer.Argument(help="The name others forward to (USER:NAME).")],
    target: Annotated[
        str,
        typer.Argument(
            metavar="[HOST:]PORT", help="What it reaches, from this machine (host 127.0.0.1)."
        ),
    ],
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="USER",
            help="An account that may use it (repeat; '*': every account). Required.",
        ),
    ] = None,
    udp: Annotated[
        bool,
        typer.Option("--udp", help="Expose a UDP port (they forward with --udp)."),
    ] = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Expose a port of this machine through the hub, like ssh -R, to the named
    accounts only: they reach it with freight forward PORT YOU:NAME.

    For example, freight expose web 127.0.0.1:3000 --allow bob --allow admin;
    freight expose dns 127.0.0.1:53 --udp --allow bob exposes a UDP port.
    """
    try:
        parse_name(name)
        aim = parse_target(target if ":" in target else f"127.0.0.1:{target}")
        accounts = frozenset(a if a == "*" else check_user_name(a) for a in (allow or []))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not accounts:
        raise UsageError(
            "say who may use it: --allow USER (repeat for more), or --allow '*' for everyone"
        )
    if udp or aim.udp:
        aim = dataclasses.replace(aim, udp=True)
        serve_udp()

    async def go() -> None:
        async with _client(hub_url, transport) as client:
            await client.start()
            server = await expose(client, name, aim, accounts)
            try:
                if json_out:
                    print_json({"event": "exposed", "name": name, "target": str(aim)})
                who = ", ".join(sorted(accounts))
                _say(f"Exposing {aim} as {name!r} to {who}  (Ctrl-C to stop)", json_out)
                await _until_stopped()
            finally:
                await unexpose(client, server)
            _say(f"Stopped: {server.served} connections served", json_out)

    run_async(go)


def admin_tunnels(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List live tunnel connections (end them with: freight admin kill ID)."""

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(), hub_url) as session:
            return await session.request("GET", "/v1/admin/tunnels")

    rows = run_async(go)
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("no live tunnel connections")
        return
    typer.echo(
        f"{'ID':<26} {'FROM':<12} {'TO':<12} {'TARGET':<22} {'STATE':<10} "
        f"{'BYTES':>9} {'RATE':>10} ELAPSED"
    )
    for r in rows:
        moved = format_bytes(r["bytes_from"] + r["bytes_to"])
        rate = format_bytes(r["rate"]) + "/s"
        typer.echo(
            f"{r['id']:<26} {r['from']:<12} {r['to']:<12} {r['target']:<22} {r['state']:<10} "
            f"{moved:>9} {rate:>10} {r['elapsed']:.0f}s"
        )


def forward_allow(
    agent: Annotated[str, typer.Argument(help="The agent's name.")],
    target: Annotated[
        str, typer.Argument(metavar="HOST:PORT", help="HOST:PORT, HOST:* or udp/HOST:PORT.")
    ],
    remove: Annotated[bool, typer.Option("--remove", help="Take it off the list.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the agent's answer.")] = 30,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Let AGENT forward to HOST:PORT (kept in its agent.json; an admin's
    command, recorded by the hub and delivered when the agent is online)."""
    try:
        normal = parse_target(target[:-1] + "1" if target.endswith(":*") else target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    del normal

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(), hub_url) as session:
            body = await session.request(
                "POST",
                f"/v1/agents/{agent}/commands",
                {"kind": "forward_allow", "args": {"target": target, "remove": remove}},
            )
            with contextlib.suppress(TimeoutError):
                return await session.request(
                    "GET", f"/v1/agents/commands/{body['id']}?wait={wait:g}"
                )
            return body

    row = run_async(go)
    if json_out:
        print_json(row)
        return
    state = row.get("state", "")
    if state == "done":
        typer.echo(f"{agent} {'no longer forwards' if remove else 'forwards'} to {target}")
    elif state == "failed":
        result = row.get("result")
        why = result.get("error", result) if isinstance(result, dict) else result
        raise UsageError(f"{agent} refused: {why}")
    else:
        typer.echo(f"queued for {agent} (command {row.get('id')}; state {state or 'queued'})")


def register(app: typer.Typer, admin_app: typer.Typer) -> None:
    from .agents import agents_app

    app.command()(forward)
    app.command("expose")(expose_cmd)
    admin_app.command("tunnels")(admin_tunnels)
    agents_app.command("forward-allow")(forward_allow)
