"""What every command module shares: option types, the SDK client a command
works with, and the one place where errors become a line and an exit code
(see freight.errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from ..errors import FreightError, from_exception
from .output import err_console

if TYPE_CHECKING:
    from ..client.api import Client

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
HubOpt = Annotated[
    str | None, typer.Option("--hub", help="Hub URL (default: the one you logged in to last).")
]
TransportOpt = Annotated[
    str,
    typer.Option(
        "--transport",
        help="How to reach the hub: auto (WebSocket, falling back to plain HTTP when a proxy "
        "refuses it), ws or http.",
    ),
]


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; map Freight errors (and the OS's, TLS's, aiohttp's and
    msgspec's, see ``from_exception``) and Ctrl-C to a line and an exit code."""
    try:
        try:
            import uvloop

            return uvloop.run(factory())  # type: ignore[no-any-return]
        except ImportError:
            return asyncio.run(factory())  # type: ignore[arg-type]
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume")
        raise typer.Exit(130) from None
    except Exception as exc:
        mapped = from_exception(exc)
        if mapped is None:  # not Freight's to explain: a bug shows its traceback
            raise
        report(mapped)
        raise typer.Exit(mapped.exit_code) from None


def on_hub(hub_url: str | None, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``work`` with an SDK client of the hub (``--hub`` or the last one
    logged in to), errors mapped as run_async maps them."""
    from ..client.api import Client

    async def go() -> T:
        async with Client(hub_url) as hub:
            return await work(hub)

    return run_async(go)


def report(exc: FreightError) -> None:
    """The one place an error becomes the line a person reads."""
    err_console.print(f"freight: error: {exc.user_message()}", markup=False)
