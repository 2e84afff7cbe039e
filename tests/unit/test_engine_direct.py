"""Large files around the page cache: whatever the split of the writes, the
file ends up holding exactly the bytes written once they are flushed; a
checkpoint's sync makes every written byte durable (nothing waits in the
buffer); a resume at an unaligned checkpoint goes on from there; a file
system without O_DIRECT falls back to ordinary writes; direct reads return
exactly the bytes asked for, short at the end of the file."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import blake3
import pytest

from freight.engine.direct import (
    ALIGN,
    DIRECT_MIN,
    STAGE_BYTES,
    DirectWriter,
    direct_reader,
)
from freight.engine.partial import LengthCheckpoints, PartialFile, PathPlace

BIG = os.urandom(DIRECT_MIN + 3 * ALIGN + 123)


def _writer(path: Path, offset: int = 0) -> tuple[int, DirectWriter]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    w = DirectWriter.open(fd, offset)
    if w is None:
        os.close(fd)
        pytest.skip("no O_DIRECT on this file system")
    return fd, w


def test_any_split_of_writes_lands_exactly(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = BIG[: 3 * STAGE_BYTES // 2]
    fd, w = _writer(tmp_path / "f")
    try:
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 100, ALIGN - 1, ALIGN, 65_536, 1 << 20, STAGE_BYTES + 5])
            w.write(pos, data[pos : pos + n])
            pos = min(len(data), pos + n)
        assert w.end == len(data)
        # Whole blocks only (some may still be on their way), the rest after a flush.
        held = os.fstat(fd).st_size
        assert held % ALIGN == 0 and held <= len(data)
        w.flush()
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        w.close()
        os.close(fd)


def test_restart_at_an_unaligned_offset_keeps_what_is_held(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(BIG[:10_000])
    fd, w = _writer(path, 10_000)
    try:
        w.write(10_000, BIG[10_000:])
        w.flush()
        assert os.pread(fd, len(BIG) + 1, 0) == BIG
        w.write(5000, b"x" * 10)  # out of order: flushed, restarted there
        w.flush()
        assert os.pread(fd, 5010, 0) == BIG[:5000] + b"x" * 10
    finally:
        w.close()
        os.close(fd)


def test_flush_from_another_thread_while_writing(tmp_path: Path) -> None:
    fd, w = _writer(tmp_path / "f")
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            w.flush()
            os.fsync(fd)

    t = threading.Thread(target=flusher)
    t.start()
    try:
        for pos in range(0, len(BIG), 10_007):
            w.write(pos, BIG[pos : pos + 10_007])
    finally:
        stop.set()
        t.join(timeout=30)
    w.flush()
    try:
        assert os.pread(fd, len(BIG) + 1, 0) == BIG
    finally:
        w.close()
        os.close(fd)


def test_a_write_the_kernel_refuses_falls_back_to_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 1000 bytes are misaligned for any device: the kernel refuses
    the first direct write (EINVAL) and the writer goes on without it."""
    import freight.engine.direct as direct

    monkeypatch.setattr(direct, "ALIGN", 1000)
    fd, w = _writer(tmp_path / "f")
    try:
        for pos in range(0, len(BIG), 300_001):
            w.write(pos, BIG[pos : pos + 300_001])
        w.flush()
        assert os.pread(fd, len(BIG) + 1, 0) == BIG
    finally:
        w.close()
        os.close(fd)


def test_direct_reads_return_the_bytes_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(BIG)
    fd = os.open(path, os.O_RDONLY)
    try:
        read = direct_reader(fd)
        if read is None:
            pytest.skip("no O_DIRECT on this file system")
        try:
            for offset, n in [(0, 1 << 20), (1, 100), (ALIGN - 1, 2), (12_345, 1 << 20)]:
                assert read(offset, n) == BIG[offset : offset + n]
            assert read(len(BIG) - 10, 1 << 20) == BIG[-10:]  # short at the end
            assert read(len(BIG), 100) == b""
        finally:
            read.close()
    finally:
        os.close(fd)


async def test_a_partial_checkpoint_leaves_nothing_in_the_buffer(tmp_path: Path) -> None:
    """What a checkpoint acknowledges is in the file, even the bytes short
    of a block; a resume from it continues the same digest."""
    place = PathPlace(tmp_path / "p" / "f.part", tmp_path / "f", shown="f")
    f = PartialFile(place, LengthCheckpoints(place), len(BIG))
    assert await f.resume() == 0
    cut = DIRECT_MIN // 2 + 777
    f.write(0, BIG[:cut])
    await f.checkpoint(cut)
    assert (tmp_path / "p" / "f.part").read_bytes() == BIG[:cut]
    f.close()  # a crash-like stop after the checkpoint
    f2 = PartialFile(place, LengthCheckpoints(place), len(BIG))
    assert await f2.resume() == cut
    f2.write(cut, BIG[cut:])
    digest = blake3.blake3(BIG).hexdigest()
    assert await f2.finish(digest) == (True, digest)
    assert (tmp_path / "f").read_bytes() == BIG


def test_a_failed_block_fails_every_later_write_and_flush(tmp_path: Path) -> None:
    """A block the disk refused leaves a hole: nothing after it may be
    reported written (a checkpoint would acknowledge the hole). Here the
    direct descriptor is read-only, so the kernel refuses the block (EBADF)."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    probe = DirectWriter.open(fd, 0)
    if probe is None:
        os.close(fd)
        pytest.skip("no O_DIRECT on this file system")
    probe.close()
    w = DirectWriter(fd, os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0)), 0)
    try:
        w.write(0, BIG[: 2 << 20])  # hands a block to the writing thread
        with pytest.raises(OSError):
            w.flush()
        with pytest.raises(OSError):
            w.write(2 << 20, BIG[2 << 20 : 4 << 20])
        with pytest.raises(OSError):
            w.flush()
    finally:
        w.close()
        os.close(fd)
