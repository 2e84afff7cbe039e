"""The client side of Freight: sessions with the hub, transfers, relayed
connections, and :class:`Client`, the SDK that does everything the
``freight`` command does (``freight.client.api``).

The public names load on first use (PEP 562), so that the agent, or a
module below the client that imports one of its helpers, does not load the
whole SDK with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import (
        Client,
        Connection,
        Listener,
        LoginInfo,
        Offered,
        Pulled,
        Summary,
        TransferResult,
    )

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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'freight.client' has no attribute {name!r}")
    return getattr(importlib.import_module("freight.client.api"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
