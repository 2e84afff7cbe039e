"""Close what was opened when the step that hands it over fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


@contextlib.contextmanager
def closing_on_failure(resource: Closable) -> Iterator[None]:
    """Close ``resource`` if the block raises anything (a cancellation too),
    then let the exception go on; keep it open when the block succeeds.
    Nothing is caught, so nothing can be swallowed."""
    handed_over = False
    try:
        yield
        handed_over = True
    finally:
        if not handed_over:
            with contextlib.suppress(OSError):
                resource.close()
