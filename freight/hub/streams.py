"""The hub's side of streams: receive pushes into partial files and publish
them, and serve pulls from published files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from ..engine.partial import PartialFile, PathPlace
from ..engine.streams import Acceptance, FileSource, let_go, run_receiver, run_sender
from ..errors import (
    DiskFull,
    FreightError,
    HeldElsewhere,
    LimitReached,
    NotFound,
    QuotaExceeded,
    StorageError,
    UsageError,
)
from ..names import check_name
from ..protocol import messages as m
from ..protocol.stream import StreamReceiver, StreamRequested, StreamSender
from ..store import Database, DataLayout, quota
from ..store.bucket import Bucket
from ..transport.channel import Port
from ..units import format_bytes
from .bandwidth import BandwidthManager
from .batch import get_files, purge_stale, put_files
from .blobfiles import (
    BucketCheckpoints,
    BucketSource,
    bucket_away,
    drop_segments,
    restore_partial,
    store_content,
)
from .caps import AccountCaps
from .compression import CompressionPolicy
from .observe import EventLog, Metrics
from .transfers import Transfer, TransferBoard

_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
CLAIM_POLL = 0.25  # seconds between tries to take over a push another node holds


def minute_of_day() -> int:
    t = time.localtime()
    return t.tm_hour * 60 + t.tm_min


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    # The login behind a request or channel (its token's SHA-256) and the
    # identity key bound to that login: not part of who the user is.
    token: str = field(default="", compare=False)
    key: str = field(default="", compare=False)


class Node(Protocol):
    """This hub as a node of a cluster (:class:`freight.hub.nodes.NodeService`):
    pushes are received under its name for ``lease`` seconds at a time."""

    @property
    def name(self) -> str: ...

    @property
    def lease(self) -> float: ...

    @property
    def held_until(self) -> float:
        """Until when (monotonic) it may go on writing the pushes it holds."""
        ...

    @property
    def takeover_after(self) -> float:
        """How long another node must be :meth:`gone` before its pushes
        are taken over without waiting for their leases."""
        ...

    async def gone(self, node: str) -> bool:
        """Whether node ``node``'s process surely no longer runs."""
        ...


class SoleNode:
    """The node of a hub that runs alone (until build_hub sets the real one)."""

    name = "hub"
    lease = 9.0
    held_until = float("inf")
    takeover_after = float("inf")

    async def gone(self, node: str) -> bool:
        return False


class DatabaseCheckpoints:
    """A push's checkpoint, in the hub's database (its stream row), recorded
    only while this node still receives the push."""

    def __init__(self, db: Database, user_id: int, sid: str, node: Node) -> None:
        self.db = db
        self.user_id = user_id
        self.sid = sid
        self.node = node

    async def load(self) -> int | None:
        row = await self.db.get_stream(self.user_id, self.sid)
        return None if row is None else int(row.checkpoint)

    async def save(self, offset: int) -> None:
        if not await self.db.checkpoint_owned(self.user_id, self.sid, offset, self.node.name):
            raise HeldElsewhere(
                f"another hub node took this upload over; node {self.node.name} stopped"
            )

    async def clear(self) -> None:
        await self.db.delete_stream(self.user_id, self.sid)


