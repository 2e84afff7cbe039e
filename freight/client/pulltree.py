"""Pull of a folder: the hub's files named ``NAME/...`` become a local
folder, placed as ``cp -r`` places one; several files at once with
``--parallel``. Small files come in batches (:mod:`.pullbatch`), each
other file is an ordinary resumable pull, and files already in place with
the same bytes are not fetched again, so running an interrupted pull again
finishes it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..engine.hashing import digest_fd
from ..errors import FreightError, NotFound, StorageError, UsageError
from ..names import check_name
from ..protocol.limits import SMALL_FILE_BYTES
from . import pullbatch
from .config import ClientConfig, write_json_atomic
from .options import Reporter, TransferOptions, TransferResult
from .pathrate import fixed_share
from .session import HubSession
from .transfer import BATCHES_IN_FLIGHT, LinkHolder, pull_file, with_retries


@dataclass(frozen=True)
class PullItem:
    name: str  # on the hub
    dest: Path  # the local file
    size: int
    digest: str
    mtime: float


@dataclass(frozen=True)
class PullPlan:
    items: list[PullItem]
    folder: bool  # NAME named a folder on the hub
    root: Path  # the local file, or the folder that receives the copy
    # While a pull that creates DEST as the copy is unfinished, this state
    # file says so: the same command run again resumes into DEST instead of
    # nesting a second copy in it (DEST exists by then).
    marker: Path | None = None


async def plan_pull(
    session: HubSession,
    config: ClientConfig,
    name: str,
    dest: Path | None,
    opts: TransferOptions,
    reporter: Reporter,
) -> PullPlan:
    """What ``freight pull NAME [DEST]`` fetches and where it goes.

    A name that is a file on the hub is pulled as before: into DEST, or into
    DEST/NAME when DEST is a folder. A name with files under it (``NAME/``;
    a trailing slash demands a folder) is a folder: into an existing folder
    DEST it arrives as DEST/NAME, a DEST that does not exist becomes the
    copy, and without DEST it lands in ./NAME.
    """
    want_folder = name.endswith("/")
    base = check_name(name.rstrip("/")) if name.strip("/") else ""
    if not base:
        raise UsageError("name a file or folder on the hub", hint="run: freight ls")

    async def listing_once() -> list[dict[str, Any]]:
        return list(await session.request("GET", "/v1/files"))

    # The listing is the pull's first contact with the hub: a hub that cannot
    # be reached is retried as a stream that never started would be.
    listing: list[dict[str, Any]] = await with_retries(
        listing_once, opts.retry, reporter, LinkHolder(session, opts.data_path), lambda: False
    )
    leaf = PurePosixPath(base).name
    exact = next((f for f in listing if f["name"] == base), None)
    if exact is not None and not want_folder:
        target = dest if dest is not None else Path(leaf)
        if target.is_dir():
            target = target / leaf
        return PullPlan([_item(exact, target)], folder=False, root=target)
    prefix = base + "/"
    inside = [f for f in listing if f["name"].startswith(prefix)]
    if not inside:
        what = "folder" if want_folder else "file"
        raise NotFound(f"no {what} named {base!r} on the hub", hint="freight ls lists yours")
    marker = None
    if dest is None:
        root = Path(leaf)
    else:
        marker = config.transfer_path("pull-into", str(session.home), base, str(dest.resolve()))
        root = dest / leaf if dest.is_dir() and not marker.exists() else dest
        if root == dest:
            write_json_atomic(marker, {"name": base, "dest": str(dest.resolve())})
        else:
            marker = None
    if root.exists() and not root.is_dir():
        raise UsageError(
            f"{root} is a file, not a folder", hint=f"name another destination for {base}/"
        )
    items = []
    for f in inside:
        rel = check_name(f["name"][len(prefix) :])  # the hub's word, checked again
        items.append(_item(f, root.joinpath(*rel.split("/"))))
    return PullPlan(items, folder=True, root=root, marker=marker)


def _item(row: dict[str, Any], dest: Path) -> PullItem:
    return PullItem(
        name=str(row["name"]),
        dest=dest,
        size=int(row["size"]),
        digest=str(row["digest"]),
        mtime=float(row["mtime"]),
    )


def already_there(item: PullItem) -> bool:
    """The destination is a regular file (not a link) with the hub's bytes;
    its modification time is set to the hub's, as a pull would."""
    try:
        st = os.lstat(item.dest)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != item.size:
        return False
    try:
        fd = os.open(item.dest, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if digest_fd(fd, st.st_size) != item.digest:
            return False
        if item.mtime and st.st_mtime != item.mtime:
            os.utime(fd, (item.mtime, item.mtime))
    finally:
        os.close(fd)
    return True


async def pull_many(
    session: HubSession,
    config: ClientConfig,
    plan: PullPlan,
    opts: TransferOptions,
    reporter: Reporter,
) -> list[TransferResult]:
    """Pull the plan's files: small ones of a folder in batches, the others
    with up to ``opts.parallel`` streams at once."""
    results: list[TransferResult] = []
    small: list[PullItem] = []
    large = plan.items
    if plan.folder and len(plan.items) > 1:
        small = [i for i in plan.items if i.size <= SMALL_FILE_BYTES]
        large = [i for i in plan.items if i.size > SMALL_FILE_BYTES]
    todo = deque(large)
    batches = iter(list(pullbatch.groups(small)))
    if opts.percent is not None:  # --limit NN%: a share of the path down, measured once
        streams = max(1, min(opts.parallel, len(large)))
        share = await fixed_share(session, opts.percent / streams, "down")
        opts = dataclasses.replace(opts, limit=share, percent=None)

    async def batch_worker() -> None:
        holder = LinkHolder(session, opts.data_path)
        try:
            for group in batches:
                results.extend(await _pull_batch(holder, plan.root, group, opts, reporter))
        finally:
            await holder.drop()

    async def worker() -> None:
        holder = LinkHolder(session, opts.data_path)
        try:
            while todo:
                item = todo.popleft()
                if plan.folder and await asyncio.to_thread(already_there, item):
                    results.append(_skipped(item, reporter))
                    continue
                results.append(
                    await pull_file(session, holder, config, item.name, item.dest, opts, reporter)
                )
        finally:
            await holder.drop()

    try:
        async with asyncio.TaskGroup() as tg:
            if small:
                for _ in range(BATCHES_IN_FLIGHT):
                    tg.create_task(batch_worker())
            for _ in range(max(1, min(opts.parallel, len(large)))):
                tg.create_task(worker())
    except* FreightError as group:
        raise group.exceptions[0] from None
    if plan.marker is not None:
        plan.marker.unlink(missing_ok=True)  # done: a new run is a new copy, as with cp
    return sorted(results, key=lambda r: r.name)


async def _pull_batch(
    holder: LinkHolder,
    root: Path,
    group: list[PullItem],
    opts: TransferOptions,
    reporter: Reporter,
) -> list[TransferResult]:
    """One batch of small files: those already in place are skipped, the
    rest asked for (again, whole, after a failure) and placed."""
    there, where = await asyncio.to_thread(
        lambda: ([already_there(i) for i in group], shown_paths(root, group))
    )
    shown = {i.name: path for i, path in zip(group, where, strict=True)}
    out = [
        _skipped(i, reporter, shown[i.name]) for i, skip in zip(group, there, strict=True) if skip
    ]
    wanted = [i for i, skip in zip(group, there, strict=True) if not skip]
    if not wanted:
        return out
    started = time.monotonic()
    size = sum(i.size for i in wanted)
    label = f"{len(wanted)} files from {wanted[0].name}"
    reporter.start(label, size)
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        link = await holder.get()
        got = await pullbatch.fetch(link, wanted, opts.stall_timeout)
        try:
            await asyncio.to_thread(pullbatch.place, root, wanted, got, opts.keep_existing)
        except OSError as exc:  # the local disk: not worth a retry
            raise StorageError(f"cannot write into {root}: {exc.strerror or exc}") from None

    await with_retries(attempt, opts.retry, reporter, holder, lambda: False)
    seconds = time.monotonic() - started
    for item in wanted:
        out.append(
            TransferResult(
                name=item.name,
                path=shown[item.name],
                size=item.size,
                digest=item.digest,
                seconds=seconds,
                attempts=attempts,
            )
        )
    reporter.update(label, size)
    reporter.finish(label, out[-1])
    return out


def shown_paths(root: Path, items: list[PullItem]) -> list[str]:
    """The absolute path of each item's file, for results: the root
    resolved once, not every file's path (a lookup per component of each:
    12 % of a 10,000-file pull's client). The files below the root were
    written without following a link, so their path is the root's and
    their own names."""
    resolved = root.resolve()
    out = []
    for item in items:
        try:
            out.append(str(resolved / item.dest.relative_to(root)))
        except ValueError:  # not below the root (a single file's plan)
            out.append(str(item.dest.resolve()))
    return out


def _skipped(item: PullItem, reporter: Reporter, path: str = "") -> TransferResult:
    result = TransferResult(
        name=item.name,
        path=path or str(item.dest.resolve()),
        size=item.size,
        digest=item.digest,
        seconds=0.0,
        resumed_from=item.size,
        attempts=0,
        skipped=True,
    )
    reporter.start(item.name, item.size)
    reporter.update(item.name, item.size)
    reporter.finish(item.name, result)
    return result
