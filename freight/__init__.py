"""Freight: move files and data between machines that cannot reach each other."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
