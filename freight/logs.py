"""Logging: JSON lines on stderr.

The hub and the agent log through structlog (``configure_logging``). The
client programs keep their start-up light: they log through the standard
``logging`` module, silent unless ``FREIGHT_LOG=debug|info|warning`` is set
(``configure_client_logging``), in the same JSON-lines shape.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


def level_from_env(default: int = logging.WARNING) -> int:
    """``FREIGHT_LOG=debug|info|warning|error`` overrides ``default``."""
    name = os.environ.get("FREIGHT_LOG", "").strip().upper()
    level = logging.getLevelName(name) if name else default
    return level if isinstance(level, int) else default


def configure_logging(level: int = logging.INFO) -> None:
    """structlog for the long-running processes (hub, agent)."""
    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_from_env(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class JsonLines(logging.Formatter):
    """``{"timestamp", "level", "logger", "event", ...extra}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str)


def configure_client_logging() -> None:
    """Client commands: log only when ``FREIGHT_LOG`` asks for it."""
    if not os.environ.get("FREIGHT_LOG"):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("freight")
    root.addHandler(handler)
    root.setLevel(level_from_env())
    root.propagate = False


def fields(**kw: Any) -> dict[str, Any]:
    """``log.debug("event", extra=fields(cid=…))``: structured fields."""
    return {"fields": kw}
