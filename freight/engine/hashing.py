"""BLAKE3, once: a running hasher fed as bytes pass, the digest of a
prefix of an open file (to resume), and the digest of a whole file.

Big inputs use blake3's own thread pool, which pays off only once there is
enough input to split; the hashing releases the GIL, so callers run the
file helpers in a worker thread (``asyncio.to_thread``) and the event loop
goes on meanwhile.
"""

from __future__ import annotations

import os
import stat

import blake3

from ..errors import FreightError

Hasher = blake3.blake3
BLOCK = 1 << 20  # read size of the file helpers
THREADED_MIN = 16 << 20  # inputs at least this big use blake3's thread pool
_NOFOLLOW = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def new_hasher(expected: int = 0, *, threaded: bool | None = None) -> Hasher:
    """A running hasher, using blake3's threads if ``threaded`` (by default
    when ``expected`` is at least THREADED_MIN bytes)."""
    if threaded or (threaded is None and expected >= THREADED_MIN):
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3()


def digest_bytes(data: bytes | memoryview) -> str:
    """Hex digest of bytes in memory."""
    return blake3.blake3(data).hexdigest()


def hash_fd(
    fd: int, upto: int | None = None, *, start: int = 0, threaded: bool | None = None
) -> tuple[Hasher, int]:
    """A hasher over the bytes of ``fd`` from ``start`` up to offset
    ``upto`` (to the end if None), read with ``pread`` (the file position
    is untouched); and the offset it reached, short of ``upto`` at EOF."""
    h = new_hasher((os.fstat(fd).st_size if upto is None else upto) - start, threaded=threaded)
    pos = start
    while upto is None or pos < upto:
        block = os.pread(fd, BLOCK if upto is None else min(BLOCK, upto - pos), pos)
        if not block:
            break
        h.update(block)
        pos += len(block)
    return h, pos


def hash_prefix(fd: int, length: int) -> Hasher:
    """The hasher over exactly the first ``length`` bytes of ``fd``, ready
    to be fed what follows (with blake3's threads: it goes on with a
    stream's bytes); a file shorter than that is an error."""
    h, reached = hash_fd(fd, length, threaded=True)
    if reached < length:
        raise FreightError(f"file shorter than {length} bytes while hashing")
    return h


def digest_file(path: str | os.PathLike[str]) -> str:
    """Hex digest of a regular file, opened without following a link or
    blocking (a path swapped for a link or a FIFO fails instead)."""
    fd = os.open(path, _NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{os.fspath(path)}: not a regular file any more")
        return digest_fd(fd, st.st_size)
    finally:
        os.close(fd)


def digest_fd(fd: int, size: int = -1) -> str:
    """Hex digest of an open file from its start to its end (``size`` only
    chooses threads or not, and lets a small file be read in one call)."""
    if 0 <= size < BLOCK:
        data = os.pread(fd, size + 1, 0)
        if len(data) <= size:
            return blake3.blake3(data).hexdigest()
        return hash_fd(fd)[0].hexdigest()  # grew since its size was taken
    h = new_hasher(size)
    pos = 0
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    while n := os.preadv(fd, [buf], pos):
        h.update(view[:n])
        pos += n
    return h.hexdigest()
