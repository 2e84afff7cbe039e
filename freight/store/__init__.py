"""Persistence: the database (SQLAlchemy Core on SQLite or PostgreSQL, with
Alembic migrations) and the hub's file layout."""

from __future__ import annotations

from .db import Database
from .layout import DataLayout

__all__ = ["DataLayout", "Database"]
