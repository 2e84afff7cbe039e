"""Transfer jobs with a negotiated manner: ``freight job send|receive|show|list``
(freight.client.jobs; docs/protocol.md §16)."""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError
from ..units import format_bytes
from . import toplevel
from .common import HubOpt, JsonOpt, QuietOpt, TransportOpt, run_async
from .output import RichReporter, err_console, print_json
from .overwrite import OverwriteOpt, consent

if TYPE_CHECKING:
    from ..client.jobs import JobOutcome
    from ..protocol.jobs import Propose, Record

job_app = typer.Typer(help=toplevel.COMMANDS["job"][1], no_args_is_help=True)

MannerOpt = Annotated[
    str,
    typer.Option(
        "--manner",
        metavar="LIST",
        help="Manners to propose, in order: direct, relay, ref (by reference).",
    ),
]


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        err_console.print(text, markup=False, highlight=False)


def _manners(text: str, what: str) -> list[str]:
    from ..protocol.jobs import parse_manners

    try:
        return parse_manners(text, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _attempt_line(jid: int, rec: Record, json_out: bool, quiet: bool) -> None:
    """An attempt that did not carry the job, as it happens (the one that
    does shows in the final line)."""
    if json_out:
        print_json({"event": "attempt", "id": jid, **rec.__dict__})
    elif rec.verdict in ("refused", "failed"):
        reason = rec.reason.removeprefix(f"{rec.manner}: ")
        _say(f"job {jid}: {rec.manner} {rec.verdict}: {reason}", quiet)


def _final(done: JobOutcome, json_out: bool) -> None:
    if json_out:
        print_json({"event": "done", **done.to_json()})
    else:
        typer.echo(done.line())


@job_app.command("send")
def send(
    dest: Annotated[str, typer.Argument(metavar="DEST", help="The receiving account.")],
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Its application name.")],
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Files and folders.")],
    manner: MannerOpt = "direct,relay,ref",
    require: Annotated[
        str,
        typer.Option(
            "--require",
            metavar="LIST",
            help="What the manner must give: encrypted, secure-pipe, resumable, bidirectional.",
        ),
    ] = "",
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Send files to DEST's APP as a job: propose each manner in turn until
    the receiver accepts one; ends with the byte count and BLAKE3 checked."""
    from ..client.sendrecv import build_manifest
    from ..protocol.jobs import parse_requirements

    manners = _manners(manner, "--manner")
    try:
        requires = parse_requirements(require)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    entries = build_manifest(paths)
    total = sum(e.size for e in entries)
    files = sum(1 for e in entries if e.type == "file")
    reporter = RichReporter(total, files, quiet=quiet, json_out=json_out)

    def started(jid: int, uuid: str) -> None:
        if json_out:
            print_json({"event": "job", "id": jid, "uuid": uuid})
        _say(f"job {jid}: {files} file(s), {format_bytes(total)} to {dest} {app_name}", quiet)

    async def go() -> JobOutcome:
        from .. import messaging
        from ..client.jobs import send_job

        async with messaging.connect(hub_url, transport=transport) as bus:
            with reporter:
                return await send_job(
                    bus,
                    dest,
                    app_name,
                    paths,
                    manners=manners,
                    requires=requires,
                    reporter=reporter,
                    hub=hub_url,
                    entries=entries,
                    on_job=started,
                    on_attempt=lambda jid, rec: _attempt_line(jid, rec, json_out, quiet),
                )

    done = run_async(go)
    if done.ok:
        _final(done, json_out)
    else:
        if json_out:
            print_json({"event": "done", **done.to_json()})
        _fail(done)


def _fail(done: JobOutcome) -> None:
    """The one-line error and exit code of a failed job."""

    async def check() -> None:
        done.check()

    run_async(check)


@job_app.command("receive")
def receive(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name to serve.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to put jobs in.")],
    accept: Annotated[
        str, typer.Option("--accept", metavar="LIST", help="Manners to accept (default: all).")
    ] = "direct,relay,ref",
    once: Annotated[bool, typer.Option("--once", help="Stop after the first job ends.")] = False,
    bind: Annotated[
        str | None,
        typer.Option("--bind", metavar="HOST:PORT", help="Where a direct listener listens."),
    ] = None,
    peer: Annotated[
        str, typer.Option("--from", metavar="ACCOUNT", help="Take jobs from this account only.")
    ] = "*",
    any_url: Annotated[
        bool,
        typer.Option(
            "--accept-urls",
            help="Also take references to other HTTPS servers (fetched from where the sender says).",
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Serve APP: answer job proposals, receive into the output folder and
    check each job's byte count and BLAKE3. With --once, exits non-zero when
    that job failed."""
    accepts = _manners(accept, "--accept")
    reporter = RichReporter(0, 0, quiet=quiet, json_out=json_out)
    decide = consent(overwrite, None if (quiet or json_out) else reporter)

    def proposed(jid: int, p: Propose, account: str) -> None:
        if json_out:
            print_json({"event": "proposal", "id": jid, "from": account, "manner": p.manner})
        _say(
            f"job {jid} from {account}: {p.manner} proposed "
            f"({p.files} file(s), {format_bytes(p.bytes)})",
            quiet,
        )
        reporter.set_totals(p.bytes, p.files)

    async def go() -> JobOutcome | None:
        from .. import messaging
        from ..client.jobs import receive_jobs

        def ready() -> None:
            _say(f"Waiting for jobs for {app_name!r} into {output}", quiet)

        async with messaging.connect(hub_url, transport=transport) as bus:
            with reporter:
                jobs = receive_jobs(
                    bus,
                    app_name,
                    output,
                    accepts=accepts,
                    reporter=reporter,
                    hub=hub_url,
                    consent=decide,
                    bind=bind,
                    peer=peer,
                    any_url=any_url,
                    on_proposal=proposed,
                    on_ready=ready,
                    on_attempt=lambda jid, rec: _attempt_line(jid, rec, json_out, quiet),
                )
                async with contextlib.aclosing(jobs):
                    async for done in jobs:
                        if done.ok:
                            _final(done, json_out)
                        elif json_out:
                            print_json({"event": "done", **done.to_json()})
                        else:
                            _say(done.line())
                        if once:
                            return done
        return None

    done = run_async(go)
    if done is not None and not done.ok:
        _fail(done)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@job_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(metavar="ID", help="The job's number (or global id).")],
    json_out: JsonOpt = False,
) -> None:
    """Show a job and every attempt: manner, verdict, reason, timing."""
    from ..client.config import ClientConfig
    from ..client.jobstore import JobStore

    with JobStore(ClientConfig().root) as store:

        async def get() -> Any:
            return store.get(ref)  # errors mapped as every command's are

        job = run_async(get)
    if json_out:
        print_json(job.to_json())
        return
    typer.echo(f"job {job.id} ({job.uuid}): {job.role} {job.peer} {job.app}, {job.state}")
    typer.echo(f"  {job.files} file(s), {format_bytes(job.bytes)}, started {_when(job.started)}")
    if job.state == "ok":
        typer.echo(f"  by {job.manner} in {job.elapsed:.1f} s, BLAKE3 {job.blake3}")
    elif job.error:
        typer.echo(f"  error: {job.error}")
    typer.echo(f"  {'#':>2} {'MANNER':<7} {'VERDICT':<9} {'STARTED':<19} {'SECONDS':>8}  REASON")
    for a in job.attempts:
        typer.echo(
            f"  {a.n:>2} {a.manner:<7} {a.verdict:<9} {_when(a.started):<19} "
            f"{a.elapsed:>8.2f}  {a.reason}"
        )


@job_app.command("list")
def list_jobs(json_out: JsonOpt = False) -> None:
    """List the jobs of this host, newest first."""
    from ..client.config import ClientConfig
    from ..client.jobstore import JobStore

    with JobStore(ClientConfig().root) as store:
        rows = store.list()
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    if not rows:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':>4} {'ROLE':<8} {'PEER':<12} {'APP':<12} {'STATE':<7} {'MANNER':<7} BYTES")
    for r in rows:
        typer.echo(
            f"{r.id:>4} {r.role:<8} {r.peer:<12} {r.app:<12} {r.state:<7} {r.manner:<7} "
            f"{format_bytes(r.bytes)}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(job_app, name="job")
