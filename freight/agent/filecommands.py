"""The agent's side of the ``send_file`` and ``receive_file`` commands
(see :mod:`freight.hub.commandfiles` for the hub's side).

Both go through the stream engine, so a transfer cut by a network fault
resumes from its checkpoint, and one cut by an agent restart resumes when
the hub delivers the command again. Paths are checked against the roots
after resolving links, like every other agent request; a received file is
then written from its root without following links, and an existing file
is replaced only when the command says ``overwrite=true`` and the agent
allows it (``allow_overwrite`` in agent.json).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath
from typing import Any

from ..client.options import QuietReporter, options_from_env
from ..client.safefs import FileExists
from ..client.transfer import pull_one, push_many
from ..errors import FreightError, UsageError
from ..protocol.agents import INBOX_PREFIX, SENT_PREFIX
from .roots import locate, resolve


def destination(raw: str, name: str, roots: list[Path]) -> Path:
    """Where ``receive_file`` writes: ``raw`` itself, or ``raw/NAME`` when
    ``raw`` is a folder (or ends with ``/``); always inside the roots."""
    path = resolve(raw, roots)
    if raw.endswith("/") or path.is_dir():
        path = resolve(str(path / PurePosixPath(name).name), roots)
    if path.is_dir():
        raise UsageError(f"{path} is a folder on the agent; give a file name or another folder")
    return path


async def send_file(agent: Any, command_id: int, args: dict[str, Any]) -> dict[str, Any]:
    path = resolve(str(args.get("path", "")), agent.roots)
    if not path.is_file():
        raise UsageError(f"{args.get('path')}: no such file on the agent")
    try:
        results = await push_many(
            agent.relay.session,
            agent.config,
            [(path, SENT_PREFIX + str(command_id))],
            options_from_env(),
            QuietReporter(),
        )
    except FreightError as exc:
        raise UsageError(f"sending {path} failed: {exc.message}") from None
    r = results[0]
    return {"path": str(path), "size": r.size, "digest": r.digest, "seconds": round(r.seconds, 3)}


async def receive_file(agent: Any, command_id: int, args: dict[str, Any]) -> dict[str, Any]:
    dest = destination(str(args.get("dest", "")), str(args.get("name", "")), agent.roots)
    root, _ = locate(str(dest), agent.roots)
    asked = args.get("overwrite") is True
    opts = dataclasses.replace(
        options_from_env(), root=root, keep_existing=not (asked and agent.cfg.allow_overwrite)
    )
    try:
        r = await pull_one(
            agent.relay.session,
            agent.config,
            INBOX_PREFIX + str(command_id),
            dest,
            opts,
            QuietReporter(),
        )
    except FileExists as exc:
        why = (
            "this agent does not allow replacing files (allow_overwrite in its agent.json)"
            if asked
            else "queue it with --arg overwrite=true to replace it"
        )
        raise FileExists(f"{exc.message}; {why}") from None
    except FreightError as exc:
        raise UsageError(f"receiving into {dest} failed: {exc.message}") from None
    return {"dest": str(dest), "size": r.size, "digest": r.digest, "seconds": round(r.seconds, 3)}
