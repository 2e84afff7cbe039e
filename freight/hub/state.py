"""Everything one hub process holds, wired together once at start-up."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from ..store import Database, DataLayout
from ..units import format_rate
from . import auth
from .bandwidth import BandwidthManager
from .caps import AccountCaps
from .challenges import ChallengeBook
from .guard import PortGuard
from .limiter import LoginGuard
from .observe import EventLog, Metrics
from .relay import Router
from .sessions import LiveSessions
from .streams import StreamService, minute_of_day
from .tickets import TicketBook


@dataclass
class HubState:
    db: Database
    layout: DataLayout
    events: EventLog
    metrics: Metrics
    bandwidth: BandwidthManager
    streams: StreamService
    relay: Router
    sessions: LiveSessions
    tickets: TicketBook = field(default_factory=TicketBook)
    logins: LoginGuard = field(default_factory=LoginGuard)
    passwords: auth.PasswordWork = field(default_factory=auth.PasswordWork)
    token_lifetime: float = auth.TOKEN_LIFETIME
    node: str = field(default_factory=socket.gethostname)
    collector: Any = None  # collect.Collector, set at start-up
    cert_fingerprint: str = ""  # "SHA256:<hex>" of the certificate we serve
    challenges: ChallengeBook = field(default_factory=ChallengeBook)  # agent logins
    accounts: AccountCaps = field(default_factory=AccountCaps)  # per-account caps
    port_guard: PortGuard | None = None  # the shared port's caps and deadlines
    answering: set[int] = field(default_factory=set)  # command results being recorded

    def bandwidth_status(self) -> dict[str, Any]:
        total = self.bandwidth.budget.total_at(minute_of_day())
        return {
            "budget": self.bandwidth.budget.spec,
            "now": total,
            "now_text": format_rate(total),
            "active_streams": len(self.bandwidth.active),
        }