class HubSink:
    """Receives one pushed stream into ``partial/<user>/<sid>.part``
    (a :class:`~freight.engine.partial.PartialFile`), published into the
    user's files."""

    def __init__(self, service: StreamService, user: User, sid: str) -> None:
        self.s = service
        self.user = user
        self.sid = sid
        self.key = f"push:{user.id}:{sid}"
        self.name = ""
        self.size = 0
        self.mtime = 0.0
        self.level = m.LEVEL_NONE
        self.want = m.LEVEL_NONE
        self.published_digest = ""
        self.path = service.layout.partial_path(user.id, sid)
        self.place = PathPlace(self.path, self.path, shown=sid)
        self.checkpoints: DatabaseCheckpoints | BucketCheckpoints = DatabaseCheckpoints(
            service.db, user.id, sid, service.node
        )
        if service.bucket is not None:  # its bytes go to the bucket too
            self.checkpoints = BucketCheckpoints(
                self.checkpoints, service.bucket, self.path, user.id, sid
            )
        self.file = PartialFile(self.place, self.checkpoints, 0)
        self.transfer: Transfer | None = None  # shown on the board while it runs

    async def open(self, req: StreamRequested) -> Acceptance:
        self.name = check_name(req.name)
        self.size, self.mtime, self.want = req.size, req.mtime, req.want_level
        self.level = self.s.compression.choose(self.want, self.user.name)
        self.file.size = req.size
        row = await self._claim()
        if row is None and not req.fresh:
            done = await self.s.db.file_by_sid(self.user.id, self.sid)
            if done is not None and done.size == req.size and done.name == self.name:
                # Published already; the sender missed our final ack.
                self.published_digest = str(done.digest)
                return Acceptance(
                    checkpoint=req.size,
                    prefix_digest=self.published_digest,
                    level=self.level,
                    rate=0,
                )
        resume = (
            row is not None
            and not req.fresh
            and row.size == req.size
            and row.name == self.name
            and await self._partial_holds(int(row.checkpoint))
        )
        try:
            limit = 0 if resume else await quota.quota_of(self.s.db, self.user.id)
            if not limit:  # no quota, or a resume: its space was granted at its start
                return await self._open(req, row, resume)
            async with self.s.quota_lock:
                # Checked and recorded under the lock: two uploads starting
                # at once cannot both take the last free bytes.
                await self._check_quota(req, limit)
                return await self._open(req, row, resume)
        except OSError as exc:
            self.close()
            if exc.errno in _DISK_FULL:
                raise DiskFull(f"the hub has no disk space for {self.name}") from None
            raise StorageError(f"the hub cannot store {self.name}: {exc.strerror}") from None

    async def _partial_holds(self, checkpoint: int) -> bool:
        """Whether the partial file holds ``checkpoint`` bytes (one shorter
        cannot be trusted); with a bucket, one another node received is
        rebuilt here from the push's segments."""
        held = await asyncio.to_thread(self.place.held)
        rebuilt = None
        if held is None or held < checkpoint:
            bucket = self.s.bucket
            if bucket is None:
                return False
            async with bucket_away():
                rebuilt = await restore_partial(
                    bucket, self.user.id, self.sid, checkpoint, self.path
                )
            if rebuilt is None:
                return False
        if isinstance(self.checkpoints, BucketCheckpoints):
            self.checkpoints.resumed(checkpoint, rebuilt)
        return True

    async def _claim(self) -> Any:
        """The push's row, now this node's to receive (None: a new push).
        While another node holds it, wait for its lease to lapse (a node that
        died holds it at most ``lease`` seconds more); HeldElsewhere if it is
        renewed all that time (that node is alive and still receiving)."""
        node = self.s.node
        deadline = time.monotonic() + node.lease + 1.0
        gone_since: float | None = None  # its node's process is gone since
        dead = ""
        while True:
            claimed, row = await self.s.db.claim_stream(
                self.user.id, self.sid, node.name, node.lease, dead=dead
            )
            if claimed and dead:
                self.s.log.info("stream_taken_over", sid=self.sid, node=dead)
            if row is None or claimed:
                return row
            now = time.monotonic()
            # A node whose process died (its database session ended) lets
            # go now rather than when its lease lapses: take over once it is
            # surely no longer writing (freight.store.watch).
            dead = ""
            if await node.gone(row.owner):
                gone_since = now if gone_since is None else gone_since
                if now - gone_since >= node.takeover_after:
                    dead = row.owner
                    continue
            else:
                gone_since = None
            if now >= deadline:
                raise HeldElsewhere(
                    f"hub node {row.owner} is still receiving {row.name}; "
                    "it resumes here once that node lets go"
                )
            await asyncio.sleep(CLAIM_POLL)

    async def _check_quota(self, req: StreamRequested, limit: int) -> None:
        used = await quota.usage(self.s.db, self.user.id, but_sid=self.sid, but_name=self.name)
        if used + req.size <= limit:
            return
        self.s.metrics.refused.labels("quota").inc()
        await self.s.events.emit(
            "quota_exceeded", self.user.name, name=self.name, size=req.size, used=used, quota=limit
        )
        raise QuotaExceeded(
            f"{self.user.name}'s quota on the hub is {format_bytes(limit)}: "
            f"{format_bytes(used)} in use, {self.name} needs {format_bytes(req.size)}"
        )

    async def _open(self, req: StreamRequested, row: Any, resume: bool) -> Acceptance:
        checkpoint = 0
        if resume:
            assert row is not None
            checkpoint = int(row.checkpoint)
            # Bytes past the checkpoint were never acknowledged: dropped.
            await asyncio.to_thread(self.file.open_at, checkpoint)
            await self.s.db.touch_stream(self.user.id, self.sid)
            await self.s.events.emit(
                "stream_resume", self.user.name, sid=self.sid, name=self.name, checkpoint=checkpoint
            )
            self.s.metrics.streams.labels("resume").inc()
        else:
            node = self.s.node
            if not await self.s.db.start_stream(
                self.user.id,
                self.sid,
                name=self.name,
                size=req.size,
                mtime=req.mtime,
                owner=node.name,
                lease_for=node.lease,
            ):
                raise HeldElsewhere(f"another hub node is receiving {self.name}")
            await asyncio.to_thread(self.file.open_at, 0)
            if isinstance(self.checkpoints, BucketCheckpoints):
                async with bucket_away():
                    await self.checkpoints.fresh()
            await self.s.events.emit(
                "stream_start", self.user.name, sid=self.sid, name=self.name, size=req.size
            )
            self.s.metrics.streams.labels("start").inc()
        self.s.bandwidth.register(self.key)
        self.transfer = Transfer(
            self.key,
            "push",
            self.user.id,
            self.user.name,
            self.name,
            req.size,
            done=checkpoint,
            checkpoint=checkpoint,
            retry=f"resumed from byte {checkpoint}" if resume else "",
        )
        self.s.board.start(self.transfer)
        return Acceptance(
            checkpoint=checkpoint,
            prefix_digest=self.file.hasher.hexdigest() if checkpoint else "",
            level=self.level,
            rate=self.s.bandwidth.rate_for(self.key, minute_of_day()),
        )

    def write(self, offset: int, data: bytes) -> None:
        if time.monotonic() > self.s.node.held_until:
            # Its heartbeat has not renewed its leases in time (a stalled
            # node): another node may be receiving this push by now.
            raise HeldElsewhere(f"this hub node's hold on {self.name} lapsed; resuming")
        try:
            self.file.write(offset, data)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise DiskFull(f"the hub ran out of disk space receiving {self.name}") from None
            raise StorageError(f"the hub could not write {self.name}: {exc.strerror}") from None
        self.s.metrics.bytes_received.inc(len(data))
        if self.transfer is not None:
            self.transfer.done = offset + len(data)

    async def durable(self, offset: int) -> tuple[int, str]:
        try:
            await self.file.checkpoint(offset)
        except OSError as exc:
            raise self._storage_error(exc) from None
        except SQLAlchemyError as exc:
            raise StorageError(f"the hub could not record a checkpoint: {exc}") from None
        if self.transfer is not None:
            self.transfer.checkpoint = offset
        # Re-chosen at each checkpoint: an admin's change, or the hub's load.
        self.level = self.s.compression.choose(self.want, self.user.name)
        return self.s.bandwidth.rate_for(self.key, minute_of_day()), self.level

    def _storage_error(self, exc: OSError) -> FreightError:
        if exc.errno in _DISK_FULL:
            return DiskFull(f"the hub ran out of disk space receiving {self.name}")
        return StorageError(f"the hub could not store {self.name}: {exc.strerror}")

    async def finish(self, total: int, digest: str) -> tuple[bool, str]:
        if self.published_digest:
            return digest == self.published_digest, self.published_digest
        try:
            return await self._publish(total, digest)
        except OSError as exc:
            raise self._storage_error(exc) from None
        except SQLAlchemyError as exc:
            raise StorageError(f"the hub could not record {self.name}: {exc}") from None

    async def _publish(self, total: int, digest: str) -> tuple[bool, str]:
        bucket = self.s.bucket
        if bucket is None:
            self.place.target = self.s.layout.file_path(self.user.id, self.name)
            verified, actual = await self.file.finish(digest, mtime=self.mtime or None)
        else:  # verified, then written to the bucket before it is recorded
            await asyncio.to_thread(self.file.sync)
            verified, actual = self.file.verify(digest)
            if not verified:
                await self.file.discard()
        if not verified:  # the partial is discarded
            self.close()
            await self.s.events.emit(
                "stream_failed",
                self.user.name,
                sid=self.sid,
                name=self.name,
                reason="digest mismatch",
            )
            self.s.metrics.streams.labels("failed").inc()
            return False, actual
        # The sweep leaves the content alone until it is recorded.
        with bucket.holding([actual]) if bucket is not None else contextlib.nullcontext():
            if bucket is not None:
                c = self.checkpoints
                assert isinstance(c, BucketCheckpoints)
                async with bucket_away():
                    await store_content(bucket, self.path, actual, c.known, c.last)
            await self.s.db.publish(
                self.user.id, self.sid, name=self.name, size=total, digest=actual, mtime=self.mtime
            )
        if bucket is not None:  # recorded: the partial and its segments are done with
            await asyncio.to_thread(self.file.remove)
            await drop_segments(bucket, self.user.id, self.sid)
        await self.s.events.emit(
            "stream_end", self.user.name, sid=self.sid, name=self.name, size=total, digest=actual
        )
        self.s.metrics.streams.labels("end").inc()
        return True, actual

    async def aborted(self, code: str, message: str) -> None:
        # A full disk or a changed source makes the partial worthless.
        if code in ("disk_full", "source_changed", "storage"):
            await self._discard()
        await self.s.events.emit(
            "stream_failed",
            self.user.name,
            sid=self.sid,
            name=self.name,
            reason=code,
            message=message,
        )
        self.s.metrics.streams.labels("failed").inc()

    async def _discard(self) -> None:
        self.close()
        await self.file.discard()

    def close(self) -> None:
        self.file.close()
        self.s.bandwidth.unregister(self.key)
        if self.transfer is not None:
            self.s.board.finish(self.transfer)


