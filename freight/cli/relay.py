"""End-to-end encrypted commands through the hub: ``send`` / ``receive``
(one-time codes), ``connect`` / ``listen`` (byte pipes between accounts),
and ``admin connections`` / ``admin kill``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client.codes import Offered, receive_with_code, send_with_code
from ..client.config import ClientConfig
from ..client.listener import split_code
from ..client.options import QuietReporter, Reporter
from ..client.receiving import Destination
from ..client.relay import TRANSPORTS, Connection, RelayClient
from ..client.sendrecv import Summary, build_manifest, shaping_for
from ..client.session import HubSession
from ..client.words import new_code_words
from ..errors import UsageError
from ..tasks import Supervisor
from ..units import format_bytes, parse_duration
from .common import HubOpt, JsonOpt, QuietOpt, run_async
from .output import RichReporter, err_console, print_json
from .overwrite import OverwriteOpt, consent
from .shaping import RelayCompressOpt, RelayLimitOpt, check_shaping

TransportOpt = Annotated[
    str,
    typer.Option(
        "--transport",
        help="How to attach: auto (WebSocket, falling back to plain HTTP), ws or http.",
    ),
]
DataPathOpt = Annotated[
    str,
    typer.Option(
        "--data-path",
        help="auto: a sealed data connection when the network allows, else inside TLS; "
        "direct: insist on it; tls: always inside TLS.",
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option("--verify", help="Show a verification code; both ends must show the same."),
]


def _client(hub_url: str | None, transport: str, data_path: str) -> RelayClient:
    if transport not in TRANSPORTS:
        raise UsageError(f"--transport must be one of {', '.join(TRANSPORTS)}")
    config = ClientConfig()
    return RelayClient(
        HubSession.from_config(config, hub_url), config, transport=transport, data_path=data_path
    )


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        err_console.print(text, markup=False, highlight=False)


def new_words() -> str:
    return new_code_words()


def _summary_json(summary: Summary, seconds: float) -> dict[str, Any]:
    return {
        "files": summary.files,
        "dirs": summary.dirs,
        "bytes": summary.bytes,
        "sent": summary.sent,
        "resumed": summary.resumed,
        "wire": summary.wire,
        "compress": summary.level,
        "rate": summary.rate,
        "seconds": round(seconds, 3),
    }


def send(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to send.")],
    code: Annotated[
        str | None,
        typer.Option(help="Re-use a code this account was given (to resume a stopped send)."),
    ] = None,
    ttl: Annotated[str, typer.Option(help="How long the code stays valid, e.g. 30m, 2h.")] = "1h",
    limit: RelayLimitOpt = "off",
    compress: RelayCompressOpt = "",
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    data_path: DataPathOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Send files to whoever has the code; prints the code and waits."""
    wanted = check_shaping(limit, compress)
    entries = build_manifest(paths)
    seconds = parse_duration(ttl)
    if code:
        split_code(code)  # a malformed code is refused before connecting
    total = sum(e.size for e in entries)
    files = sum(1 for e in entries if e.type == "file")

    started = time.monotonic()
    reporter = RichReporter(total, files, quiet=quiet, json_out=json_out)

    def connected() -> None:
        nonlocal started
        started = time.monotonic()

    async def go() -> tuple[Summary, float]:
        async with _client(hub_url, transport, data_path) as client:
            shaping = await shaping_for(*wanted, client.session)
            await client.start(identity=False)
            with contextlib.ExitStack() as shown:

                def announce(offer: Offered) -> None:
                    if json_out:
                        print_json(
                            {"event": "code", "code": offer.code, "expires_in": offer.expires_in}
                        )
                    _say(f"Code: {offer.code}", json_out)  # --quiet still needs the code
                    _say(f"On the other machine run: freight receive {offer.code}", quiet)
                    _say(
                        f"Sending {files} file(s), {format_bytes(total)}; "
                        "waiting for the receiver…",
                        quiet,
                    )
                    shown.enter_context(reporter)  # progress from here on

                summary = await send_with_code(
                    client,
                    entries,
                    reporter,
                    code=code,
                    ttl=seconds,
                    on_code=announce,
                    on_connection=connected,
                    shaping=shaping,
                )
                return summary, time.monotonic() - started

    summary, took = run_async(go)
    if json_out:
        print_json({"event": "done", **_summary_json(summary, took)})
    else:
        _say(f"Sent {summary.files} file(s), {format_bytes(summary.bytes)}.", quiet)


