"""The agents' durable command queue at the hub (the queue itself is the
``commands`` table; docs/protocol.md 13.2): the one place where a command
is queued for an agent, handed over, answered, failed or cancelled.

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

Whoever cares that a command ended (the collector, for its uploads)
subscribes with :meth:`CommandQueue.on_settled`; whoever waits for a
result takes :meth:`CommandQueue.waiter` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from ..errors import Conflict, NotFound, UsageError
from ..protocol import messages as m
from ..protocol.limits import MAX_COMMAND_ARGS_BYTES
from ..store import commands as queue
from . import commandfiles
from .clusterbus import ClusterBus, NoBus
from .core import Core
from .dispatch import Dispatcher, Link, Scope
from .streams import User

MAX_DELIVERIES = 5

# (command id, agent id, agent name, ok, result) after a command ended.
Settled = Callable[[int, int, str, bool, str], Awaitable[object]]


class Presence(Protocol):
    """Where an agent's command channel is, if it is attached."""

    def attachment_of(self, user_id: int) -> Any: ...


def check_args(args: str) -> None:
    size = len(args.encode())
    if size > MAX_COMMAND_ARGS_BYTES:
        raise UsageError(
            f"the command's arguments take {size} bytes as JSON; at most "
            f"{MAX_COMMAND_ARGS_BYTES} fit in a command"
        )


