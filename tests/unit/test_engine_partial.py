"""The one partial file: a resume starts from the recorded checkpoint (bytes
past it dropped, the prefix hashed again), a crash between a write and its
checkpoint loses nothing acknowledged, and a file whose digest differs is
never published."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from freight.client.safefs import Tree, UnsafePath
from freight.engine.partial import (
    FolderPlace,
    LengthCheckpoints,
    PartialFile,
    PathPlace,
)

DATA = os.urandom(300_000)


class MemoryCheckpoints:
    """A store that survives the "crash": a dict kept by the test."""

    def __init__(self, record: dict[str, int]) -> None:
        self.record = record
        self.saves: list[int] = []

    async def load(self) -> int | None:
        return self.record.get("checkpoint")

    async def save(self, offset: int) -> None:
        self.saves.append(offset)
        self.record["checkpoint"] = offset

    async def clear(self) -> None:
        self.record.clear()


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def hub_file(tmp_path: Path, record: dict[str, int]) -> tuple[PartialFile, PathPlace]:
    place = PathPlace(tmp_path / "partial" / "s.part", tmp_path / "files" / "f.bin", shown="f")
    return PartialFile(place, MemoryCheckpoints(record), len(DATA)), place


async def test_a_whole_file_is_written_verified_and_published(tmp_path: Path) -> None:
    record: dict[str, int] = {}
    f, place = hub_file(tmp_path, record)
    assert await f.resume() == 0
    for off in range(0, len(DATA), 65_536):
        f.write(off, DATA[off : off + 65_536])
        await f.checkpoint(f.done)
    assert record["checkpoint"] == len(DATA)
    assert await f.finish(b3(DATA), mtime=1_000_000.0) == (True, b3(DATA))
    assert place.target.read_bytes() == DATA and not place.path.exists()
    assert place.target.stat().st_mtime == 1_000_000.0
    assert place.target.stat().st_mode & 0o777 == 0o600


async def test_a_crash_between_write_and_checkpoint_resumes_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    record: dict[str, int] = {}
    f, place = hub_file(tmp_path, record)
    await f.resume()
    f.write(0, DATA[:100_000])
    await f.checkpoint(100_000)
    f.write(100_000, DATA[100_000:150_000])  # written, never checkpointed: "crash"
    f.close()
    assert place.path.stat().st_size == 150_000

    again, _ = hub_file(tmp_path, record)
    assert await again.resume() == 100_000  # the store's word, not the file's length
    assert place.path.stat().st_size == 100_000  # the unacknowledged tail is dropped
    assert again.hasher.hexdigest() == b3(DATA[:100_000])
    again.write(100_000, DATA[100_000:])
    assert await again.finish(b3(DATA)) == (True, b3(DATA))
    assert place.target.read_bytes() == DATA


async def test_a_partial_shorter_than_its_checkpoint_starts_over(tmp_path: Path) -> None:
    record = {"checkpoint": 200_000}
    place = PathPlace(tmp_path / "p.part", tmp_path / "f.bin", shown="f")
    place.path.write_bytes(DATA[:1000])
    f = PartialFile(place, MemoryCheckpoints(record), len(DATA))
    assert await f.resume() == 0
    assert place.path.stat().st_size == 0
    f.close()
    assert await PartialFile(place, MemoryCheckpoints({}), len(DATA)).resume(None) == 0


async def test_a_digest_mismatch_discards_the_partial_and_its_checkpoint(tmp_path: Path) -> None:
    record: dict[str, int] = {}
    f, place = hub_file(tmp_path, record)
    await f.resume()
    f.write(0, DATA)
    await f.checkpoint(len(DATA))
    verified, actual = await f.finish(b3(b"something else"))
    assert (verified, actual) == (False, b3(DATA))
    assert not place.path.exists() and not place.target.exists()
    assert record == {} and not f.is_open


async def test_a_disk_error_reaches_the_caller(tmp_path: Path) -> None:
    f, _ = hub_file(tmp_path, {})
    await f.resume()
    f.close()
    with pytest.raises(OSError):
        f.write(0, b"x")


async def test_in_a_folder_with_the_length_as_checkpoint(tmp_path: Path) -> None:
    tree = Tree.open(tmp_path / "dest", create=True)
    try:
        place = FolderPlace(tree, ("a.bin.part",), "a.bin", mode=0o640, shown="a.bin")
        (tmp_path / "dest" / "a.bin.part").write_bytes(DATA[:12_345])
        f = PartialFile(place, LengthCheckpoints(place), len(DATA))
        assert await f.resume() == 12_345  # what the partial holds
        f.write(12_345, DATA[12_345:])
        assert await f.finish(b3(DATA), mtime=2_000_000.0) == (True, b3(DATA))
        done = tmp_path / "dest" / "a.bin"
        assert done.read_bytes() == DATA and done.stat().st_mode & 0o777 == 0o640
        assert not (tmp_path / "dest" / "a.bin.part").exists()
        small = PartialFile(
            FolderPlace(tree, ("b.part",), "b", mode=0o600, shown="b"), LengthCheckpoints(place), 3
        )
        small.put(b"abc", 0o644, 3_000_000.0)
        assert (tmp_path / "dest" / "b").read_bytes() == b"abc"
    finally:
        tree.close()


async def test_a_link_planted_as_the_partial_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"keep me")
    (tmp_path / "dest" / "a.part").symlink_to(secret)
    tree = Tree.open(tmp_path / "dest")
    try:
        place = FolderPlace(tree, ("a.part",), "a", mode=0o600, shown="a")
        f = PartialFile(place, LengthCheckpoints(place), 10)
        with pytest.raises(UnsafePath):
            await f.resume()
        assert secret.read_bytes() == b"keep me"
    finally:
        tree.close()
