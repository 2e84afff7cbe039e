"""``--limit`` and ``--compress`` of the relayed transfers (send, receive,
cp with an agent): the options, checked before anything connects."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UsageError
from ..protocol.messages import LEVELS
from ..units import Limit, parse_limit

RelayLimitOpt = Annotated[
    str,
    typer.Option(
        "--limit",
        metavar="LIMIT",
        help="Max rate of file data, bytes/s with K/M/G suffix (1024-based), e.g. 20M; "
        "or a percentage of the measured bandwidth, e.g. 50%. The other end is told and "
        "the smaller limit wins.",
    ),
]
RelayCompressOpt = Annotated[
    str,
    typer.Option(
        "--compress",
        metavar="LEVEL",
        help="none, fast or max (zstd). The receiving end chooses: on the sending side it is a "
        "wish, on the receiving side the choice (default: the sender's wish, else none). Frames "
        "that do not shrink go as they are.",
    ),
]


def check_shaping(limit: str, compress: str) -> tuple[Limit, str]:
    """The parsed ``--limit`` and the ``--compress`` level ("": no say)."""
    try:
        parsed = parse_limit(limit)
    except UsageError as exc:
        raise typer.BadParameter(exc.message, param_hint="--limit") from None
    if compress and compress not in LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LEVELS)}", param_hint="--compress")
    return parsed, compress