class StreamService:
    def __init__(
        self,
        db: Database,
        layout: DataLayout,
        bandwidth: BandwidthManager,
        events: EventLog,
        metrics: Metrics,
        *,
        checkpoint_interval: int,
        caps: AccountCaps | None = None,
        board: TransferBoard | None = None,
    ) -> None:
        self.caps = caps or AccountCaps()
        self.board = board or TransferBoard()  # what is in flight, for people
        self.db = db
        self.layout = layout
        self.bandwidth = bandwidth
        self.events = events
        self.metrics = metrics
        self.checkpoint_interval = checkpoint_interval
        self.log: Any = events.log
        # (user, stream or batch id) -> the task receiving it (one at a time)
        self.receiving: dict[tuple[int, str], asyncio.Task[Any]] = {}
        self.quota_lock = asyncio.Lock()
        # The levels asked of pushes (replaced by build_hub with the saved one).
        self.compression = CompressionPolicy()
        self.node: Node = SoleNode()  # replaced by build_hub with this process's node
        self.bucket: Bucket | None = None  # the files' bytes there, not in the data folder

    async def serve(self, user: User, port: Port, msg: m.AnyMessage, payload: bytes) -> None:
        """Entry point for a frame that opens a stream on any channel."""
        self.metrics.active_streams.inc()
        try:
            with self.caps.stream(user):
                if isinstance(msg, m.StartStream):
                    await self._push(user, port, msg)
                elif isinstance(msg, m.Pull):
                    await self._pull(user, port, msg)
                elif isinstance(msg, m.PutFiles):
                    await put_files(self, user, port, msg, payload)
                elif isinstance(msg, m.GetFiles):
                    await get_files(self, user, port, msg, payload)
        except LimitReached as exc:
            self.log.info("stream_refused", sid=port.sid, user=user.name, error=exc.message)
            with contextlib.suppress(FreightError, OSError):
                await port.send(m.Abort(sid=port.sid, code=exc.code, message=exc.message))
        except FreightError as exc:
            self.log.info(
                "stream_stopped", sid=port.sid, user=user.name, code=exc.code, error=exc.message
            )
        finally:
            self.metrics.active_streams.dec()

    async def _push(self, user: User, port: Port, start: m.StartStream) -> None:
        key = (user.id, start.sid)
        # A sender that comes back while its old connection still looks alive
        # (half-open TCP) takes over: the old receiver must stop writing first.
        old = self.receiving.get(key)
        if old is not None and not old.done():
            old.cancel()
            await asyncio.wait([old])  # how it ended is its own task's business
        me = asyncio.current_task()
        assert me is not None
        self.receiving[key] = me
        receiver = StreamReceiver(start.sid, checkpoint_interval=self.checkpoint_interval)
        sink = HubSink(self, user, start.sid)
        try:
            await run_receiver(port, receiver, sink, start)
        except asyncio.CancelledError:
            # This node gave the push up (another may resume it), or stops:
            # the sender resumes at once instead of waiting for acks.
            await let_go(port, receiver, HeldElsewhere(f"hub node {self.node.name} let go of it"))
            raise
        finally:
            sink.close()
            if self.receiving.get(key) is me:
                del self.receiving[key]
                # Another node may resume it at once (its sender moved on).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self.db.release_stream(user.id, start.sid, self.node.name)

    async def _pull(self, user: User, port: Port, pull: m.Pull) -> None:
        try:
            name = check_name(pull.name)
        except UsageError as exc:
            await port.send(m.Abort(sid=pull.sid, code=exc.code, message=exc.message))
            return
        row = await self.db.get_file(user.id, name)
        path = self.layout.file_path(user.id, name)
        if row is None or (self.bucket is None and not path.exists()):
            err = NotFound(f"no file named {name!r} on the hub")
            await port.send(m.Abort(sid=pull.sid, code=err.code, message=err.message))
            return
        source: FileSource | BucketSource
        if self.bucket is not None:
            source = BucketSource(self.bucket, str(row.digest), int(row.size))
        else:
            source = FileSource(path, direct=True)  # received around the page cache
        key = f"pull:{user.id}:{pull.sid}"
        self.bandwidth.register(key)
        sender = StreamSender(
            pull.sid,
            name=name,
            size=source.size,
            mtime=float(row.mtime),
            checkpoint_interval=self.checkpoint_interval,
        )
        await self.events.emit("pull_start", user.name, sid=pull.sid, name=name, size=source.size)
        shown = Transfer(
            key,
            "pull",
            user.id,
            user.name,
            name,
            source.size,
            probe=lambda: (sender.offset, sender.checkpoint),
        )
        try:
            with self.board.track(shown):
                ack = await run_sender(
                    port,
                    sender,
                    source,
                    limit=lambda: self.bandwidth.rate_for(key, minute_of_day()),
                )
            self.metrics.bytes_sent.inc(sender.wire_bytes)
            await self.events.emit(
                "pull_end", user.name, sid=pull.sid, name=name, verified=ack.verified
            )
        finally:
            source.close()
            self.bandwidth.unregister(key)

    async def purge(self, older_than_seconds: float) -> int:
        """Drop streams untouched for longer than the limit, with their partials."""
        stale = await self.db.stale_streams(time.time() - older_than_seconds)
        for row in stale:
            self.layout.partial_path(row.user_id, row.sid).unlink(missing_ok=True)
            if self.bucket is not None:
                await drop_segments(self.bucket, row.user_id, row.sid)
            await self.db.delete_stream(row.user_id, row.sid)
            await self.events.emit("stream_purged", "hub", sid=row.sid, name=row.name)
        cutoff = time.time() - older_than_seconds
        batches = await asyncio.to_thread(purge_stale, self.layout.partial_dir, cutoff)
        return len(stale) + batches
