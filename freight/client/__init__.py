"""The client side of Freight: sessions with the hub, transfers, relayed
connections, and :class:`Client`, the SDK that does everything the
``freight`` command does (``freight.client.api``)."""

from __future__ import annotations

from .api import Client, Connection, Listener, LoginInfo, Offered, Pulled, Summary, TransferResult

__all__ = [
    "Client",
    "Connection",
    "Listener",
    "LoginInfo",
    "Offered",
    "Pulled",
    "Summary",
    "TransferResult",
]
