"""Writing received files without following links.

A receiver writes what a peer names, and an agent often runs with more
rights than its peer, so no path below a destination folder is ever
resolved by the kernel from the top: the destination is opened once and
every folder and file under it is reached from its parent's descriptor
(``dir_fd=``) with ``O_NOFOLLOW``. A symbolic link that stands (or is
swapped in, after any check) where a folder or file lands is refused,
never followed; modes and times are set on open descriptors (``fchmod``,
``futimens``), never through a name; files are checked to be regular after
opening; and only the permission bits ``0o777`` of a sender's mode are
kept (no setuid, setgid or sticky bit).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError

PERMISSIONS = 0o777
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted where a file lands must not block the open;
# it is then refused because it is not a regular file.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_OPEN_FOLDERS = 64  # folder descriptors kept open per destination
MTIME_SLACK = 1e-3  # a finished copy's time matches the sender's within this

# The process's umask, read once at start-up (reading it means setting it):
# a file created 0600 while incomplete gets the usual mode when finished.
_UMASK = os.umask(0o077)
os.umask(_UMASK)
DEFAULT_FILE_MODE = 0o666 & ~_UMASK


class UnsafePath(UsageError):
    """A path in the list would leave the destination folder."""

    code = "unsafe_path"


class FileExists(UsageError):
    """A file that is not this transfer's own stands where one would land."""

    code = "file_exists"


def same_file(st: os.stat_result | None, size: int, mtime: float) -> bool:
    """Is ``st`` a regular file of this size and modification time (a
    transfer's own finished copy)?"""
    return (
        st is not None
        and stat.S_ISREG(st.st_mode)
        and st.st_size == size
        and abs(st.st_mtime - mtime) < MTIME_SLACK
    )


def relative_parts(rel: str) -> tuple[str, ...]:
    """The components of a relative POSIX path from a peer, or UnsafePath
    for absolute paths, ``..``, ``.``, empty parts, NUL and backslashes."""
    if (
        not rel
        or "\0" in rel
        or "\\" in rel
        or rel.startswith("/")
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise UnsafePath(f"refusing {rel!r}: it would leave the destination folder")
    return tuple(rel.split("/"))


class Tree:
    """A destination folder held open; what is below it is reached only
    through descriptors (see the module docstring). Folder descriptors are
    cached (at most :data:`MAX_OPEN_FOLDERS`), so a tree of small files
    opens each folder once. Not thread-safe: one thread at a time."""

    def __init__(self, fd: int, shown: Path) -> None:
        self.fd = fd  # the folder itself (any thread may use it, e.g. for syncfs)
        self.shown = shown
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict({(): fd})

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> Tree:
        """The folder ``path`` itself, links in it followed: it is the
        caller's own choice (``-o ~/link-to-disk``)."""
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
            return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such folder") from None
        except (NotADirectoryError, FileExistsError):
            raise UsageError(f"{path}: not a folder") from None

    @classmethod
    def beneath(cls, root: Path, parts: Sequence[str], *, create: bool = False) -> Tree:
        """The folder ``root/parts…``, reached from ``root`` without
        following any link (an agent's root and a path checked inside it)."""
        top = cls.open(root)
        try:
            return top.subtree(tuple(parts), create=create)
        finally:
            top.close()

    def subtree(self, parts: tuple[str, ...], *, create: bool = False) -> Tree:
        fd = self.folder(parts, create=create, missing_ok=False)
        return Tree(os.dup(fd), self.path(parts))

    def path(self, parts: Sequence[str]) -> Path:
        """For messages only: never opened by name."""
        return self.shown.joinpath(*parts)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    # --- folders ------------------------------------------------------------------

    def folder(
        self, parts: tuple[str, ...], *, create: bool = False, missing_ok: bool = True
    ) -> int:
        """The descriptor of folder ``parts`` (the cache owns it: use it at
        once, before asking for another). Missing: made when ``create``,
        else FileNotFoundError (or UsageError unless ``missing_ok``)."""
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        parent = self.folder(parts[:-1], create=create, missing_ok=missing_ok)
        name = parts[-1]
        try:
            try:
                fd = os.open(name, _FOLDER, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                # Made meanwhile, or a link: the open below tells.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=parent)
                fd = os.open(name, _FOLDER, dir_fd=parent)
        except FileNotFoundError:
            if missing_ok:
                raise
            raise UsageError(f"{self.path(parts)}: no such folder") from None
        except OSError as exc:
            raise self._refusal(parts, exc) from None
        self._fds[parts] = fd
        if len(self._fds) > MAX_OPEN_FOLDERS:
            oldest = next(k for k in self._fds if k)  # never the root
            os.close(self._fds.pop(oldest))
        return fd

    def _refusal(self, parts: tuple[str, ...], exc: OSError) -> Exception:
        """The error for an open refused with O_NOFOLLOW (ELOOP) or
        O_DIRECTORY (ENOTDIR, also given for a link to a folder)."""
        where = self.path(parts)
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return exc
        st = self.lstat(parts)
        if exc.errno == errno.ELOOP or (st is not None and stat.S_ISLNK(st.st_mode)):
            return UnsafePath(f"refusing to follow the symbolic link {where}")
        return UsageError(f"{where} is not a folder")

    def finish_folder(self, parts: tuple[str, ...], mode: int, mtime: float) -> None:
        fd = self.folder(parts)
        os.fchmod(fd, mode & PERMISSIONS)
        os.utime(fd, (mtime, mtime))

    # --- files ----------------------------------------------------------------------

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """What stands at ``parts`` (a link is not followed), None if nothing."""
        try:
            parent = self.folder(parts[:-1])
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_read(self, parts: tuple[str, ...]) -> int | None:
        """A descriptor of the regular file at ``parts``; None for anything
        else (missing, a link, a FIFO)."""
        try:
            fd = os.open(parts[-1], _READ, dir_fd=self.folder(parts[:-1]))
        except OSError:  # missing, a link (ELOOP), unreadable
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def open_write(self, parts: tuple[str, ...], *, truncate: bool = False) -> int:
        """A regular file at ``parts`` for reading and writing, created
        ``0600`` (and its folders) if missing; anything else is refused."""
        parent = self.folder(parts[:-1], create=True)
        flags = _WRITE | (os.O_TRUNC if truncate else 0)
        try:
            fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
        except OSError as exc:
            raise self._refusal(parts, exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"refusing to write {self.path(parts)}: not a regular file")
        return fd

    def publish(
        self, fd: int, part: tuple[str, ...], name: str, mode: int, mtime: float | None
    ) -> None:
        """Give the file open as ``fd`` its mode and time, close it and
        rename it from ``part`` to ``name`` in the same folder (a rename
        replaces a link that stands there, never what it points to)."""
        try:
            os.fchmod(fd, mode & PERMISSIONS)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        parent = self.folder(part[:-1])
        os.replace(part[-1], name, src_dir_fd=parent, dst_dir_fd=parent)

    def unlink(self, parts: tuple[str, ...]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parts[-1], dir_fd=self.folder(parts[:-1]))
