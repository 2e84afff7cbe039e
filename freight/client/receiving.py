"""The receiving side of ``freight send`` / ``receive`` and of the agents'
file manager's copies (messages in :mod:`freight.protocol.sendrecv`).

Where a received list lands follows ``cp``/``scp`` (:class:`Destination`);
everything below the destination is written through descriptors that
never follow a link (:mod:`.safefs`); a file that already exists and is
not this transfer's own (its finished copy: same size and modification
time; or its ``.freight-part``) is replaced only with consent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..engine.durable import sync_filesystem
from ..engine.hashing import digest_bytes, hash_fd
from ..engine.partial import FolderPlace, LengthCheckpoints, PartialFile
from ..engine.pipeline import WriteBehind
from ..errors import FreightError, StorageError, UsageError
from ..protocol import sendrecv as wire
from .pacing import Pacer
from .relay import Connection
from .safefs import FileExists, Tree, UnsafePath, relative_parts, same_file
from .sendrecv import (
    CHUNK,
    PART_SUFFIX,
    READ_AHEAD,
    SYNC_EACH,
    Entry,
    Reporter,
    Shaping,
    Summary,
    TransferRefused,
)

__all__ = ["Consent", "Destination", "FileExists", "receive_entries", "refuse_to_replace"]

# Called with the files (as shown to people) a transfer would replace:
# returns to go ahead, raises FileExists (or another FreightError) to refuse.
Consent = Callable[[list[str]], Awaitable[None]]


def existing_files(paths: list[str]) -> str:
    more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
    return f"{paths[0]}{more} already exist{'s' if len(paths) == 1 else ''}"


async def refuse_to_replace(paths: list[str]) -> None:
    raise FileExists(f"{existing_files(paths)}; run again with --overwrite to replace")


# --- where a list lands ------------------------------------------------------------------


def place(kind: str | None, trailing_slash: bool, tops: list[tuple[str, str]], shown: str) -> bool:
    """``cp``'s rule for a destination path: True to put the list *into*
    it (a folder), False for its one top entry to *become* it. ``kind``
    is what the path is now: ``dir``, ``file`` (or anything else) or None."""
    if trailing_slash:
        if kind is None:
            raise UsageError(f"{shown}: no such folder")
        if kind != "dir":
            raise UsageError(f"{shown}: not a folder")
        return True
    if kind == "dir":
        return True
    if len(tops) != 1:
        raise UsageError(f"{shown}: no such folder (several sources go into a folder)")
    if kind is not None and tops[0][1] == "dir":
        raise UsageError(f"{shown} is a file: cannot replace it with a folder")
    return False


def _kind(st: os.stat_result | None) -> str | None:
    if st is None:
        return None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


@dataclass(frozen=True)
class Destination:
    """Where a received list goes. Made by :meth:`folder`, :meth:`local`
    or :meth:`beneath`; :meth:`open` applies the rules once the list is
    known and gives the folder to write in and the name its top entry
    takes (None: the names the sender gave)."""

    path: Path
    shown: str
    root: Path | None = None  # beneath: the root every step is taken from
    rel: tuple[str, ...] = ()
    cp_rules: bool = True
    trailing_slash: bool = False
    top_name: str | None = None

    @classmethod
    def folder(cls, path: Path) -> Destination:
        """``freight receive -o DIR``: into DIR, made if missing."""
        return cls(path, str(path), cp_rules=False)

    @classmethod
    def local(cls, raw: str, top_name: str | None = None) -> Destination:
        """``freight cp AGENT:SRC DEST``; ``top_name`` is the name SRC asked
        for, which the top entry takes whatever the agent calls it."""
        return cls(Path(raw), raw, trailing_slash=raw.endswith("/"), top_name=top_name or None)

    @classmethod
    def beneath(cls, root: Path, rel: PurePosixPath, raw: str) -> Destination:
        """``freight cp SRC… AGENT:PATH`` on the agent: PATH is ``root/rel``
        (checked inside the roots), reached without following links."""
        return cls(root / rel, raw, root, rel.parts, trailing_slash=raw.endswith("/"))

    def open(self, tops: list[tuple[str, str]]) -> tuple[Tree, str | None]:
        if not self.cp_rules:
            return Tree.open(self.path, create=True), None
        if self.root is None:
            return self._open_local(tops)
        if not self.rel:
            return Tree.open(self.root), self.top_name
        parent = Tree.beneath(self.root, self.rel[:-1])
        kept = False
        try:
            name = self.rel[-1]
            st = parent.lstat((name,))
            if st is not None and stat.S_ISLNK(st.st_mode):
                # The path was checked with every link resolved: one here
                # was put in since; it is not followed.
                raise UnsafePath(f"refusing to follow the symbolic link {self.path}")
            if place(_kind(st), self.trailing_slash, tops, self.shown):
                return parent.subtree((name,)), self.top_name
            kept = True
        finally:
            if not kept:
                parent.close()
        return parent, name

    def _open_local(self, tops: list[tuple[str, str]]) -> tuple[Tree, str | None]:
        try:
            st: os.stat_result | None = self.path.stat()  # a link to a folder is entered
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if place(_kind(st), self.trailing_slash, tops, self.shown):
            return Tree.open(self.path), self.top_name
        return Tree.open(self.path.parent), self.path.name


def _tops(entries: list[Entry]) -> list[tuple[str, str]]:
    """The distinct first components of the list, with their types."""
    kinds: dict[str, str] = {}
    for e in entries:
        first, sep, _ = e.path.partition("/")
        if sep:
            kinds.setdefault(first, "dir")
        else:
            kinds[first] = e.type
    return list(kinds.items())


def _rename_top(entries: list[Entry], name: str) -> None:
    """The one top entry (and what is under it) takes ``name``: ``cp
    AGENT:/data/a.bin ./b.bin``. A list with several tops is refused."""
    if len(_tops(entries)) != 1:
        raise TransferRefused("the sender's list has more than the one entry asked for")
    relative_parts(name)
    for e in entries:
        _, _, rest = e.path.partition("/")
        e.path = f"{name}/{rest}" if rest else name


# --- one file ------------------------------------------------------------------------


class _Incoming:
    """One file being written: ``name.freight-part`` next to its final place
    (a :class:`~freight.engine.partial.PartialFile` whose checkpoint is its
    own length: the sender checks the digest of what is held)."""

    def __init__(self, entry: Entry, tree: Tree, parts: tuple[str, ...]) -> None:
        self.entry = entry
        self.tree = tree
        self.parts = parts
        self.part = (*parts[:-1], parts[-1] + PART_SUFFIX)
        place = FolderPlace(tree, self.part, parts[-1], mode=entry.mode, shown=entry.path)
        self.file = PartialFile(place, LengthCheckpoints(place), entry.size)
        self.done = 0
        self.complete = ""  # digest of the finished copy already in place
        self.foreign = False  # something else stands where the file lands

    @property
    def shown(self) -> str:
        return str(self.tree.path(self.parts))

    def plan(self) -> tuple[int, str]:
        """(offset held, BLAKE3 of it), from this transfer's finished copy
        or its partial file; notes whether something else stands there."""
        e = self.entry
        st = self.tree.lstat(self.parts)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{self.shown} is a folder: cannot replace it with a file")
        own = same_file(st, e.size, e.mtime)
        self.foreign = st is not None and not own
        if own and self.tree.lstat(self.part) is None:
            digest = self._hash(self.parts)
            if digest is not None:
                self.complete, self.done = digest, e.size
                return e.size, digest
        pst = self.tree.lstat(self.part)
        if pst is not None and stat.S_ISREG(pst.st_mode) and pst.st_size <= e.size:
            digest = self._hash(self.part, pst.st_size)
            if digest is not None:
                self.done = pst.st_size
                return self.done, digest
        return 0, ""

    def _hash(self, parts: tuple[str, ...], upto: int | None = None) -> str | None:
        fd = self.tree.open_read(parts)  # a link planted there is not followed
        if fd is None:
            return None
        try:
            hasher, n = hash_fd(fd, upto)
        finally:
            os.close(fd)
        return str(hasher.hexdigest()) if upto is None or n == upto else None

    def write(self, offset: int, block: bytes | memoryview) -> None:
        f = self.file
        if not f.is_open:
            f.open_at(offset)  # from where the sender resumes: what is held
            self.complete = ""
        elif offset != f.done:
            raise TransferRefused(f"{self.entry.path}: data out of order")
        if offset + len(block) > self.entry.size:
            raise TransferRefused(f"{self.entry.path}: more data than announced")
        f.write(offset, block)
        self.done = f.done

    def finish(self, digest: str) -> None:
        e, f = self.entry, self.file
        if self.complete and not f.is_open:
            if self.complete != digest:
                raise TransferRefused(f"{self.shown}: existing file differs; remove it and retry")
            return
        if not f.is_open:  # nothing was needed: an empty file, or all held
            f.open_at(self.done)
        elif e.size >= SYNC_EACH:
            # Smaller files are made durable together by one sync before the
            # receiver confirms (a file per fsync would cost ~1 ms each); a
            # crash before that leaves files a resume re-checks by digest.
            f.sync()
        if f.done != e.size or not f.verify(digest)[0]:
            f.remove()
            raise TransferRefused(f"{e.path}: content does not match what was sent; run again")
        f.publish(e.mode, e.mtime)

    def write_whole(self, body: bytes, digest: str) -> None:
        """A small file in one go, checked before it is written: one create,
        fstat, write, fchmod, futimens, close and rename (a tree of small
        files is bound by system calls)."""
        e = self.entry
        if len(body) != e.size or digest_bytes(body) != digest:
            raise TransferRefused(f"{e.path}: content does not match what was sent; run again")
        self.file.put(body, e.mode, e.mtime)
        self.done = e.size

    def close(self) -> None:
        self.file.close()


# --- the transfer --------------------------------------------------------------------------


def _refuse(error: str) -> bytes:
    return wire.encode(wire.Verdict(ok=False, error=error))


async def receive_entries(
    conn: Connection,
    dest: Destination,
    reporter: Reporter,
    *,
    consent: Consent = refuse_to_replace,
    shaping: Shaping | None = None,
) -> Summary:
    """Receive a manifest and its files into ``dest``. ``shaping``: this
    end's rate (told to the sender, and kept to here too) and compression
    level (its choice over the sender's wish)."""
    shaping = shaping or Shaping()
    first = await conn.recv()
    if not first:
        raise TransferRefused("the sender closed the connection")
    try:
        manifest = wire.decode(first, wire.Manifest)
        entries = [Entry(w.path, w.type, w.mode, w.size, w.mtime) for w in manifest.entries]
        for e in entries:
            relative_parts(e.path)
    except (wire.MalformedTransfer, UnsafePath) as exc:
        await conn.send(_refuse(exc.message))
        raise TransferRefused(f"the sender's list of files is refused: {exc.message}") from None
    try:
        try:
            tree, rename = await asyncio.to_thread(dest.open, _tops(entries))
        except OSError as exc:
            raise StorageError(f"cannot write into {dest.shown}: {exc.strerror or exc}") from None
    except FreightError as exc:
        await conn.send(_refuse(exc.message))
        raise
    try:
        level = wire.choose_level(manifest.want, shaping.compress)
        summary = Summary(level=level, rate=shaping.rate)
        return await _receive_into(
            conn, tree, rename, entries, reporter, consent, summary, shaping.rate
        )
    finally:
        tree.close()


@contextlib.asynccontextmanager
async def _refusing_on_failure(conn: Connection, tree: Tree) -> AsyncIterator[None]:
    """Tell the sender why this end gives up (a typed error, or a disk
    that cannot be written), then raise it here too."""
    try:
        yield
    except FreightError as exc:
        await conn.send(_refuse(exc.message))
        raise
    except OSError as exc:
        error = StorageError(f"cannot write into {tree.shown}: {exc.strerror or exc}")
        await conn.send(_refuse(error.message))
        raise error from None


async def _receive_into(
    conn: Connection,
    tree: Tree,
    rename: str | None,
    entries: list[Entry],
    reporter: Reporter,
    consent: Consent,
    summary: Summary,
    rate: int,
) -> Summary:
    incoming: dict[int, _Incoming] = {}
    folders: list[tuple[tuple[str, ...], Entry]] = []
    async with _refusing_on_failure(conn, tree):
        if rename and entries:
            _rename_top(entries, rename)
        for index, e in enumerate(entries):
            parts = relative_parts(e.path)
            if e.type == "dir":
                folders.append((parts, e))
                summary.dirs += 1
            else:
                incoming[index] = _Incoming(e, tree, parts)
                summary.files += 1
                summary.bytes += e.size

        def plan() -> dict[int, tuple[int, str]]:
            for parts, _ in folders:
                st = tree.lstat(parts)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    tree.folder(parts)  # says why: a link, or a file
            return {i: inc.plan() for i, inc in incoming.items()}

        planned = await asyncio.to_thread(plan)
        foreign = [inc.shown for inc in incoming.values() if inc.foreign]
        if foreign:
            await consent(foreign)
        await asyncio.to_thread(lambda: [tree.folder(p, create=True) for p, _ in folders])
    have = [planned.get(index, (0, "")) for index in range(len(entries))]
    set_totals = getattr(reporter, "set_totals", None)
    if set_totals is not None:
        set_totals(summary.bytes, summary.files)
    await conn.send(wire.encode(wire.Holdings(have=have, level=summary.level, rate=rate)))
    try:
        async with _refusing_on_failure(conn, tree):
            await _receive_files(conn, incoming, reporter, summary, tree, Pacer(rate))

            def finish_folders() -> None:
                for parts, e in reversed(folders):
                    tree.finish_folder(parts, e.mode, e.mtime)

            await asyncio.to_thread(finish_folders)
    finally:
        for inc in incoming.values():
            inc.close()
    await conn.send(wire.encode(wire.Verdict(ok=True, files=summary.files, bytes=summary.bytes)))
    return summary


_BatchItem = tuple[int, _Incoming, bytes, str, bool]


def _parse_batch(data: bytes, incoming: dict[int, _Incoming]) -> list[_BatchItem]:
    """The files of a ``B`` message, each checked against the list."""
    try:
        files = wire.decode_batch(data)
    except wire.MalformedTransfer as exc:
        raise TransferRefused(f"the sender sent a {exc.message}") from None
    items: list[_BatchItem] = []
    for f in files:
        inc = incoming.get(f.index)
        if inc is None:
            raise TransferRefused("data for a file that is not in the list")
        if not f.held and len(f.body) != inc.entry.size:
            raise TransferRefused(f"{inc.entry.path}: size differs from the list")
        items.append((f.index, inc, f.body, f.digest.hex(), f.held))
    return items


def _finish_batch(items: list[_BatchItem]) -> None:
    """Write and finish each small file (in the disk thread)."""
    for _, inc, body, digest, held in items:
        if held:
            inc.finish(digest)
        else:
            inc.write_whole(body, digest)


async def _receive_files(
    conn: Connection,
    incoming: dict[int, _Incoming],
    reporter: Reporter,
    summary: Summary,
    tree: Tree,
    pacer: Pacer,
) -> None:
    # The disk works in one thread, in order, while the next records arrive.
    writer = WriteBehind(READ_AHEAD * 2 * CHUNK)
    try:
        await _receive_loop(conn, incoming, reporter, summary, writer, tree, pacer)
    except wire.MalformedTransfer as exc:
        raise TransferRefused(exc.message) from None
    finally:
        await writer.aclose()


async def _receive_loop(
    conn: Connection,
    incoming: dict[int, _Incoming],
    reporter: Reporter,
    summary: Summary,
    writer: WriteBehind,
    tree: Tree,
    pacer: Pacer,
) -> None:
    started: set[int] = set()
    while True:
        data = await conn.recv()
        if not data:
            raise TransferRefused("the sender closed the connection before the end")
        kind = data[:1]
        if kind in (b"F", b"B"):
            summary.wire += len(data)
        elif kind == b"X":
            if summary.level == "none":
                raise TransferRefused("the sender compressed data this end did not ask for")
            summary.wire += len(data)
            data = await asyncio.to_thread(wire.unpack, data)
            kind = data[:1]
        if kind == b"F":
            index, offset, block = wire.decode_chunk(data)
            inc = incoming.get(index)
            if inc is None:
                raise TransferRefused("data for a file that is not in the list")
            # This end's limit holds even against a sender that ignores it:
            # what is not taken is not acknowledged, which slows the sender.
            await pacer.pace(len(block))
            if index not in started:
                started.add(index)
                reporter.start(inc.entry.path, inc.entry.size)
                summary.resumed += offset
            await writer.submit(inc.write, offset, block, size=len(block))
            summary.sent += len(block)
            reporter.update(inc.entry.path, offset + len(block))
        elif kind == b"E":
            end = wire.decode(data, wire.FileEnd)
            inc = incoming.get(end.index)
            if inc is None:
                raise TransferRefused("end of a file that is not in the list")
            if end.index not in started:
                summary.resumed += inc.done
            # Not awaited: the next files arrive while this one is finished;
            # a failure surfaces at the next submit or at the end.
            await writer.submit(inc.finish, end.digest)
            reporter.update(inc.entry.path, inc.entry.size)
            reporter.finish(inc.entry.path, None)
        elif kind == b"B":
            items = _parse_batch(data, incoming)
            await pacer.pace(sum(len(body) for _, _, body, _, _ in items))
            for index, inc, body, _, held in items:
                started.add(index)
                reporter.start(inc.entry.path, inc.entry.size)
                if held:
                    summary.resumed += inc.entry.size
                summary.sent += len(body)
            await writer.submit(_finish_batch, items, size=len(data))
            for _, inc, _, _, _ in items:
                reporter.update(inc.entry.path, inc.entry.size)
                reporter.finish(inc.entry.path, None)
        elif kind == b"Z":
            # After every finish (raises a failure): small files reach the
            # disk together before the receiver confirms.
            await writer.call(sync_filesystem, tree.fd)
            return
        else:
            raise TransferRefused(f"unexpected message {kind!r} from the sender")
