"""The agent's incremental scanner: which files under its roots it offers to
the hub for deduplicated collection, each with its BLAKE3 digest.

Hashing is the expensive part, so a persistent :class:`ScanCache` remembers
``(size, mtime_ns, inode) -> digest`` per path; a file whose stat still
matches reuses its digest without being opened, which is what makes a
rescan of 100,000 unchanged files take well under a second (see
``bench/scan.py``). Everything here is synchronous and network-free: the
daemon runs :func:`scan` in a worker thread and sends the result itself.

Safety rules, because the roots are the only thing an admin allowed:

* symbolic links are never followed, neither files nor folders (a link
  could point out of the root); only regular files are offered;
* files are opened with ``O_NOFOLLOW | O_NONBLOCK``, so a file swapped for
  a link or a FIFO between listing and hashing is refused, not followed or
  waited on;
* a file that changes while it is hashed is not offered this time (its
  digest could describe bytes that never existed together);
* a file modified within :data:`RACY_WINDOW` of being hashed is offered but
  re-hashed on the next scan: a later same-size write inside the same
  timestamp tick would otherwise keep its stale digest forever (git's
  "racily clean" problem).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.hashing import digest_file

RACY_WINDOW = 2.0  # seconds; see the module docstring
_RACY_MTIME = -1  # cached mtime_ns meaning "verify next time": never equals a real stat


@dataclass(frozen=True, slots=True)
class Found:
    """A regular file offered to the hub."""

    path: str  # absolute, as found under a root (links inside a root are never followed)
    size: int
    mtime: float
    digest: str  # BLAKE3, 64 hex digits


@dataclass(slots=True)
class ScanResult:
    """What one :func:`scan` saw; ``errors`` are human-readable, one per problem."""

    found: list[Found] = field(default_factory=list)
    hashed: int = 0  # files read and hashed this time (the rest reused cached digests)
    hashed_bytes: int = 0
    skipped_large: int = 0  # matching files above max_size
    errors: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # cached paths that no longer exist


# ------------------------------------------------------------------- globs


def _segment_regex(seg: str) -> str:
    """One path component of a glob: ``*``/``?``/``[...]`` never match ``/``."""
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            while i < n and seg[i] == "*":  # "a**b" inside a component is just "*"
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i < n:  # escape: "\*" is a literal star
            out.append(re.escape(seg[i]))
            i += 1
        elif c == "[":
            j = i
            if j < n and seg[j] in "!^":
                j += 1
            if j < n and seg[j] == "]":  # "[]x]": a leading ] is literal
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:  # unclosed: a literal "["
                out.append(re.escape(c))
                continue
            body, i = seg[i:j], j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            # Keep ranges (a-z); escape what re would read as escapes, nested
            # sets or set operations.
            body = re.sub(r"([\\\[\]&~|])", r"\\\1", body)
            out.append(f"[^/{body}]" if negate else f"[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _segments_regex(segs: Sequence[str]) -> str:
    parts: list[str] = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            # Whole-component "**": any number of folders, including none.
            # Last, it is "everything below" (at least one character: a file).
            parts.append(".+" if last else "(?:.*/)?")
        else:
            parts.append(_segment_regex(seg) + ("" if last else "/"))
    return "".join(parts)


def _split(pattern: str) -> list[str]:
    if not pattern or not pattern.strip("/"):
        raise ValueError(f"empty glob pattern {pattern!r}")
    segs = pattern.lstrip("/").split("/")
    if segs[-1] == "":  # "photos/" means everything inside the folder photos
        segs[-1] = "**"
    out: list[str] = []
    for s in segs:
        if s == "" or (s == "**" and out[-1:] == ["**"]):
            continue  # "a//b" is "a/b"; "**/**" is "**"
        out.append(s)
    return out


def glob_to_regex(pattern: str) -> str:
    """The regex source (for ``re.fullmatch`` with DOTALL) of a glob that is
    matched against a file's path relative to its root, with ``/`` separators.

    Anchored at the root: ``*.png`` matches ``a.png`` but not ``x/a.png``.
    ``*``, ``?`` and ``[...]`` stay within one folder level, while ``**`` as a
    whole component spans any number of folders, including none
    (``**/*.jpg`` matches ``a.jpg`` and ``x/y/a.jpg``; ``photos/**`` everything
    inside ``photos``). A trailing ``/`` means ``/**``, a leading ``/`` is
    ignored, ``\\`` escapes the next character, matching is case-sensitive.
    fnmatch is not used because its ``*`` crosses ``/``.
    """
    return _segments_regex(_split(pattern))


def compile_glob(pattern: str) -> re.Pattern[str]:
    """:func:`glob_to_regex`, compiled; ValueError for a broken pattern."""
    try:
        return re.compile(glob_to_regex(pattern), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad glob pattern {pattern!r}: {exc}") from None


class GlobSet:
    """Several globs compiled into one regex, so each path costs one match
    call however many patterns there are."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        for p in self.patterns:
            compile_glob(p)  # a clear error naming the broken pattern
        sources = [glob_to_regex(p) for p in self.patterns]
        self._match = (
            re.compile("|".join(f"(?:{s})" for s in sources), re.DOTALL).fullmatch
            if sources
            else None
        )
        # Patterns ending in "/**" (or "**" alone) match every file below a
        # folder their prefix matches: such folders need not be walked at all.
        prefixes: list[str] = []
        for p in self.patterns:
            segs = _split(p)
            if segs[-1] == "**":
                prefixes.append(_segments_regex(segs[:-1]) if len(segs) > 1 else ".*")
        self._covers = (
            re.compile("|".join(f"(?:{s})" for s in prefixes), re.DOTALL).fullmatch
            if prefixes
            else None
        )

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, rel: str) -> bool:
        """Whether the root-relative POSIX path ``rel`` matches any pattern."""
        return self._match is not None and self._match(rel) is not None

    def covers_dir(self, rel_dir: str) -> bool:
        """True only if every file below the folder ``rel_dir`` matches."""
        return self._covers is not None and self._covers(rel_dir) is not None


# ------------------------------------------------------------------- hashing


def blake3_file(path: str) -> str:
    """BLAKE3 hex digest of a regular file (:func:`freight.engine.hashing.digest_file`:
    opened without following links or blocking, so a path swapped for a link or
    a FIFO since it was listed fails instead; big files use blake3's threads)."""
    return digest_file(path)


# ------------------------------------------------------------------- cache

CacheRow = tuple[int, int, int, str]  # size, mtime_ns (or _RACY_MTIME), st_ino, digest

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,   -- os.fsencode(path): names need not be UTF-8
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,  -- signed 64-bit view of st_ino
    digest TEXT NOT NULL
) WITHOUT ROWID
"""


_U64 = (1 << 64) - 1


def _ino64(ino: int) -> int:
    """st_ino is unsigned 64-bit on some filesystems; SQLite integers are signed."""
    return ino - (1 << 64) if ino >= 1 << 63 else ino


def _root_bounds(root: str) -> tuple[bytes, bytes]:
    """Blob range holding exactly the paths below ``root`` ("0" follows "/")."""
    prefix = os.fsencode(root.rstrip("/"))
    return prefix + b"/", prefix + b"0"


class ScanCache:
    """Digests of files already hashed, in SQLite at ``path``, so rescans and
    agent restarts re-read only what changed.

    It is only a cache: a database that SQLite cannot read, or one with an
    older schema, is set aside (``.corrupt``) or rebuilt instead of failing
    the agent. WAL with ``synchronous=NORMAL``: a power cut may lose the last
    scan's rows (they are re-hashed), never the file. Safe to share between
    threads; calls are serialised.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.OperationalError:
            raise  # locked, unwritable folder...: not the file's fault, leave it alone
        except sqlite3.DatabaseError:
            # "file is not a database", "malformed": keep it for inspection, start over.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            os.replace(self.path, f"{self.path}.corrupt")
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version != _SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS files")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            db.execute("SELECT 1 FROM files LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def load(self, roots: Iterable[str]) -> dict[str, CacheRow]:
        """Every cached row below the given absolute roots, in one SELECT per
        root: a dict lookup per file is far cheaper than a query per file."""
        out: dict[str, CacheRow] = {}
        # os.fsdecode, inlined: 100,000 calls of its wrapper cost ~0.1 s per scan.
        enc, errs = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        with self._lock:
            for root in roots:
                lo, hi = _root_bounds(root)
                rows = self._db.execute(
                    "SELECT path, size, mtime_ns, inode, digest FROM files"
                    " WHERE path >= ? AND path < ?",
                    (lo, hi),
                )
                for p, size, mtime_ns, inode, digest in rows:
                    out[p.decode(enc, errs)] = (size, mtime_ns, inode & _U64, digest)
        return out

    def apply(self, upserts: Sequence[tuple[str, CacheRow]], deletes: Sequence[str]) -> None:
        """Write one scan's changes in a single transaction (bulk executemany):
        per-row commits would cost an fsync each."""
        if not upserts and not deletes:
            return
        fsencode = os.fsencode
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            committed = False
            try:
                self._db.executemany(
                    "INSERT INTO files(path, size, mtime_ns, inode, digest)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                    " size=excluded.size, mtime_ns=excluded.mtime_ns,"
                    " inode=excluded.inode, digest=excluded.digest",
                    [(fsencode(p), s, m, _ino64(i), d) for p, (s, m, i, d) in upserts],
                )
                self._db.executemany(
                    "DELETE FROM files WHERE path = ?", [(fsencode(p),) for p in deletes]
                )
                committed = True
            finally:
                self._db.execute("COMMIT" if committed else "ROLLBACK")

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM files").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ScanCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- scan


def _norm_roots(roots: Sequence[str | os.PathLike[str]]) -> list[str]:
    out: list[str] = []
    for r in roots:
        a = os.path.abspath(os.fspath(r))
        if a not in out:
            out.append(a)
    return out


def _real_below(path: str, root: str, rel: str) -> bool:
    """Whether ``path``'s folder is reached from ``root`` without a symlink."""
    real_root = os.path.realpath(root)
    expected = os.path.dirname(os.path.join(real_root, rel))
    return os.path.realpath(os.path.dirname(path)) == expected


def scan(
    roots: Sequence[str | os.PathLike[str]],
    include: Sequence[str],
    exclude: Sequence[str],
    max_size: int,
    cache: ScanCache,
    *,
    hash_file: Callable[[str], str] = blake3_file,
    racy_window: float = RACY_WINDOW,
) -> ScanResult:
    """Walk ``roots`` and return every regular file to offer, with digests.

    ``include``/``exclude`` are globs (:func:`glob_to_regex`) matched against
    the path relative to its root; an empty ``include`` means everything and
    ``exclude`` wins. ``max_size`` 0 means no limit; bigger files are counted
    in ``skipped_large``. Files whose (size, mtime_ns, inode) match the cache
    reuse the cached digest unread; the others go through ``hash_file`` (a
    parameter so tests can interfere mid-hash), are re-stat'ed, and are
    dropped with an error if they changed meanwhile.

    ``removed`` lists cached paths below these roots that no longer exist as
    regular files reachable without links, except below a root that could
    not be listed at all (an unmounted disk is not a mass deletion); their
    rows are then dropped, so each is reported once. Rows of files that still
    exist are kept even when this scan filters them out: several policies
    with different globs share one cache, and forgetting each other's
    digests would make them re-hash each other's files on every scan. Under
    a folder an exclude pruned, this scan did not look, so it neither keeps
    nor reports anything there: the next scan that walks it does. Unreadable
    folders and files are skipped and reported in ``errors``.

    Walks with ``os.scandir`` and an explicit stack (``os.walk`` builds lists
    and recurses for nothing here), stats with ``DirEntry.stat
    (follow_symlinks=False)``, loads the cache in one SELECT per root and
    writes only changed rows, in one transaction.
    """
    inc, exc = GlobSet(include), GlobSet(exclude)
    root_list = _norm_roots(roots)
    result = ScanResult()
    found, errors = result.found, result.errors
    cached = cache.load(root_list)
    upserts: list[tuple[str, CacheRow]] = []
    offered: set[str] = set()
    # For the cached paths not offered this time, whether they still exist:
    listed: set[str] = set()  # folders listed to the end without an error
    present: set[str] = set()  # seen, but filtered out, unreadable or changing
    unlisted_roots: list[str] = []
    racy_ns = int(racy_window * 1e9)
    S_ISREG = stat.S_ISREG

    for root in root_list:
        stack: list[tuple[str, str]] = [(root, "")]  # (folder, its path relative to root + "/")
        while stack:
            folder, rel_dir = stack.pop()
            try:
                it = os.scandir(folder)
            except OSError as e:
                errors.append(f"{folder}: cannot list folder: {e.strerror or e}")
                if not rel_dir:
                    unlisted_roots.append(root)
                continue
            complete = True
            with it:
                while True:
                    try:
                        entry = next(it)
                    except StopIteration:
                        break
                    except OSError as e:
                        errors.append(f"{folder}: listing stopped: {e.strerror or e}")
                        complete = False
                        break
                    rel = rel_dir + entry.name
                    path = entry.path
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not exc.covers_dir(rel):
                                stack.append((path, rel + "/"))
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue  # symlinks, FIFOs, sockets, devices: never offered
                    except OSError as e:
                        errors.append(f"{path}: cannot stat: {e.strerror or e}")
                        present.add(path)
                        continue
                    if (inc and not inc.match(rel)) or (exc and exc.match(rel)):
                        if path in cached:
                            present.add(path)
                        continue
                    if path in offered:
                        continue  # roots nested in each other: offered once
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError as e:
                        errors.append(f"{path}: cannot stat: {e.strerror or e}")
                        present.add(path)
                        continue
                    size = st.st_size
                    if max_size and size > max_size:
                        result.skipped_large += 1
                        if path in cached:
                            present.add(path)
                        continue
                    mtime_ns, ino = st.st_mtime_ns, st.st_ino
                    row = cached.get(path)
                    if row is not None and row[0] == size and row[1] == mtime_ns and row[2] == ino:
                        digest = row[3]
                    else:
                        try:
                            digest = hash_file(path)
                            after = os.stat(path, follow_symlinks=False)
                        except OSError as e:
                            errors.append(f"{path}: cannot read: {e.strerror or e}")
                            present.add(path)
                            continue
                        if (
                            after.st_size != size
                            or after.st_mtime_ns != mtime_ns
                            or after.st_ino != ino
                            or not S_ISREG(after.st_mode)
                        ):
                            errors.append(
                                f"{path}: changed while being hashed (size or mtime differ"
                                " before and after); not offered this time"
                            )
                            present.add(path)
                            continue
                        result.hashed += 1
                        result.hashed_bytes += size
                        stored_mtime = mtime_ns
                        if abs(time.time_ns() - mtime_ns) < racy_ns:
                            stored_mtime = _RACY_MTIME  # re-hash next time
                        upserts.append((path, (size, stored_mtime, ino, digest)))
                    offered.add(path)
                    found.append(Found(path, size, st.st_mtime, digest))
            if complete:
                listed.add(folder)

    deletes: list[str] = []
    skip = tuple(r.rstrip("/") + "/" for r in unlisted_roots)
    for path in cached.keys() - offered:
        if path in present or (skip and path.startswith(skip)):
            continue  # still there, or its root could not be listed: kept
        if os.path.dirname(path) in listed:
            gone = True  # its folder was read to the end without it
        elif exc and exc.match(_relative(path, root_list)):
            continue  # in a folder pruned by an exclude: not looked at
        else:
            gone = _gone(path, root_list)  # folder unreadable, vanished, a link now...
        if gone:
            result.removed.append(path)
            deletes.append(path)
    cache.apply(upserts, deletes)
    found.sort(key=lambda f: f.path)
    result.removed.sort()
    return result


def _gone(path: str, roots: Sequence[str]) -> bool:
    """For a cached file whose folder was not listed this time (unreadable,
    vanished, replaced by a link): whether it no longer exists as a regular
    file reachable from its root without links. A folder read to the end
    answers that without this lstat, so it is rare."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # e.g. a folder above it is unreadable: not known to be gone
    if not stat.S_ISREG(st.st_mode):
        return True
    for root in roots:
        prefix = root if root.endswith("/") else root + "/"
        if path.startswith(prefix):
            return not _real_below(path, root, path[len(prefix) :])
    return False


def _relative(path: str, roots: Sequence[str]) -> str:
    for root in roots:
        prefix = root if root.endswith("/") else root + "/"
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path
