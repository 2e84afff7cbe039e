"""Transfer jobs with a negotiated manner: both sides' runners over a
messaging :class:`~freight.messaging.Bus` (docs/protocol.md §16)::

    async with freight.messaging.connect() as bus:
        done = await send_job(bus, "bob", "inbox", [Path("photos")])
        print(done.line())   # job 3: 12 files, 1.2 GiB, BLAKE3 ok, by relay in 2.1 s

    async with freight.messaging.connect() as bus:
        async for done in receive_jobs(bus, "inbox", Path("in")):
            print(done.line())

The runners carry out what the machines of :mod:`freight.protocol.jobs`
decide; the manners are the adapters of :mod:`.jobmanners`; every attempt
lands in the local record (:mod:`.jobstore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FreightError, JobFailed, JobMismatch, from_exception
from ..protocol import jobs as j
from ..tasks import Supervisor
from ..units import format_bytes
from .config import ClientConfig
from .jobmanners import (
    ReceiverManner,
    ReceiveSide,
    SenderManner,
    SendSide,
    declared,
    entries_digest,
    receiver_manner,
    sender_manner,
)
from .jobstore import JobStore
from .options import QuietReporter
from .receiving import Consent, refuse_to_replace
from .sendrecv import Entry, Reporter, build_manifest

__all__ = ["DEFAULT_MANNERS", "JobOutcome", "receive_jobs", "send_job"]

DEFAULT_MANNERS = ("direct", "relay", "ref")
ANSWER_TIMEOUT = 30.0  # a proposal unanswered this long counts as refused
RESULT_TIMEOUT = 600.0  # the receiver hashes what it holds before answering
SEND_TIMEOUT = 30.0
MAX_LIVE = 4  # jobs a receiver moves at once; more are refused as busy
MAX_KNOWN = 1000  # jobs a receiver remembers (ended ones answer nothing)
QUEUE = 64


@dataclass
class JobOutcome:
    """How a job ended, as both ends print it."""

    id: int
    uuid: str
    role: str
    ok: bool
    manner: str = ""
    files: int = 0
    bytes: int = 0
    blake3: str = ""
    error: str = ""
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.ok:
            return f"job {self.id} failed: {self.error}"
        return (
            f"job {self.id}: {self.files} file{'s' if self.files != 1 else ''}, "
            f"{format_bytes(self.bytes)}, BLAKE3 ok, by {self.manner} in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def check(self) -> JobOutcome:
        """Itself when it succeeded, else the error it stands for."""
        if self.ok:
            return self
        kind = JobMismatch if self.error.startswith("mismatch") else JobFailed
        # The class's hint names the command; this one names the job.
        hint = (kind.hint or "").replace("freight job show ID", f"freight job show {self.id}")
        raise kind(f"job {self.id}: {self.error}", hint=hint)


def _reason(exc: BaseException) -> str:
    mapped = from_exception(exc)
    if mapped is not None:
        return mapped.message or type(mapped).__name__
    return f"{type(exc).__name__}: {exc}"


async def _local(queue: asyncio.Queue[tuple[Any, ...]], key: tuple[Any, ...], work: Any) -> None:
    """Run one step of an attempt and queue its outcome."""
    try:
        value = await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure of a manner is an attempt's reason
        await queue.put(("failed", *key, _reason(exc)))
        return
    await queue.put(("done", *key, value))


async def _read(reg: Any, queue: asyncio.Queue[tuple[Any, ...]]) -> None:
    try:
        while True:
            await queue.put(("msg", await reg.get()))
    except FreightError as exc:
        await queue.put(("lost", exc))


def _peer_filter(dest: str) -> str:
    return dest if dest and not dest.startswith("host:") and dest != "*" else "*"


# --- the sender ------------------------------------------------------------------------


async def send_job(
    bus: Any,
    dest: str,
    app: str,
    paths: Sequence[Path],
    *,
    manners: Sequence[str] = DEFAULT_MANNERS,
    requires: Sequence[str] = (),
    reporter: Reporter | None = None,
    config: ClientConfig | None = None,
    hub: str | None = None,
    answer_timeout: float = ANSWER_TIMEOUT,
    result_timeout: float = RESULT_TIMEOUT,
    entries: list[Entry] | None = None,
    declare: tuple[int, str] | None = None,
    on_job: Callable[[int, str], object] | None = None,
    on_attempt: Callable[[int, j.Record], object] | None = None,
) -> JobOutcome:
    """Send ``paths`` to ``dest``'s ``app`` as a job (see the module doc).
    Returns the outcome whether or not it succeeded (``.check()`` raises
    :class:`~freight.errors.JobFailed` or ``JobMismatch``). ``entries`` and
    ``declare`` (bytes, digest) replace what is read from ``paths``: for
    tests of what a receiver does with a sender that lies."""
    config = config or ClientConfig()
    reporter = reporter or QuietReporter()
    entries = build_manifest(list(paths)) if entries is None else entries
    nbytes, digest = await asyncio.to_thread(entries_digest, entries)
    if declare is not None:
        nbytes, digest = declare
    files = sum(1 for e in entries if e.type == "file")
    machine = j.SenderMachine(
        job=uuid.uuid4().hex,
        manners=list(manners),
        requires=list(requires),
        bytes=nbytes,
        files=files,
        blake3=digest,
    )
    side = SendSide(config, hub, list(paths), entries, reporter)
    with JobStore(config.root) as store:
        jid = store.new_job(machine.job, "send", dest, app, files=files, nbytes=nbytes)
        if on_job is not None:
            on_job(jid, machine.job)
        reg = await bus.register(app, interest=j.JOB_REPLY_TYPE, peer=_peer_filter(dest))
        try:
            run = _Sending(bus, dest, app, reg, machine, side, store, jid)
            run.on_attempt = on_attempt
            return await run.go(answer_timeout, result_timeout)
        finally:
            with contextlib.suppress(FreightError):
                await reg.close()


class _Sending:
    def __init__(
        self,
        bus: Any,
        dest: str,
        app: str,
        reg: Any,
        machine: j.SenderMachine,
        side: SendSide,
        store: JobStore,
        jid: int,
    ) -> None:
        self.bus, self.dest, self.app, self.reg = bus, dest, app, reg
        self.machine, self.side, self.store, self.jid = machine, side, store, jid
        self.peer: tuple[str, str] | None = None  # the receiver's host and ticket
        self.adapter: SenderManner | None = None
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(QUEUE)
        self.on_attempt: Callable[[int, j.Record], object] | None = None

    async def _send(self, msg: j.JobMessage, to: tuple[str, str] | None = None) -> None:
        to = to or self.peer
        await self.bus.send(
            "host:" + to[0] if to else self.dest,
            self.app,
            type=j.JOB_TYPE,
            body=j.encode(msg),
            ticket=to[1] if to else "",
            from_ticket=self.reg.ticket,
            timeout=SEND_TIMEOUT,
        )

    async def _close_adapter(self) -> None:
        if self.adapter is not None:
            adapter, self.adapter = self.adapter, None
            with contextlib.suppress(FreightError, OSError):
                await adapter.aclose()

    async def go(self, answer_timeout: float, result_timeout: float) -> JobOutcome:
        async with Supervisor("job-send") as tasks:
            try:
                return await self._run(tasks, answer_timeout, result_timeout)
            finally:
                await tasks.aclose()  # what the adapter runs ends before it closes
                await self._close_adapter()

    async def _run(
        self, tasks: Supervisor, answer_timeout: float, result_timeout: float
    ) -> JobOutcome:
        m = self.machine
        tasks.spawn(_read(self.reg, self.queue), name="read")
        acts = m.start()
        while True:
            for act in acts:
                done = await self._act(act, tasks)
                if done is not None:
                    return done
            timeout = {j.S.PROPOSED: answer_timeout, j.S.CONFIRMING: result_timeout}
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout.get(m.state))
            except TimeoutError:
                acts = m.timeout()
                continue
            acts = await self._event(event)

    async def _act(self, act: j.Action, tasks: Supervisor) -> JobOutcome | None:
        m = self.machine
        if isinstance(act, j.Prepare):
            await self._close_adapter()
            self.store.begin_attempt(self.jid, act.attempt)
            self.adapter = sender_manner(act.manner, self.side)
            key = ("prepare", act.attempt)
            tasks.spawn(_local(self.queue, key, self.adapter.offer()), name="prepare")
        elif isinstance(act, j.Move):
            assert self.adapter is not None
            key = ("move", act.attempt)
            tasks.spawn(_local(self.queue, key, self.adapter.move(act.completion)), name="move")
        elif isinstance(act, j.Send):
            if isinstance(act.msg, j.Propose) or self.peer is not None:
                try:
                    await self._send(act.msg)
                except FreightError as exc:
                    if not isinstance(act.msg, j.Propose):
                        return None  # an Abandon or Result the receiver missed
                    self.store.record(self.jid, m.attempt, m.manner, "failed", exc.message)
                    self.store.finish(self.jid, False, error=exc.message)
                    raise
        elif isinstance(act, j.Record):
            self.store.record(self.jid, act.attempt, act.manner, act.verdict, act.reason, act.bytes)
            if self.on_attempt is not None:
                self.on_attempt(self.jid, act)
        elif isinstance(act, j.Finish):
            manner = m.manner if act.ok else ""
            elapsed = self.store.finish(
                self.jid, act.ok, manner=manner, error=act.error, blake3=act.blake3
            )
            return JobOutcome(
                self.jid,
                m.job,
                "send",
                act.ok,
                manner,
                m.files,
                m.bytes,
                act.blake3 or m.blake3,
                act.error,
                elapsed,
                list(m.reasons),
            )
        return None

    async def _event(self, event: tuple[Any, ...]) -> list[j.Action]:
        m = self.machine
        kind = event[0]
        if kind == "lost":
            raise event[1]
        if kind == "msg":
            return await self._message(event[1])
        step, attempt = event[1], event[2]
        if attempt != m.attempt:
            return []  # what an attempt given up did later
        if kind == "failed":
            if (step, m.state) in (("prepare", j.S.PREPARING), ("move", j.S.MOVING)):
                return m.failed(event[3])
            return []
        if step == "prepare" and m.state is j.S.PREPARING:
            offer = event[3]
            d = declared(m.manner, offer)
            return m.prepared(offer, d.bytes, d.blake3) if d else m.prepared(offer)
        if step == "move" and m.state is j.S.MOVING:
            return m.moved()
        return []

    async def _message(self, msg: Any) -> list[j.Action]:
        try:
            job_msg = j.decode(msg.body)
        except j.MalformedJobMessage:
            return []
        if job_msg.job != self.machine.job:
            return []
        came_from = (msg.frm, msg.from_ticket)
        if self.peer is None and isinstance(job_msg, j.Accept | j.Refuse):
            self.peer = came_from
        elif self.peer is not None and msg.frm != self.peer[0]:
            if isinstance(job_msg, j.Accept):  # another receiver of the account was later
                gone = j.Abandon(
                    job=job_msg.job, attempt=job_msg.attempt, reason="another receiver took it"
                )
                with contextlib.suppress(FreightError):
                    await self._send(gone, came_from)
            return []
        return self.machine.receive(job_msg)


# --- the receiver ----------------------------------------------------------------------------


@dataclass
class _Job:
    jid: int
    machine: j.ReceiverMachine
    host: str
    account: str
    ticket: str
    adapter: ReceiverManner | None = None
    task: asyncio.Task[None] | None = None


async def receive_jobs(
    bus: Any,
    app: str,
    dest: Path,
    *,
    accepts: Sequence[str] = DEFAULT_MANNERS,
    reporter: Reporter | None = None,
    config: ClientConfig | None = None,
    hub: str | None = None,
    consent: Consent = refuse_to_replace,
    bind: str | None = None,
    peer: str = "*",
    any_url: bool = False,
    on_proposal: Callable[[int, j.Propose, str], object] | None = None,
    on_ready: Callable[[], object] | None = None,
    on_attempt: Callable[[int, j.Record], object] | None = None,
) -> AsyncGenerator[JobOutcome, None]:
    """Serve ``app``: answer job proposals and yield each job's outcome as
    it ends (a refused job ends when its sender gives up). Hostile or
    malformed proposals are refused with a reason; serving goes on.
    ``peer``: the only account whose proposals reach it (``*``: anyone).
    ``any_url``: take references to any HTTPS URL, not only hub links.
    ``on_ready`` is called once the hub routes ``app`` here."""
    config = config or ClientConfig()
    side = ReceiveSide(
        config, hub, dest, reporter or QuietReporter(), consent, bind, any_url=any_url
    )
    unavailable = {m: why for m in j.MANNERS if (why := receiver_manner(m, side).unavailable())}
    reg = await bus.register(app, interest=j.JOB_TYPE, peer=peer)
    if on_ready is not None:
        on_ready()
    try:
        with JobStore(config.root) as store:
            run = _Receiving(bus, app, reg, side, store, list(accepts), unavailable, on_proposal)
            run.on_attempt = on_attempt
            async with Supervisor("job-receive") as tasks:
                tasks.spawn(_read(reg, run.queue), name="read")
                run.tasks = tasks
                try:
                    while True:
                        event = await run.queue.get()
                        for done in await run.event(event):
                            yield done
                finally:
                    for job in run.jobs.values():
                        await run.cancel(job)
    finally:
        with contextlib.suppress(FreightError):
            await reg.close()


class _Receiving:
    tasks: Supervisor

    def __init__(
        self,
        bus: Any,
        app: str,
        reg: Any,
        side: ReceiveSide,
        store: JobStore,
        accepts: list[str],
        unavailable: dict[str, str],
        on_proposal: Callable[[int, j.Propose, str], object] | None,
    ) -> None:
        self.bus, self.app, self.reg, self.side, self.store = bus, app, reg, side, store
        self.accepts, self.unavailable, self.on_proposal = accepts, unavailable, on_proposal
        self.jobs: OrderedDict[str, _Job] = OrderedDict()
        self.on_attempt: Callable[[int, j.Record], object] | None = None
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(QUEUE)

    async def _send(self, job: _Job | None, msg: j.JobMessage, via: Any = None) -> None:
        host, ticket = (job.host, job.ticket) if job else (via.frm, via.from_ticket)
        with contextlib.suppress(FreightError):
            await self.bus.send(
                "host:" + host,
                self.app,
                type=j.JOB_REPLY_TYPE,
                body=j.encode(msg),
                ticket=ticket,
                from_ticket=self.reg.ticket,
                timeout=SEND_TIMEOUT,
            )

    async def cancel(self, job: _Job) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(job.task, 5)
        job.task = None
        if job.adapter is not None:
            adapter, job.adapter = job.adapter, None
            with contextlib.suppress(FreightError, OSError):
                await adapter.aclose()

    def _live(self) -> int:
        busy = (j.S.ACCEPTING, j.S.MOVING)
        return sum(1 for x in self.jobs.values() if x.machine.state in busy)

    async def event(self, event: tuple[Any, ...]) -> list[JobOutcome]:
        kind = event[0]
        if kind == "lost":
            raise event[1]
        if kind == "msg":
            return await self._message(event[1])
        step, job_id, attempt = event[1], event[2], event[3]
        job = self.jobs.get(job_id)
        if job is None or attempt != job.machine.attempt:
            return []
        m = job.machine
        if kind == "failed":
            if (step, m.state) in (("complete", j.S.ACCEPTING), ("move", j.S.MOVING)):
                return await self._do(job, m.failed(event[4]))
            return []
        if step == "complete" and m.state is j.S.ACCEPTING:
            return await self._do(job, m.completed(event[4]))
        if step == "move" and m.state is j.S.MOVING:
            nbytes, digest = event[4]
            return await self._do(job, m.moved(nbytes, digest))
        return []

    async def _message(self, msg: Any) -> list[JobOutcome]:
        try:
            job_msg = j.decode(msg.body)
        except j.MalformedJobMessage as exc:
            await self._send(None, j.Refuse(job="", attempt=0, reason=j.clip(exc.message)), msg)
            return []
        job = self.jobs.get(job_msg.job)
        if job is None:
            if not isinstance(job_msg, j.Propose):
                return []
            if self._live() >= MAX_LIVE:
                busy = j.Refuse(
                    job=job_msg.job,
                    attempt=job_msg.attempt,
                    reason=f"busy: {MAX_LIVE} jobs are moving here",
                )
                await self._send(None, busy, msg)
                return []
            job = await self._new(job_msg, msg)
        elif (msg.frm, msg.account) != (job.host, job.account):
            return []  # only the job's sender speaks for it
        if msg.from_ticket:
            job.ticket = msg.from_ticket
        fresh = isinstance(job_msg, j.Propose) and job_msg.attempt > job.machine.attempt
        if fresh and self.on_proposal is not None:
            assert isinstance(job_msg, j.Propose)
            self.on_proposal(job.jid, job_msg, msg.account)
        return await self._do(job, job.machine.receive(job_msg))

    async def _new(self, p: j.Propose, msg: Any) -> _Job:
        while len(self.jobs) >= MAX_KNOWN:
            _, old = self.jobs.popitem(last=False)
            await self.cancel(old)
        machine = j.ReceiverMachine(job=p.job, accepts=self.accepts, unavailable=self.unavailable)
        jid = self.store.new_job(p.job, "receive", msg.account, self.app, files=p.files)
        job = _Job(jid, machine, msg.frm, msg.account, msg.from_ticket)
        self.jobs[p.job] = job
        return job

    async def _do(self, job: _Job, acts: list[j.Action]) -> list[JobOutcome]:
        out: list[JobOutcome] = []
        for act in acts:
            if isinstance(act, j.Complete):
                await self.cancel(job)
                self.store.begin_attempt(job.jid, act.proposal.attempt)
                self.store.update_totals(job.jid, act.proposal.files, act.proposal.bytes)
                job.adapter = receiver_manner(act.proposal.manner, self.side)
                key = ("complete", job.machine.job, act.proposal.attempt)
                job.task = self.tasks.spawn(
                    _local(self.queue, key, job.adapter.complete(act.proposal)), name="complete"
                )
            elif isinstance(act, j.Move):
                assert job.adapter is not None
                key = ("move", job.machine.job, act.attempt)
                work = job.adapter.move(act.offer, act.completion)
                job.task = self.tasks.spawn(_local(self.queue, key, work), name="move")
            elif isinstance(act, j.Cancel):
                await self.cancel(job)
            elif isinstance(act, j.Send):
                await self._send(job, act.msg)
            elif isinstance(act, j.Record):
                self.store.record(
                    job.jid, act.attempt, act.manner, act.verdict, act.reason, act.bytes
                )
                if self.on_attempt is not None:
                    self.on_attempt(job.jid, act)
            elif isinstance(act, j.Finish):
                await self.cancel(job)
                p = job.machine.proposal
                manner = job.machine.manner if act.ok else ""
                elapsed = self.store.finish(
                    job.jid, act.ok, manner=manner, error=act.error, blake3=act.blake3
                )
                out.append(
                    JobOutcome(
                        job.jid,
                        job.machine.job,
                        "receive",
                        act.ok,
                        manner,
                        p.files if p else 0,
                        act.bytes,
                        act.blake3,
                        act.error,
                        elapsed,
                    )
                )
        return out
