"""Messaging between applications on hosts: ``freight msg listen|send|request|apps``
and ``freight daemon`` (this user's own host, serving the local socket)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
from typing import Annotated, Any

import typer

from ..client.config import ClientConfig
from ..errors import Busy, Forbidden, FreightError, PeerAbsent, UsageError
from ..tasks import Supervisor
from . import toplevel
from .common import HubOpt, JsonOpt, TransportOpt, run_async
from .output import err_console, print_json

msg_app = typer.Typer(help=toplevel.COMMANDS["msg"][1], no_args_is_help=True)


def parse_u32(text: str, what: str) -> int:
    """A 32-bit number written in decimal or 0x hex; zero matches nothing."""
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number (e.g. 0x00120000)") from None
    if not 0 < value <= 0xFFFFFFFF:
        raise UsageError(f"{what} {text!r} must be a non-zero 32-bit number")
    return value


def _body(text: str) -> bytes:
    body = sys.stdin.buffer.read(1024 * 1024 + 1) if text == "-" else os.fsencode(text)
    if len(body) > 1024 * 1024:
        raise UsageError("a message body is at most 1 MiB")
    return body


def _shown(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode()}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}


def _line(body: bytes) -> str:
    text = body.decode(errors="replace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


TypeOpt = Annotated[
    str,
    typer.Option(
        "--type",
        "-t",
        metavar="TYPE",
        help="The message type, a non-zero 32-bit number (0x00120000).",
    ),
]
BodyArg = Annotated[
    str, typer.Argument(metavar="BODY", help="The message body, or - to read it from stdin.")
]
DestArg = Annotated[
    str,
    typer.Argument(
        metavar="DEST",
        help="An account name, * (every host you may reach) or host:HID (one host).",
    ),
]
AppArg = Annotated[str, typer.Argument(metavar="APP", help="The application's name.")]


@msg_app.command("listen")
def listen(
    app_name: AppArg,
    interest: Annotated[
        str,
        typer.Option(
            metavar="MASK",
            help="Take messages whose type shares a bit with this 32-bit mask.",
        ),
    ] = "0xFFFFFFFF",
    peer: Annotated[
        str,
        typer.Option(
            "--peer", metavar="ACCOUNT", help="Take messages from this account only (* for anyone)."
        ),
    ] = "*",
    reply: Annotated[
        str | None,
        typer.Option(
            "--reply",
            metavar="TEXT",
            help="Answer each request (freight msg request) with this text.",
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", metavar="N", help="Stop after this many messages (0: never).")
    ] = 0,
    json_out: JsonOpt = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
) -> None:
    """Register APP and print its messages as they come: the ticket first,
    then one line (or one JSON object) per message."""
    mask = parse_u32(interest, "--interest")
    from .. import messaging

    async def go() -> None:
        async with messaging.connect(hub_url, transport=transport) as bus:
            reg = await bus.register(app_name, interest=mask, peer=peer)
            if reg.held == "refused":
                await reg.close()
                raise Forbidden(f"application {app_name} was refused by the hub's administrator")
            if json_out:
                print_json(
                    {"ticket": reg.ticket, "app": app_name, "interest": mask, "held": reg.held}
                )
            else:
                typer.echo(f"ticket {reg.ticket}")
            if reg.held == "pending":
                err_console.print(
                    f"Application {app_name} waits for an administrator's approval; its "
                    "messages come once it is approved",
                    markup=False,
                )
            sys.stdout.flush()
            replies = Supervisor("msg-listen-replies")
            pending: set[asyncio.Task[None]] = set()
            seen = 0
            try:
                async for msg in reg:
                    _print_message(msg, json_out)
                    # Only a message that asked for replies (a request) gets
                    # one; each goes in the background, so a requester that
                    # went away does not hold up the next messages.
                    if reply is not None and msg.from_ticket:
                        if len(pending) >= MAX_PENDING_REPLIES:
                            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                        task = replies.spawn(_reply(msg, reply.encode()), name="reply")
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    seen += 1
                    if count and seen >= count:
                        break
                if pending:  # the last replies go out before the host stops
                    await asyncio.wait(pending, timeout=REPLY_TIMEOUT)
            finally:
                await replies.aclose()

    run_async(go)


MAX_PENDING_REPLIES = 64
REPLY_TIMEOUT = 10.0


def _print_message(msg: Any, json_out: bool) -> None:
    if json_out:
        row: dict[str, Any] = {
            "id": msg.id,
            "ticket": msg.ticket,
            "from": msg.account,
            "host": msg.frm,
            "app": msg.app,
            "type": msg.type,
            "from_ticket": msg.from_ticket,
            "reply_to": msg.reply_to,
        }
        print_json(row | _shown(msg.body))
    else:
        typer.echo(f"{msg.account} {msg.type:#010x} {_line(msg.body)}")
    sys.stdout.flush()


async def _reply(msg: Any, body: bytes) -> None:
    try:
        await msg.reply(body, timeout=REPLY_TIMEOUT, wait=True)  # its failure is shown
    except FreightError as exc:
        err_console.print(f"reply to {msg.account} not delivered: {exc.message}", markup=False)


@msg_app.command("send")
def send(
    dest: DestArg,
    app_name: AppArg,
    body: BodyArg,
    type_: TypeOpt,
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", help="Seconds to keep trying while recipients are busy or away."
        ),
    ] = 30.0,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
) -> None:
    """Send BODY to APP at DEST; prints how many recipients took it. Exits 9
    when nobody matched, with the reason (no_host, no_app, no_interest...)."""
    type_value = parse_u32(type_, "--type")
    data = _body(body)
    from .. import messaging

    async def go() -> int:
        async with messaging.connect(hub_url, transport=transport) as bus:
            # A send that is not answered at once is being retried (the
            # recipients are busy or their host is away): say so.
            notice = asyncio.get_running_loop().call_later(
                1.0,
                lambda: typer.echo(
                    f"waiting for {dest} {app_name} (up to {timeout:g} s)…", err=True
                ),
            )
            try:
                return await bus.send(dest, app_name, type=type_value, body=data, timeout=timeout)
            except (PeerAbsent, Busy) as exc:
                raise type(exc)(
                    f"{dest} {app_name}: {exc.message}",
                    hint=f"check that its host is attached and the application registered: "
                    f"freight msg apps {dest}",
                ) from None
            finally:
                notice.cancel()

    count = run_async(go)
    typer.echo(f"delivered to {count} recipient(s)")


@msg_app.command("request")
def request(
    dest: DestArg,
    app_name: AppArg,
    body: BodyArg,
    type_: TypeOpt,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait for the reply.")
    ] = 5.0,
    json_out: JsonOpt = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
) -> None:
    """Send BODY to APP at DEST and print the first reply's body."""
    type_value = parse_u32(type_, "--type")
    data = _body(body)
    from .. import messaging

    async def go() -> Any:
        async with messaging.connect(hub_url, transport=transport) as bus:
            return await bus.request(dest, app_name, type=type_value, body=data, timeout=timeout)

    reply = run_async(go)
    if json_out:
        print_json({"id": reply.id, "from": reply.account, "host": reply.frm} | _shown(reply.body))
    else:
        sys.stdout.buffer.write(reply.body + (b"" if reply.body.endswith(b"\n") else b"\n"))
        sys.stdout.flush()


