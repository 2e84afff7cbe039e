"""The hub's services, built once by :func:`~.compose.build_hub`, and the
typed application keys under which HTTP handlers find them.

Each service gets what it needs in its constructor and nothing more (the
command queue: the core and where agents are attached; the collector: the
core, the relay and the queue; …); :class:`Hub` only holds them, so the
composition root can hand them to the web application and to the shared
port's listener. Nothing in it is set after start-up.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..store import Database, DataLayout
from ..store.bucket import Bucket
from ..tasks import Supervisor
from . import auth
from .bandwidth import BandwidthManager
from .caps import AccountCaps, AttachPace
from .challenges import ChallengeBook
from .collect import Collector
from .commands import CommandQueue
from .core import Core
from .dispatch import Dispatcher
from .guard import PortGuard
from .limiter import LoginGuard
from .messaging import Messaging
from .nodes import NodeService
from .observe import EventLog, Metrics
from .relay import Router
from .requests import LOGINS
from .sessions import LiveSessions
from .streams import StreamService
from .tickets import TicketBook
from .transfers import TransferBoard
from .tunnels import TunnelService


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the hub is to its peers: node name, the certificate it serves
    and that certificate's fingerprint (agents bind their logins to it)."""

    node: str
    cert: Path
    key: Path
    fingerprint: str  # "SHA256:<hex>"
    ssl_context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class Hub:
    core: Core
    identity: Identity
    tasks: Supervisor  # every background task of the hub process
    dispatcher: Dispatcher
    bandwidth: BandwidthManager
    accounts: AccountCaps  # per-account caps
    attach_pace: AttachPace  # control channels this node takes a second
    streams: StreamService
    relay: Router
    sessions: LiveSessions
    commands: CommandQueue
    collector: Collector
    port_guard: PortGuard  # the shared port's caps and deadlines
    tickets: TicketBook
    logins: LoginGuard
    passwords: auth.PasswordWork
    challenges: ChallengeBook  # agent logins
    token_lifetime: float
    messaging: Messaging
    tunnels: TunnelService
    transfers: TransferBoard  # what is in flight, sampled once a second
    nodes: NodeService  # this process as a node of a cluster
    registration: str = "off"  # self-registration: off, open or approval
    app_approval: bool = False  # new application names wait for an admin
    max_pending: int = 1000  # registrations (and application names) waiting at once

    @property
    def db(self) -> Database:
        return self.core.db

    @property
    def layout(self) -> DataLayout:
        return self.core.layout

    @property
    def bucket(self) -> Bucket | None:
        return self.core.bucket

    @property
    def events(self) -> EventLog:
        return self.core.events

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics

    @property
    def node(self) -> str:
        return self.nodes.name

    @property
    def cert_fingerprint(self) -> str:
        return self.identity.fingerprint


STATE: web.AppKey[Hub] = web.AppKey("hub", Hub)
DB: web.AppKey[Database] = web.AppKey("db", Database)
EVENTS: web.AppKey[EventLog] = web.AppKey("events", EventLog)
SESSIONS: web.AppKey[LiveSessions] = web.AppKey("sessions", LiveSessions)
RELAY: web.AppKey[Router] = web.AppKey("relay", Router)
STREAMS: web.AppKey[StreamService] = web.AppKey("streams", StreamService)
COMMANDS: web.AppKey[CommandQueue] = web.AppKey("commands", CommandQueue)
COLLECTOR: web.AppKey[Collector] = web.AppKey("collector", Collector)
BANDWIDTH: web.AppKey[BandwidthManager] = web.AppKey("bandwidth", BandwidthManager)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def install(app: web.Application, hub: Hub) -> None:
    """Put the hub and each of its services under its key in ``app``."""
    app[STATE] = hub
    app[LOGINS] = hub.db
    app[DB] = hub.db
    app[EVENTS] = hub.events
    app[SESSIONS] = hub.sessions
    app[RELAY] = hub.relay
    app[STREAMS] = hub.streams
    app[COMMANDS] = hub.commands
    app[COLLECTOR] = hub.collector
    app[BANDWIDTH] = hub.bandwidth
    app[METRICS] = hub.metrics
