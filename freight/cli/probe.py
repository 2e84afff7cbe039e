"""``freight probe``: capacity, available bandwidth and round-trip time of
the path to the hub (docs/protocol.md "20. Bandwidth probe")."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..units import format_rate
from .common import JsonOpt, TransportOpt, run_async
from .output import print_json

PROBE_HELP = "Measure the path to the hub: capacity, available bandwidth and round-trip time."


def _mbit(rate: float) -> str:
    return f"{rate * 8 / 1e6:.1f} Mbit/s"


def probe_cmd(
    hub: Annotated[
        str | None,
        typer.Argument(
            help="Hub URL (default: the one you logged in to last).", show_default=False
        ),
    ] = None,
    direction: Annotated[
        str, typer.Option("--direction", help="up (towards the hub), down, or both.")
    ] = "both",
    seconds: Annotated[
        float | None,
        typer.Option(
            "--seconds",
            min=0.2,
            max=10.0,
            help="Length of each train (default: long enough for this path's round trip).",
            show_default=False,
        ),
    ] = None,
    data_path: Annotated[
        str,
        typer.Option(
            "--data-path", help="auto: sealed data connection, falling back to TLS; or tls."
        ),
    ] = "auto",
    transport: TransportOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Measure the path to the hub: capacity, available bandwidth and round-trip time.

    A train of sealed records runs each way for a second or two; the
    receiving end timestamps them. Available bandwidth is what one more
    transfer can expect (what --limit 50% takes half of); capacity is what
    the path carried at its best moment.
    """
    from ..client.api import Client
    from ..client.session import canonical_url

    if direction not in ("up", "down", "both"):
        raise typer.BadParameter("use up, down or both", param_hint="--direction")
    if data_path not in ("auto", "tls"):
        raise typer.BadParameter("use auto or tls", param_hint="--data-path")

    async def go() -> dict[str, Any]:
        async with Client(hub, transport=transport, data_path=data_path) as client:
            result = await client.probe(direction=direction, seconds=seconds)
            hub_url = canonical_url(client.session.url)
        return {"hub": hub_url, **result.as_dict()}

    found = run_async(go)
    if json_out:
        print_json(found)
        return
    lines = [
        f"Path to {found['hub']} ({found['path']} path)",
        f"  rtt        {found['rtt'] * 1000:.1f} ms",
    ]
    for way in ("up", "down"):
        est = found[way]
        if est is None:
            continue
        lines.append(
            f"  {way:<4} available {format_rate(est['available'])} ({_mbit(est['available'])}), "
            f"capacity {format_rate(est['capacity'])} ({_mbit(est['capacity'])})"
        )
    for line in lines:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_cmd)
