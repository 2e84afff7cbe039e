"""The one BLAKE3 helper: running hashers, prefixes of open files and whole
files agree with blake3 itself at every size, around the block and thread
thresholds."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from freight.engine import hashing
from freight.errors import FreightError

SIZES = [0, 1, hashing.BLOCK - 1, hashing.BLOCK, hashing.BLOCK + 1, 3 * hashing.BLOCK + 7]


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("size", SIZES)
def test_file_digests_match_blake3(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hashing.digest_file(p) == b3(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert hashing.digest_fd(fd, size) == b3(data)
        assert hashing.digest_fd(fd) == b3(data)
        h, reached = hashing.hash_fd(fd)
        assert (h.hexdigest(), reached) == (b3(data), size)
        half = size // 2
        h = hashing.hash_prefix(fd, half)
        assert h.hexdigest() == b3(data[:half])
        h.update(data[half:])  # a running hasher goes on from the prefix
        assert h.hexdigest() == b3(data)
    finally:
        os.close(fd)


def test_a_prefix_longer_than_the_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        h, reached = hashing.hash_fd(fd, 10)
        assert reached == 3 and h.hexdigest() == b3(b"abc")
        with pytest.raises(FreightError):
            hashing.hash_prefix(fd, 10)
        assert hashing.hash_fd(fd, 3, start=1)[0].hexdigest() == b3(b"bc")
    finally:
        os.close(fd)


def test_a_big_input_hashes_with_threads_alike() -> None:
    data = os.urandom(hashing.THREADED_MIN + 5)
    h = hashing.new_hasher(len(data))
    h.update(data)
    assert h.hexdigest() == b3(data) == hashing.digest_bytes(data)


def test_a_link_or_a_fifo_is_not_hashed(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        hashing.digest_file(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        hashing.digest_file(tmp_path / "fifo")
