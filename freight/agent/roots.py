"""Which paths an agent serves: only those inside its configured roots.

A path is checked after resolving every symbolic link and ``..``, so
``/data/../etc``, ``/data/link-to-etc/passwd`` and relative tricks all land
where they really point, and anything outside every root is refused.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import Forbidden, UsageError


class OutsideRoots(Forbidden):
    """The path is not inside any root this agent serves."""

    code = "outside_roots"
    hint = "the agent serves only its configured roots: freight ls AGENT:/"


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def resolve(raw: str, roots: list[Path]) -> Path:
    """The real path for ``raw`` (absolute), or OutsideRoots."""
    if not raw or "\0" in raw:
        raise UsageError("give an absolute path on the agent, e.g. AGENT:/data/file")
    p = Path(raw)
    if not p.is_absolute():
        raise UsageError(f"{raw!r} is not absolute; paths on an agent start with /")
    real = Path(os.path.realpath(p))
    if not inside(real, roots):
        raise OutsideRoots(f"{raw} is outside the folders this agent serves")
    return real


def locate(raw: str, roots: list[Path]) -> tuple[Path, PurePosixPath]:
    """The root that holds ``raw`` once resolved, and the path below it:
    what is written there is reached from the root without following links
    (:meth:`freight.client.safefs.Tree.beneath`), so a link swapped in after
    this check is refused, not followed."""
    real = resolve(raw, roots)
    root = max((r for r in roots if real == r or r in real.parents), key=lambda r: len(r.parts))
    return root, PurePosixPath(real.relative_to(root).as_posix())
