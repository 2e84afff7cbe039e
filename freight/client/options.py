"""What a push or pull is asked to do (rate, compression, data path,
retries) and what it reports: options, results and the progress protocol,
shared by the transfer loops, the file sink and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import UsageError
from ..protocol import messages as m
from ..protocol.retry import RetryPolicy

DISK_FULL_ERRNOS = (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT


@dataclass
class TransferOptions:
    limit: int = 0
    # --limit NN%: a share of the measured available bandwidth (push).
    percent: float | None = None
    # "background": a delay-based controller yields to other traffic (push).
    priority: str = "normal"
    compress: str = m.LEVEL_NONE
    data_path: str = "auto"
    parallel: int = 1
    stall_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Pulls by an agent: the destination is reached from this root without
    # following links, and an existing file is kept unless keep_existing
    # is off (the admin asked to replace it and the agent allows that).
    root: Path | None = None
    keep_existing: bool = False


def retry_policy_from_env() -> RetryPolicy:
    """Defaults from DESIGN.md; ``FREIGHT_RETRY_INTERVAL``, ``_STEADY`` and
    ``_GIVE_UP`` (seconds) override them, for the CLI and the agent alike."""

    def num(name: str, default: float) -> float:
        try:
            return float(os.environ.get(name, default))
        except ValueError:
            raise UsageError(f"{name} must be a number of seconds") from None

    return RetryPolicy(
        interval=num("FREIGHT_RETRY_INTERVAL", 30.0),
        steady_for=num("FREIGHT_RETRY_STEADY", 600.0),
        give_up_after=num("FREIGHT_RETRY_GIVE_UP", 7200.0),
    )


def stall_timeout_from_env() -> float:
    try:
        return float(os.environ.get("FREIGHT_STALL_TIMEOUT", "60"))
    except ValueError:
        raise UsageError("FREIGHT_STALL_TIMEOUT must be a number of seconds") from None


def options_from_env() -> TransferOptions:
    """Default transfer options with the retry and stall settings of the
    environment (what the agent uses for its uploads and downloads)."""
    return TransferOptions(stall_timeout=stall_timeout_from_env(), retry=retry_policy_from_env())


@dataclass
class TransferResult:
    name: str
    path: str
    size: int
    digest: str
    seconds: float
    resumed_from: int = 0
    restarted: bool = False
    attempts: int = 1
    wire_bytes: int = 0
    skipped: bool = False  # already in place with the same bytes (folder pulls)

    def as_dict(self) -> dict[str, Any]:
        rate = self.size / self.seconds if self.seconds > 0 else 0.0
        return {**self.__dict__, "bytes_per_second": round(rate)}


class Reporter(Protocol):
    def start(self, name: str, size: int) -> None: ...

    def update(self, name: str, done: int) -> None: ...

    def finish(self, name: str, result: TransferResult) -> None: ...

    def notice(self, text: str) -> None: ...


class QuietReporter:
    def start(self, name: str, size: int) -> None:
        pass

    def update(self, name: str, done: int) -> None:
        pass

    def finish(self, name: str, result: TransferResult) -> None:
        pass

    def notice(self, text: str) -> None:
        pass
