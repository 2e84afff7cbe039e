"""Freight: move files and data between machines that cannot reach each other.

The SDK for programs is :class:`freight.Client` (everything the ``freight``
command does) and the shortcuts :func:`freight.connect` / :func:`freight.listen`::

    async with freight.Client("https://hub:8443") as hub:
        await hub.push("report.pdf")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "__version__", "connect", "expose", "forward", "forward_udp", "listen"]

if TYPE_CHECKING:
    from .client.api import Client
    from .sdk import connect, expose, forward, forward_udp, listen

# Where each public name lives. They are loaded on first use (PEP 562):
# ``import freight.protocol`` must stay free of asyncio and sockets, and the
# hub and the agent never load the SDK they do not use. (The root package is
# a façade over the SDK modules, not a layer: nothing below imports them
# through it.)
_LAZY = {
    "Client": "freight.client.api",
    "connect": "freight.sdk",
    "listen": "freight.sdk",
    "forward": "freight.sdk",
    "expose": "freight.sdk",
    "forward_udp": "freight.sdk",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'freight' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
