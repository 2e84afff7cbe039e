"""Freight: move files and data between machines that cannot reach each other."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "listen"]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``import freight`` stays cheap for the hub and
    # the CLI, and the SDK's modules can import freight's own without a cycle.
    if name in ("connect", "listen"):
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
