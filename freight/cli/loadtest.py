"""``freight loadtest SCENARIO.csv``: simulated clients from a scenario sheet
(docs/loadtest.md), with faults, a live table and a verdict."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, run_async
from .output import print_json

EXIT_EXPECT_FAILED = 1


def loadtest_cmd(
    scenario: Annotated[
        Path, typer.Argument(help="The scenario sheet (CSV; see docs/loadtest.md).")
    ],
    hub: Annotated[
        str | None,
        typer.Option(
            "--hub",
            help="Hub URL (default: the one you logged in to last). Rows of listen and "
            "agent-idle clients need an admin login: they make accounts and agents.",
            show_default=False,
        ),
    ] = None,
    start_hub: Annotated[
        bool,
        typer.Option(
            "--start-hub",
            help="Start a hub of the tester's own on a free loopback port and a fresh data "
            "folder (needed by hub_kill@T); it is stopped and deleted at the end.",
        ),
    ] = False,
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes",
            min=1,
            max=9,
            help="With --start-hub: a cluster of this many nodes on loopback (needs "
            "--database-url); hub_kill@T then kills the first node.",
        ),
    ] = 1,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="With --start-hub: the database of the hub it starts (PostgreSQL, "
            "postgresql+asyncpg://…; shared by every node of --nodes N).",
            show_default=False,
        ),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            "--bus",
            help="With --start-hub: the NATS bus of its nodes (nats://USER:PASS@HOST:4222).",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        str, typer.Option("--duration", help="How long the run lasts: 90s, 5m, 1h.")
    ] = "60s",
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of every random choice (sizes, phases, fault times); printed, so a "
            "run can be repeated. Default: a new one.",
            show_default=False,
        ),
    ] = None,
    csv_interval: Annotated[
        Path | None,
        typer.Option(
            "--csv-interval", help="Write a CSV line per row and second to FILE.", metavar="FILE"
        ),
    ] = None,
    hdr_log: Annotated[
        Path | None,
        typer.Option(
            "--hdr-log",
            help="Write each row's latency histograms, one a second, to PREFIX-ROW.hlog "
            "(HdrHistogram log format).",
            metavar="PREFIX",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Processes to share the clients among (each on its own core); their "
            "figures merge into one report.",
        ),
    ] = 1,
    worker: Annotated[str | None, typer.Option("--worker", hidden=True)] = None,
    tag: Annotated[str | None, typer.Option("--tag", hidden=True)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run simulated clients from a scenario sheet against a hub, with faults; live figures,
    then a summary with each expect clause's verdict (exit 1 if any failed).

    Each row of the sheet is a population of clients of one role, each a
    real client over real TLS through a fault gate of its own. Latency is
    measured from when each operation was due, so a hub that falls behind
    cannot hide its queue. The summary ends with each expect clause's
    verdict; the exit status is 1 if any failed.
    """
    from rich.console import Console

    from ..loadtest.report import Outputs, as_json, print_summary
    from ..loadtest.runner import Result, Run
    from ..loadtest.scenario import check_workers, parse_duration, parse_scenario

    try:
        text = scenario.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {scenario}: {exc}") from None
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--duration") from None
    if seconds <= 0:
        raise typer.BadParameter("a run lasts more than 0 s", param_hint="--duration")
    chosen = seed if seed is not None else secrets.randbelow(2**31)
    from ..errors import UsageError
    from ..loadtest.localhub import HubSpec

    console = Console(stderr=True)
    spec = HubSpec(nodes, database_url, bus, note=console.print)
    if (nodes > 1 or database_url or bus) and not start_hub:
        raise typer.BadParameter("--nodes, --database-url and --bus go with --start-hub")
    try:
        spec.check()
    except UsageError as exc:
        raise typer.BadParameter(exc.message, param_hint="--nodes") from None
    if worker is not None:  # one of the processes of --workers N
        run_async(lambda: _worker(text, worker, tag, seconds, chosen, hub))
        return
    outputs = Outputs(None if json_out else console, csv_interval, hdr_log)

    def show(result: Result) -> None:
        """The summary, as soon as the run is judged (cleaning up follows)."""
        outputs.close()
        if json_out:
            print_json(as_json(result))
        else:
            print_summary(Console(), result)
        sys.stdout.flush()

    async def go() -> Result:
        sheet = parse_scenario(text)
        check_workers(sheet, workers)
        console.print(
            f"{len(sheet.rows)} rows, {sheet.clients} clients, {seconds:g} s, seed {chosen}"
        )
        if workers > 1:
            from ..loadtest.workers import Fleet

            fleet = Fleet(scenario, sheet, workers=workers, duration=seconds, seed=chosen,
                          hub=hub, start_hub=start_hub, spec=spec, on_sample=outputs.sample,
                          on_result=show)  # fmt: skip
            with outputs.showing():
                return await fleet.run()
        run = Run(sheet, duration=seconds, seed=chosen, hub=hub, start_hub=start_hub, spec=spec,
                  on_sample=outputs.sample, on_result=show)  # fmt: skip
        with outputs.showing():
            return await run.run()

    result = run_async(go)
    if result.interrupted:
        console.print(f"interrupted after {result.seconds:.0f} s: the figures cover that much")
        raise typer.Exit(130)
    if not result.passed:
        raise typer.Exit(EXIT_EXPECT_FAILED)


async def _worker(
    text: str, share: str, tag: str | None, seconds: float, seed: int, hub: str | None
) -> None:
    from ..errors import UsageError
    from ..loadtest.runner import Run
    from ..loadtest.scenario import parse_scenario
    from ..loadtest.workers import serve_as_worker

    w, _, n = share.partition("/")
    if not (w.isdigit() and n.isdigit() and int(w) < int(n)) or not tag:
        raise UsageError("--worker W/N and --tag are for the processes of --workers N")
    run = Run(parse_scenario(text), duration=seconds, seed=seed, hub=hub,
              share=(int(w), int(n)), tag=tag)  # fmt: skip
    await serve_as_worker(run)


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest_cmd)
