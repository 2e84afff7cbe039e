"""Agent commands that move one file between an agent and the hub's store.

``send_file`` (agent → hub): the agent pushes a file from inside its roots
as a resumable stream into its own files, named ``.sent/ID``. When it
reports success, the hub moves that file into the files of the admin who
queued the command, under the name they chose, where ``freight pull NAME``
finds it.

``receive_file`` (hub → agent): when the command is queued, the hub links
the admin's stored file into the agent's files as ``.inbox/ID``; the agent
pulls it (resumable) to its destination inside its roots; when the agent
reports, either way, the hub drops the link.

Both run unattended: the command waits in the agent's durable queue while
the agent is offline, and a transfer cut half-way resumes from the
stream's checkpoint when the command is delivered again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import PurePosixPath
from typing import Any

from ..errors import NotFound, UsageError
from ..names import check_name
from ..protocol.agents import FILE_COMMANDS, INBOX_PREFIX, SENT_PREFIX
from .core import Core
from .streams import User


def _absolute(args: dict[str, Any], key: str, kind: str, example: str) -> str:
    raw = args.get(key)
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise UsageError(f"{kind} needs --arg {key}={example} (an absolute path on the agent)")
    return raw


async def prepare(st: Core, admin: User, kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Check a file command's arguments; return what is stored with it."""
    if kind == "send_file":
        path = _absolute(args, "path", kind, "/data/file")
        name = check_name(str(args.get("name") or PurePosixPath(path).name))
        if name.startswith((SENT_PREFIX, INBOX_PREFIX)):
            raise UsageError(f"names starting with {SENT_PREFIX} or {INBOX_PREFIX} are the hub's")
        return {"path": path, "name": name}
    name = check_name(str(args.get("name") or ""))
    dest = _absolute(args, "dest", kind, "/data/folder/")
    row = await st.db.get_file(admin.id, name)
    if row is None:
        raise NotFound(
            f"you have no file {name!r} on the hub",
            hint="freight ls shows your files; freight push puts one there",
        )
    overwrite = str(args.get("overwrite", "")).lower() == "true"  # the agent decides too
    return {
        "name": name,
        "dest": dest,
        "size": int(row.size),
        "digest": str(row.digest),
        "overwrite": overwrite,
    }


async def queued(
    st: Core, admin: User, agent_id: int, command_id: int, kind: str, args: dict[str, Any]
) -> None:
    """Before a ``receive_file`` is delivered: give the agent its copy."""
    if kind != "receive_file":
        return
    name = INBOX_PREFIX + str(command_id)
    src = st.layout.file_path(admin.id, args["name"])
    dst = st.layout.file_path(agent_id, name)
    if st.bucket is None:  # in a bucket, both names are of the same content
        await asyncio.to_thread(_link, src, dst)
    stored = await st.db.get_file(admin.id, args["name"])
    mtime = float(stored.mtime) if stored is not None else 0.0
    await st.db.publish(
        agent_id,
        f"inbox-{command_id}",
        name=name,
        size=int(args["size"]),
        digest=str(args["digest"]),
        mtime=mtime,
    )


def _link(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
    """A second name for a stored file (a copy where links are refused)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        pass  # queued before a restart: already there
    except OSError:
        shutil.copyfile(src, dst)


async def finished(
    st: Core, agent: User, command_id: int, ok: bool, result: str
) -> tuple[bool, str]:
    """After a file command's result: move or drop the hub's side of it.
    Returns the (ok, result) to record; repeating it changes nothing."""
    row = await st.db.get_command(command_id)
    if row is None or int(row.agent_id) != agent.id or row.kind not in FILE_COMMANDS:
        return ok, result  # (another agent's command is left alone)
    args = json.loads(row.args)
    if row.kind == "receive_file":
        await _drop(st, agent.id, INBOX_PREFIX + str(command_id))
        return ok, result
    sent = SENT_PREFIX + str(command_id)
    if not ok:
        await _drop(st, agent.id, sent)
        return ok, result
    stored = await st.db.get_file(agent.id, sent)
    if stored is None:
        return ok, result  # moved already: this is a repeated answer
    owner = await st.db.user_by_name(str(row.requested_by))
    if owner is None:
        await _drop(st, agent.id, sent)
        return False, json.dumps({"error": f"{row.requested_by} no longer exists"})
    src = st.layout.file_path(agent.id, sent)
    dst = st.layout.file_path(int(owner.id), args["name"])
    if st.bucket is None:  # in a bucket, the record alone moves
        await asyncio.to_thread(_move, src, dst)
    await st.db.publish(
        int(owner.id),
        str(stored.sid),
        name=args["name"],
        size=int(stored.size),
        digest=str(stored.digest),
        mtime=float(stored.mtime),
    )
    await st.db.delete_file(agent.id, sent)
    await st.events.emit(
        "agent_file_received",
        agent.name,
        id=command_id,
        name=args["name"],
        owner=owner.name,
        size=int(stored.size),
    )
    value = json.loads(result) if result else {}
    value.update({"name": args["name"], "owner": owner.name})
    return ok, json.dumps(value)


def _move(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)


async def _drop(st: Core, user_id: int, name: str) -> None:
    await st.forget_file(user_id, name)