def receive(
    code: Annotated[
        str, typer.Argument(help="The code the sender got, e.g. 7-crossbow-gazelle-tulip.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to put what arrives in.")
    ] = Path("."),
    overwrite: OverwriteOpt = False,
    limit: RelayLimitOpt = "off",
    compress: RelayCompressOpt = "",
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    data_path: DataPathOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Receive what a sender offers under CODE (resumes if run again)."""
    wanted = check_shaping(limit, compress)
    dest = Destination.folder(output)

    started = time.monotonic()
    reporter: Reporter = QuietReporter()
    decide = consent(overwrite)
    if not (quiet or json_out):
        reporter = shown = RichReporter(0, 0)
        decide = consent(overwrite, shown)

    def restarted() -> None:
        _say("the sender started again; resuming", quiet)

    async def go() -> tuple[Summary, float]:
        with contextlib.ExitStack() as stack:

            def connected() -> None:
                nonlocal started
                started = time.monotonic()
                if isinstance(reporter, RichReporter) and not reporter.progress.live.is_started:
                    stack.enter_context(reporter)  # progress once a sender is found

            async with _client(hub_url, transport, data_path) as client:
                shaping = await shaping_for(*wanted, client.session, "down")
                await client.start(identity=False)
                summary = await receive_with_code(
                    client,
                    code,
                    dest,
                    reporter,
                    consent=decide,
                    on_connection=connected,
                    on_restart=restarted,
                    shaping=shaping,
                )
                return summary, time.monotonic() - started

    summary, took = run_async(go)
    if json_out:
        print_json({"event": "done", **_summary_json(summary, took)})
    else:
        _say(
            f"Received {summary.files} file(s), {format_bytes(summary.bytes)} into {output}",
            quiet,
        )


async def _stdin_blocks() -> AsyncIterator[bytes]:
    """Standard input in blocks, whatever it is, without a thread that could
    block exit. A pipe, socket or terminal is read once the event loop says
    it is readable, so the read returns at once. What the loop cannot watch
    (a regular file, /dev/null and other devices that are always ready) is
    read directly. The descriptor is never made non-blocking: that flag
    would reach the terminal or socket it shares with the shell or with
    standard output. (uvloop's connect_read_pipe aborted the process on
    /dev/null, the standard input of `freight listen chat > out &`.)"""
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return  # no standard input at all: nothing to send
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    try:
        loop.add_reader(fd, ready.set)
    except PermissionError:  # epoll refuses regular files and /dev/null
        while block := os.read(fd, 1 << 20):
            yield block
            await asyncio.sleep(0)  # let the connection's other direction run
        return
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                block = os.read(fd, 1 << 20)
            except BlockingIOError:  # someone sharing it made it non-blocking
                continue
            if not block:
                return
            yield block
    finally:
        loop.remove_reader(fd)


async def _pipe(conn: Connection) -> None:
    """Standard input to the connection, the connection to standard output
    (like netcat). Each side's end of input only ends its own direction: after
    the other end's, ours keeps going until our input ends or it hangs up."""

    async def upstream() -> None:
        async for block in _stdin_blocks():
            await conn.send(block)
        await conn.shutdown()

    async with Supervisor("pipe") as tasks:  # leaving it cancels what still runs
        up = tasks.spawn(upstream(), name="stdin")
        out = sys.stdout.buffer
        while data := await conn.recv():
            out.write(data)
            out.flush()
        gone = tasks.spawn(conn.wait_closed(), name="closed")
        await asyncio.wait({up, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if up.done() and not up.cancelled() and up.exception() is not None:
            raise up.exception()  # type: ignore[misc]
        await conn.close()


def connect(
    peer: Annotated[str, typer.Argument(help="The account to connect to.")],
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Its application name.")],
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the other end to listen (0: forever).")
    ] = 0,
    verify: VerifyOpt = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    data_path: DataPathOpt = "auto",
) -> None:
    """Open an end-to-end encrypted pipe to PEER's APP: standard input goes
    there, what comes back goes to standard output."""

    async def go() -> None:
        async with _client(hub_url, transport, data_path) as client:
            await client.start()
            conn = await client.connect(peer, app_name, timeout=wait or None)
            if verify:
                _say(f"Verification code: {conn.fingerprint} (the other end must show the same)")
            await _pipe(conn)

    run_async(go)


def listen(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name to accept.")],
    peer: Annotated[
        str, typer.Option("--from", help="Accept only this account (default: anyone).")
    ] = "*",
    keep: Annotated[
        bool, typer.Option(help="Keep accepting connections, one after another.")
    ] = False,
    verify: VerifyOpt = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
    data_path: DataPathOpt = "auto",
) -> None:
    """Accept end-to-end encrypted pipes for APP (see connect)."""

    async def go() -> None:
        async with _client(hub_url, transport, data_path) as client:
            await client.start()
            listener = await client.listen(app_name, peer)
            _say(f"Listening for {app_name!r} from {'anyone' if peer == '*' else peer}")
            while True:
                conn = await listener.accept()
                await conn.wait_established()
                _say(f"Connected: {conn.peer}")
                if verify:
                    _say(
                        f"Verification code: {conn.fingerprint} (the other end must show the same)"
                    )
                await _pipe(conn)
                if not keep:
                    return

    run_async(go)


def admin_connections(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List live relayed connections."""

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(), hub_url) as session:
            return await session.request("GET", "/v1/admin/connections")

    rows = run_async(go)
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("no live connections")
        return
    typer.echo(f"{'ID':<26} {'FROM':<12} {'TO':<12} {'APP':<16} {'STATE':<10} BYTES  ELAPSED")
    for r in rows:
        moved = format_bytes(r["bytes_from"] + r["bytes_to"])
        typer.echo(
            f"{r['id']:<26} {r['from']:<12} {r['to']:<12} {r['app']:<16} {r['state']:<10} "
            f"{moved}  {r['elapsed']:.0f}s"
        )


def admin_kill(
    cid: Annotated[str, typer.Argument(metavar="ID", help="Connection id (admin connections).")],
    hub_url: HubOpt = None,
) -> None:
    """End a live connection; both ends are told an admin ended it."""

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(), hub_url) as session:
            return await session.request("DELETE", f"/v1/admin/connections/{cid}")

    run_async(go)
    typer.echo(f"ended {cid}")


def register(app: typer.Typer, admin_app: typer.Typer) -> None:
    app.command()(send)
    app.command()(receive)
    app.command()(connect)
    app.command()(listen)
    admin_app.command("connections")(admin_connections)
    admin_app.command("kill")(admin_kill)
