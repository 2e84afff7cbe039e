"""``freight hub``: run a hub on one HTTPS port, with its limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, UsageError
from ..units import parse_rate, parse_size
from .common import run_async

# The shared port's deadlines (docs/protocol.md 1.4), in seconds; hidden:
# the defaults suit every deployment, tests shorten them.
SecondsOpt = Annotated[float, typer.Option(hidden=True, min=0.1)]


def hub(
    data: Annotated[Path, typer.Option(help="Data folder (database, certificate, files).")] = Path(
        ".freight-data"
    ),
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:8443",
    bandwidth: Annotated[
        str | None,
        typer.Option(help='Total budget, e.g. 100M, or a timetable "08:00,10M 18:00,off".'),
    ] = None,
    compress: Annotated[
        str | None,
        typer.Option(
            "--compress",
            metavar="LEVEL",
            help="Compression the hub asks of pushes (the receiver chooses): auto follows "
            "the sender's wish; levels step down while the hub is busy. Default: what an "
            "admin set last (freight admin compression), else auto.",
        ),
    ] = None,
    compress_busy: Annotated[
        float,
        typer.Option(
            help="Load average per processor from which --compress steps down (0: never).",
            hidden=True,
            min=0,
        ),
    ] = 2.0,
    purge_after: Annotated[
        float, typer.Option(help="Hours after which abandoned partial uploads are deleted.")
    ] = 72.0,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default: SQLite in the data folder)."),
    ] = None,
    node: Annotated[
        str,
        typer.Option(
            help="This node's name in a cluster of hubs sharing --database-url and the data "
            "folder (default: the machine's name). See docs/cluster.md.",
        ),
    ] = "",
    advertise: Annotated[
        str,
        typer.Option(
            help="The https://HOST:PORT clients reach this node at (default: the listening "
            "address, or the machine's name when it listens on all)."
        ),
    ] = "",
    bus: Annotated[
        str,
        typer.Option(
            help="NATS server the cluster's nodes tell each other through "
            "(nats://USER:PASS@HOST:4222); without it they learn by polling the database.",
        ),
    ] = "",
    node_beat: Annotated[
        float,
        typer.Option(help="Seconds between a cluster node's heartbeats.", hidden=True, min=0.1),
    ] = 3.0,
    blobs: Annotated[
        str,
        typer.Option(
            help="Keep stored files and collected content in an S3-compatible bucket "
            "(s3://BUCKET or s3://BUCKET/PREFIX; credentials from the AWS_* variables) "
            "instead of the data folder: a cluster's nodes then need no shared folder.",
        ),
    ] = "",
    s3_endpoint: Annotated[
        str,
        typer.Option(help="URL of an S3-compatible server for --blobs (default: AWS)."),
    ] = "",
    blobs_grace: Annotated[
        float,
        typer.Option(
            help="Seconds before the bucket's content no file names is removed.",
            hidden=True,
            min=0.1,
        ),
    ] = 3600.0,
    cert: Annotated[
        Path | None,
        typer.Option(
            help="PEM certificate (chain) to serve instead of the self-signed one; needs --key."
        ),
    ] = None,
    key: Annotated[Path | None, typer.Option(help="PEM private key of --cert.")] = None,
    checkpoint_interval: Annotated[
        str, typer.Option(help="Bytes between durable checkpoints.", hidden=True)
    ] = "8M",
    relay_window: Annotated[
        str,
        typer.Option(help="Bytes the hub holds per relayed connection and direction."),
    ] = "4M",
    relay_queue: Annotated[
        str,
        typer.Option(
            help="Bytes the hub holds for one attached client before it pauses that client's "
            "senders (4 times this: the client is dropped as too slow)."
        ),
    ] = "32M",
    max_relay_connections: Annotated[
        int, typer.Option(help="Relayed connections one account may have open.", min=1)
    ] = 256,
    max_codes: Annotated[
        int, typer.Option(help="Valid one-time codes (freight send) one account may hold.", min=1)
    ] = 64,
    collect_reserve: Annotated[
        str,
        typer.Option(help="Free disk space below which collection pauses (uploads wait)."),
    ] = "1G",
    max_connections: Annotated[
        int, typer.Option(help="Sockets the hub holds at once; more are closed at once.")
    ] = 10_000,
    max_connections_per_address: Annotated[
        int,
        typer.Option(help="Sockets from one client address (raise it for agents behind one NAT)."),
    ] = 1024,
    account_connections: Annotated[
        int,
        typer.Option(help="Control channels and data connections one account may have open."),
    ] = 128,
    account_streams: Annotated[
        int, typer.Option(help="Pushes and pulls one account may run at once.")
    ] = 128,
    attach_rate: Annotated[
        float,
        typer.Option(
            help="Control channels (clients, agents) the hub takes a second; more wait their "
            "turn (0: no bound).",
            min=0,
        ),
    ] = 200,
    first_byte_timeout: SecondsOpt = 10.0,
    tls_handshake_timeout: SecondsOpt = 15.0,
    header_timeout: SecondsOpt = 15.0,
    body_timeout: SecondsOpt = 60.0,
    keepalive_timeout: SecondsOpt = 30.0,
    data_idle_timeout: SecondsOpt = 300.0,
    token_lifetime: Annotated[float, typer.Option(help="Seconds a login lasts.", hidden=True)] = 30
    * 24
    * 3600.0,
    msg_warmup: Annotated[
        float,
        typer.Option(
            help="Seconds after start when empty message routes answer retry.", hidden=True, min=0
        ),
    ] = 10.0,
    login_lockout: Annotated[
        float,
        typer.Option(help="Seconds of the first lockout after failed logins.", hidden=True),
    ] = 30.0,
    registration: Annotated[
        str,
        typer.Option(
            help="Self-registration (freight register): off; open (accounts active at once); "
            "approval (accounts wait until an admin approves them).",
        ),
    ] = "off",
    app_approval: Annotated[
        bool,
        typer.Option(
            "--app-approval",
            help="The first listen on a new application name waits for an admin's approval.",
        ),
    ] = False,
    max_pending: Annotated[
        int,
        typer.Option(
            help="Registrations (and application names) that may wait for approval at once.",
            hidden=True,
            min=1,
        ),
    ] = 1000,
) -> None:
    """Run a hub on one HTTPS port."""
    from ..hub.bandwidth import Budget
    from ..hub.guard import PortLimits
    from ..hub.server import HubConfig, serve

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter("use HOST:PORT, e.g. 0.0.0.0:8443", param_hint="--listen")
    if bandwidth is not None:
        try:
            Budget.parse(bandwidth)
        except UsageError as exc:
            raise typer.BadParameter(exc.message, param_hint="--bandwidth") from None
    if compress is not None:
        from ..hub.compression import check_level

        try:
            check_level(compress)
        except UsageError as exc:
            raise typer.BadParameter(exc.message, param_hint="--compress") from None
    if registration not in ("off", "open", "approval"):
        raise typer.BadParameter("use off, open or approval", param_hint="--registration")
    if (cert is None) != (key is None):
        raise typer.BadParameter("give --cert and --key together", param_hint="--cert/--key")
    if cert is not None and key is not None:
        from ..hub.tls import server_context

        try:  # before the data folder is touched
            server_context(cert, key)
        except ConfigError as exc:
            raise typer.BadParameter(exc.user_message(), param_hint="--cert/--key") from None
    if blobs:
        from ..hub.blobfiles import check_blobs

        try:
            check_blobs(blobs, s3_endpoint)
        except ConfigError as exc:
            raise typer.BadParameter(exc.message, param_hint="--blobs") from None
    elif s3_endpoint:
        raise typer.BadParameter("--s3-endpoint goes with --blobs", param_hint="--s3-endpoint")
    cfg = HubConfig(
        data=data,
        blobs=blobs,
        s3_endpoint=s3_endpoint,
        blobs_grace=blobs_grace,
        host=host.strip("[]"),
        port=int(port),
        bandwidth=bandwidth,
        compress=compress,
        compress_busy=compress_busy,
        purge_after=purge_after * 3600.0,
        database_url=database_url,
        cert=cert,
        key=key,
        checkpoint_interval=parse_rate(checkpoint_interval),
        relay_window=parse_rate(relay_window),
        relay_queue=parse_size(relay_queue),
        max_relay_connections=max_relay_connections,
        max_codes=max_codes,
        msg_warmup=msg_warmup,
        collect_reserve=parse_size(collect_reserve),
        limits=PortLimits(
            max_connections=max_connections,
            per_address=max_connections_per_address,
            first_byte=first_byte_timeout,
            tls_handshake=tls_handshake_timeout,
            headers=header_timeout,
            body=body_timeout,
            keepalive=keepalive_timeout,
            data_idle=data_idle_timeout,
        ),
        account_connections=account_connections,
        account_streams=account_streams,
        attach_rate=attach_rate,
        token_lifetime=token_lifetime,
        login_lockout=login_lockout,
        registration=registration,
        app_approval=app_approval,
        max_pending=max_pending,
        node=check_node_name(node),
        advertise=advertise,
        node_beat=node_beat,
        bus=bus,
    )
    try:
        run_async(lambda: serve(cfg))
    except typer.Exit as exc:
        if exc.exit_code != 130:
            raise


def check_node_name(name: str) -> str:
    if name and (len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name)):
        raise typer.BadParameter("1 to 64 letters, digits, '-', '_' or '.'", param_hint="--node")
    return name


def register(app: typer.Typer) -> None:
    app.command()(hub)