@msg_app.command("apps")
def apps(
    host: Annotated[
        str | None,
        typer.Argument(
            metavar="HOST",
            help="A host id or account: list what the hub knows of its hosts instead.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    hub_url: HubOpt = None,
) -> None:
    """The registrations on this user's host (freight daemon) with their
    counters; with HOST, the hosts and applications the hub lists for it."""
    if host is not None:
        _hub_apps(host, json_out, hub_url)
        return
    from .. import messaging

    async def go() -> dict[str, Any]:
        async with messaging.connect(hub_url, own_host=False) as bus:
            return await bus.apps()

    info = run_async(go)
    if json_out:
        print_json(info)
        return
    typer.echo(f"host {info['hid']}")
    if not info["apps"]:
        typer.echo("no registrations")
    for row in info["apps"]:
        extra = " ".join(
            f"{k}={v}"
            for k, v in row.items()
            if k not in ("ticket", "app", "interest", "peer") and v != ""
        )
        typer.echo(
            f"{row['ticket']}  {row['app']:<16} {row['interest']:#010x} "
            f"from {row['peer']}  {extra}".rstrip()
        )
    counters = " ".join(f"{k}={v}" for k, v in info["counters"].items())
    if counters:
        typer.echo(counters)


def _hub_apps(host: str, json_out: bool, hub_url: str | None) -> None:
    from ..client.session import HubSession

    async def go() -> Any:
        async with HubSession.from_config(ClientConfig(), hub_url) as session:
            return await session.request("GET", "/v1/msg/hosts")

    rows = run_async(go)
    rows = rows.get("hosts", []) if isinstance(rows, dict) else rows
    chosen = [r for r in rows if host in (r.get("hid"), r.get("account"))]
    if json_out:
        print_json(chosen)
        return
    if not chosen:
        typer.echo(f"the hub lists no host {host!r}")
        return
    for r in chosen:
        typer.echo(f"host {r.get('hid')}  account {r.get('account')}")
        for reg in r.get("regs", []):
            typer.echo(
                f"  {reg.get('app'):<16} {int(reg.get('interest', 0)):#010x} from {reg.get('peer', '*')}"
            )


def daemon(
    print_unit: Annotated[
        bool, typer.Option("--print-unit", help="Print a systemd user unit and exit.")
    ] = False,
    hub_url: HubOpt = None,
    transport: TransportOpt = "auto",
) -> None:
    """Be this user's messaging host: stay attached to the hub and serve
    applications on msg.sock in the config folder (freight msg, the SDK's
    freight.messaging.connect)."""
    config = ClientConfig()
    if print_unit:
        typer.echo(user_unit(config), nl=False)
        return
    run_async(lambda: serve_daemon(config, hub_url, transport))


async def serve_daemon(config: ClientConfig, hub_url: str | None, transport: str) -> None:
    from ..client.msghost import MessageHost
    from ..client.msglocal import MessageSocket
    from ..client.relay import RelayClient
    from ..client.session import HubSession

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    relay = RelayClient(
        HubSession.from_config(config, hub_url), config, transport=transport, data_path="tls"
    )
    async with relay:
        host = MessageHost(relay, config)
        sock = MessageSocket(host, config.root)
        sock.bind()  # a host already serving this folder: stop before announcing
        try:
            await relay.start()
            await host.start()
            await sock.start()
            err_console.print(f"Messaging host {host.hid} serving {sock.path}", markup=False)
            # The relay's reader ends only when the hub refuses us for good.
            reader = relay._task
            if reader is not None:
                reader.add_done_callback(lambda _: stop.set())
            await stop.wait()
            if relay.fatal is not None:
                raise relay.fatal
        finally:
            await sock.aclose()
            await host.aclose()


def user_unit(config: ClientConfig) -> str:
    exe = os.environ.get("FREIGHT_EXE") or "freight"
    return f"""[Unit]
Description=Freight messaging host ({config.root})
After=network-online.target
Wants=network-online.target

[Service]
# A user unit: install it as ~/.config/systemd/user/freight-daemon.service,
# then: systemctl --user enable --now freight-daemon
# (loginctl enable-linger $USER keeps it running while you are logged out).
Environment=FREIGHT_CONFIG_DIR={config.root}
ExecStart={exe} daemon
Restart=always
RestartSec=5

[Install]
WantedBy=default.target
"""


def register(app: typer.Typer) -> None:
    app.add_typer(msg_app, name="msg")
    app.command()(daemon)