class CommandQueue:
    def __init__(self, core: Core, presence: Presence) -> None:
        self.core = core
        self.db = core.db
        self.presence = presence
        self._settled: list[Settled] = []
        self._waiting: dict[int, asyncio.Event] = {}
        self._answering: set[int] = set()  # command results being recorded
        # The other nodes of a cluster: told when a command is queued for an
        # agent attached elsewhere, and when one ends (build_hub sets it).
        self.bus: ClusterBus = NoBus()

    def join(self, bus: ClusterBus) -> None:
        """Act on the other nodes' notices (docs/cluster.md)."""
        self.bus = bus
        bus.on("commands", self._notice_queued)
        bus.on("settled", self._notice_settled)

    async def _notice_queued(self, body: dict[str, Any]) -> None:
        agent_id = body.get("agent")
        if isinstance(agent_id, int) and self.presence.attachment_of(agent_id) is not None:
            await self.sweep([agent_id])

    async def _notice_settled(self, body: dict[str, Any]) -> None:
        event = self._waiting.get(body.get("command"))  # type: ignore[arg-type]
        if event is not None:
            event.set()

    async def sweep(self, agent_ids: list[int], *, created_before: float | None = None) -> int:
        """Hand the commands queued on another node to these agents, attached
        here; how many went. A heartbeat's sweep takes only those queued
        before ``created_before``: a newer one may still be being prepared by
        the node that queued it (a ``receive_file``'s copy), and that node
        tells the bus once it is ready."""
        sent = 0
        rows = await self.db.undelivered_commands(agent_ids, created_before=created_before)
        for row in rows:
            att = self.presence.attachment_of(int(row.agent_id))
            if att is not None and await self.deliver(att, int(row.id), row.kind, row.args):
                sent += 1
        return sent

    def on_settled(self, listener: Settled) -> None:
        """Call ``listener`` after each command ends (answered, failed or cancelled)."""
        self._settled.append(listener)

    def register(self, dispatcher: Dispatcher) -> None:
        """An agent's acknowledgements and results, and its open commands
        handed over again when it attaches."""
        dispatcher.register(m.CommandAck, self._ack, Scope.AGENT)
        dispatcher.register(m.CommandResult, self._result, Scope.AGENT)
        dispatcher.on_agent_attached(self._attached)

    async def enqueue(
        self,
        agent_id: int,
        kind: str,
        args: str,
        by: str,
        *,
        prepare: Callable[[int], Awaitable[object]] | None = None,
    ) -> tuple[int, bool]:
        """Queue a command for an agent and hand it over now if the agent is
        attached (else it goes when it attaches); ``prepare(command_id)``
        runs in between. Returns the command's id and whether it was handed over."""
        check_args(args)
        command_id = await self.db.add_command(agent_id, kind, args, by)
        if prepare is not None:
            await prepare(command_id)
        att = self.presence.attachment_of(agent_id)
        delivered = att is not None and await self.deliver(att, command_id, kind, args)
        if att is None:  # attached to another node, perhaps
            await self.bus.tell("commands", {"agent": agent_id})
        return command_id, delivered

    async def deliver(self, att: Any, command_id: int, kind: str, args: str) -> bool:
        """Hand an open command to the agent's attachment ``att`` and count it;
        one handed over ``MAX_DELIVERIES`` times already is failed instead."""
        count = await queue.mark_delivered(self.db, command_id, att.user.id, MAX_DELIVERIES)
        if count is None:
            return False  # answered or cancelled meanwhile
        if count == 0:
            await self.fail(
                command_id,
                att.user,
                f"handed to {att.user.name} {MAX_DELIVERIES} times without an answer "
                "(it may break the agent's connection or stop the agent); not sent again",
            )
            return False
        att.post(m.Command(id=command_id, kind=kind, args=args))
        return True

    async def _attached(self, link: Link, version: str) -> None:
        # Acknowledged but unanswered commands go again too: the agent may have
        # died running them, or its answer was lost (it answers a repeat from
        # memory when it still has one).
        for row in await self.db.open_commands(link.user.id):
            await self.deliver(link.att, int(row.id), str(row.kind), str(row.args))

    @contextlib.contextmanager
    def waiter(self, command_id: int) -> Iterator[asyncio.Event]:
        """An event set when command ``command_id`` ends; take it before
        reading the command's state, so a result in between is not missed."""
        event = self._waiting.setdefault(command_id, asyncio.Event())
        try:
            yield event
        finally:
            self._waiting.pop(command_id, None)

    async def _settle(self, command_id: int, agent: User, ok: bool, result: str) -> None:
        """After a command ended: wake whoever waits for it, and tell the
        subscribers (the collector acts on an upload)."""
        event = self._waiting.get(command_id)
        if event is not None:
            event.set()
        await self.bus.tell("settled", {"command": command_id})
        for listener in self._settled:
            await listener(command_id, agent.id, agent.name, ok, result)

    async def fail(self, command_id: int, agent: User, reason: str) -> bool:
        result = json.dumps({"error": reason})
        if not await queue.finish(self.db, command_id, agent.id, "failed", result):
            return False
        await commandfiles.finished(self.core, agent, command_id, False, result)
        await self._settle(command_id, agent, False, result)
        await self.core.events.emit("command_failed", agent.name, id=command_id, reason=reason)
        return True

    async def _ack(self, link: Link, msg: m.CommandAck, payload: bytes) -> None:
        await queue.acknowledge(self.db, msg.id, link.user.id)

    async def _result(self, link: Link, msg: m.CommandResult, payload: bytes) -> None:
        """Record an agent's answer: only to an open command queued for this
        agent, and only once (a concurrent copy waits its turn and is refused)."""
        agent = link.user
        if msg.id in self._answering or await queue.open_command(self.db, msg.id, agent.id) is None:
            self.core.metrics.refused.labels("command_result").inc()
            self.core.events.log.warning("command_result_refused", agent=agent.name, id=msg.id)
            return
        self._answering.add(msg.id)
        try:
            ok, result = await commandfiles.finished(self.core, agent, msg.id, msg.ok, msg.result)
            state = "done" if ok else "failed"
            if not await queue.finish(self.db, msg.id, agent.id, state, result):
                return  # cancelled while its files were moved
            await self._settle(msg.id, agent, msg.ok, msg.result)
            await self.core.events.emit("command_" + state, agent.name, id=msg.id)
        finally:
            self._answering.discard(msg.id)

    async def cancel(self, command_id: int, by: str) -> dict[str, Any]:
        """An admin gives up on an open command; it is not delivered again
        and its result is refused. Returns the command as it is now."""
        row = await self.db.get_command(command_id)
        if row is None:
            raise NotFound(
                f"no command {command_id}", hint="freight agents ls shows what is queued"
            )
        agent_row = await self.db.user_by_id(int(row.agent_id))
        result = json.dumps({"error": f"cancelled by {by}"})
        if agent_row is None or not await queue.finish(
            self.db, command_id, None, "cancelled", result
        ):
            raise Conflict(f"command {command_id} is {row.state} already; only open ones cancel")
        agent = User(int(agent_row.id), str(agent_row.name), str(agent_row.role))
        await commandfiles.finished(self.core, agent, command_id, False, result)
        await self._settle(command_id, agent, False, result)
        await self.core.events.emit(
            "command_cancelled", by, id=command_id, agent=agent.name, command=row.kind
        )
        return command_json(await self.db.get_command(command_id))


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
