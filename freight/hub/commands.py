"""The rules of the agents' durable command queue at the hub (the queue
itself is the ``commands`` table; docs/protocol.md 13.2).

* Arguments are at most ``MAX_COMMAND_ARGS_BYTES`` of JSON, checked when the
  command is queued, so that a ``command`` frame always fits the agent's
  header limit.
* A command is handed to its agent at most ``MAX_DELIVERIES`` times. One
  that never gets an answer (it breaks the agent's channel, or the agent
  dies running it) is then failed with the reason, not sent forever.
* Only the agent a command was queued for may answer it, once, while it is
  open: a repeated or replayed result changes nothing.
* An admin may cancel an open command; an agent already running it runs
  it to its end, and its result is then refused.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import Conflict, NotFound, UsageError
from ..protocol import messages as m
from ..protocol.limits import MAX_COMMAND_ARGS_BYTES
from ..store import commands as queue
from . import commandfiles
from .app import STATE, admin_user
from .state import HubState
from .streams import User

MAX_DELIVERIES = 5


def check_args(args: str) -> None:
    size = len(args.encode())
    if size > MAX_COMMAND_ARGS_BYTES:
        raise UsageError(
            f"the command's arguments take {size} bytes as JSON; at most "
            f"{MAX_COMMAND_ARGS_BYTES} fit in a command"
        )


async def deliver(st: HubState, att: Any, command_id: int, kind: str, args: str) -> bool:
    """Hand an open command to the agent's attachment ``att`` and count it;
    one handed over ``MAX_DELIVERIES`` times already is failed instead."""
    count = await queue.mark_delivered(st.db, command_id, att.user.id, MAX_DELIVERIES)
    if count is None:
        return False  # answered or cancelled meanwhile
    if count == 0:
        await fail(
            st,
            command_id,
            att.user,
            f"handed to {att.user.name} {MAX_DELIVERIES} times without an answer "
            "(it may break the agent's connection or stop the agent); not sent again",
        )
        return False
    att.post(m.Command(id=command_id, kind=kind, args=args))
    return True


async def _settled(st: HubState, command_id: int, agent: User, ok: bool, result: str) -> None:
    """After a command ended (answered, failed or cancelled): wake whoever
    waits for it, and let the collector act on an upload."""
    st.relay.command_finished(command_id)
    if st.collector is not None:
        await st.collector.finished(command_id, agent.id, agent.name, ok, result)


async def fail(st: HubState, command_id: int, agent: User, reason: str) -> bool:
    result = json.dumps({"error": reason})
    if not await queue.finish(st.db, command_id, agent.id, "failed", result):
        return False
    await commandfiles.finished(st, agent, command_id, False, result)
    await _settled(st, command_id, agent, False, result)
    await st.events.emit("command_failed", agent.name, id=command_id, reason=reason)
    return True


async def on_ack(st: HubState, att: Any, msg: m.CommandAck) -> None:
    await queue.acknowledge(st.db, msg.id, att.user.id)


async def on_result(st: HubState, att: Any, msg: m.CommandResult) -> None:
    """Record an agent's answer: only to an open command queued for this
    agent, and only once (a concurrent copy waits its turn and is refused)."""
    agent: User = att.user
    if msg.id in st.answering or await queue.open_command(st.db, msg.id, agent.id) is None:
        st.metrics.refused.labels("command_result").inc()
        st.events.log.warning("command_result_refused", agent=agent.name, id=msg.id)
        return
    st.answering.add(msg.id)
    try:
        ok, result = await commandfiles.finished(st, agent, msg.id, msg.ok, msg.result)
        state = "done" if ok else "failed"
        if not await queue.finish(st.db, msg.id, agent.id, state, result):
            return  # cancelled while its files were moved
        await _settled(st, msg.id, agent, msg.ok, msg.result)
        await st.events.emit("command_" + state, agent.name, id=msg.id)
    finally:
        st.answering.discard(msg.id)


async def cancel(request: web.Request) -> web.Response:
    """``POST /v1/agents/commands/{id}/cancel``: an admin gives up on an
    open command; it is not delivered again and its result is refused."""
    admin = await admin_user(request)
    st = request.app[STATE]
    try:
        command_id = int(request.match_info["id"])
    except ValueError:
        raise UsageError("the command id must be a number") from None
    row = await st.db.get_command(command_id)
    if row is None:
        raise NotFound(f"no command {command_id}", hint="freight agents ls shows what is queued")
    agent_row = await st.db.user_by_id(int(row.agent_id))
    result = json.dumps({"error": f"cancelled by {admin.name}"})
    if agent_row is None or not await queue.finish(st.db, command_id, None, "cancelled", result):
        raise Conflict(f"command {command_id} is {row.state} already; only open ones cancel")
    agent = User(int(agent_row.id), str(agent_row.name), str(agent_row.role))
    await commandfiles.finished(st, agent, command_id, False, result)
    await _settled(st, command_id, agent, False, result)
    await st.events.emit(
        "command_cancelled", admin.name, id=command_id, agent=agent.name, command=row.kind
    )
    return web.json_response(command_json(await st.db.get_command(command_id)))


def command_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "state": row.state,
        "result": json.loads(row.result),
        "created": row.created,
        "updated": row.updated,
        "deliveries": row.deliveries,
    }
