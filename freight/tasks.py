"""Who owns a background task.

Every task the package starts belongs to a :class:`Supervisor`: one for the
hub process, one per attachment or connection, one per client command. A
supervisor keeps a reference to each task (so none is garbage-collected
half-way), hears how each one ended, and on :meth:`Supervisor.aclose`
cancels what is still running and waits for it, with a deadline.

How a failure travels depends on what the task is:

* ``spawn(coro)`` — a helper of the owner (a writer, a reader, a timer).
  If it fails, the supervisor is *failed*: its :attr:`failure` is set, the
  ``on_failure`` callback runs (the owner typically closes its connection),
  and :meth:`Supervisor.wait_failed` returns the error to whoever waits.
* ``spawn(coro, detached=True)`` — independent work whose failure concerns
  only itself (one client's connection on a hub). Its failure is logged
  with the task's name and counted, never silently dropped, and does not
  fail its siblings.

Cancellation is never swallowed: a cancelled task counts as ended, not as
failed, and :meth:`aclose` re-raises a cancellation of its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("freight.tasks")


class Supervisor:
    """A named set of tasks with one owner; see the module docstring."""

    def __init__(
        self, name: str, *, on_failure: Callable[[BaseException], None] | None = None
    ) -> None:
        self.name = name
        self.on_failure = on_failure
        self.failure: BaseException | None = None
        self.detached_failures = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed = asyncio.Event()
        self._closing = False

    def __repr__(self) -> str:
        state = "closing" if self._closing else "failed" if self.failure else "running"
        return f"<Supervisor {self.name} {state} tasks={len(self._tasks)}>"

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str = "", detached: bool = False
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task of this supervisor."""
        if self._closing:
            coro.close()
            raise RuntimeError(f"{self.name} is closed: no new tasks")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}/{name or 'task'}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._ended(t, detached))
        return task

    def _ended(self, task: asyncio.Task[Any], detached: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if detached:
            self.detached_failures += 1
            log.warning(
                "task failed", exc_info=exc, extra={"task": task.get_name(), "error": repr(exc)}
            )
            return
        if self.failure is None:
            self.failure = exc
            self._failed.set()
            if self.on_failure is not None:
                self.on_failure(exc)

    async def wait_failed(self) -> BaseException:
        """Until one of the owner's helpers fails; returns its error."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def aclose(self, timeout: float = 5.0, *, grace: float = 0.0) -> None:
        """Cancel every task still running and wait up to ``timeout``
        seconds for them to end (a task that ignores cancellation longer
        is logged and left). With ``grace``, tasks first get that many
        seconds to end by themselves (to finish what they already hold)."""
        self._closing = True
        if grace > 0 and self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning("task ignored cancellation", extra={"task": task.get_name()})

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
