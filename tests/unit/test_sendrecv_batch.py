"""Small files travel whole in ``B`` messages: what the sender packs, the
receiver unpacks into identical files, and any malformed batch is refused
with ``TransferRefused`` and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.client.receiving import _finish_batch, _Incoming, _parse_batch
from freight.client.safefs import Tree, relative_parts
from freight.client.sendrecv import SMALL_FILE, TransferRefused, _read_batch, build_manifest


def make_files(src: Path, sizes: list[int]) -> list[Path]:
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        p = src / f"f{i:03d} é.bin"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    return paths


def round_trip(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Pack the files under tmp_path/src for what tmp_path/dest already
    holds (as the receiver reports it), and unpack them there."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    entries = build_manifest([src])
    targets = [dest.joinpath(*relative_parts(e.path)) for e in entries]
    tree = Tree.open(dest, create=True)
    try:
        for e in entries:
            if e.type == "dir":
                tree.folder(relative_parts(e.path), create=True)
        files = [(i, e) for i, e in enumerate(entries) if e.type == "file"]
        incoming = {i: _Incoming(e, tree, relative_parts(e.path)) for i, e in files}
        holds = {i: inc.plan() for i, inc in incoming.items()}
        message, held = _read_batch([(i, e, *holds[i]) for i, e in files])
        _finish_batch(_parse_batch(message, incoming))
    finally:
        tree.close()
    return entries, targets, held, message


def test_a_batch_recreates_every_file_with_its_mode_and_mtime(tmp_path: Path) -> None:
    sizes = [0, 1, 4096, 4097, SMALL_FILE, 7]
    make_files(tmp_path / "src", sizes)
    entries, targets, held, _ = round_trip(tmp_path)
    assert held == [False] * len(sizes)
    for e, t in zip(entries, targets, strict=True):
        if e.type == "file":
            assert e.source is not None
            assert t.read_bytes() == e.source.read_bytes()
            assert t.stat().st_mode & 0o7777 == e.mode & 0o7777
            assert abs(t.stat().st_mtime - e.mtime) < 1e-3
            assert not t.with_name(t.name + ".freight-part").exists()


def test_files_the_receiver_holds_travel_without_their_bytes(tmp_path: Path) -> None:
    paths = make_files(tmp_path / "src", [100, 200, 300])
    part = tmp_path / "dest" / "src" / (paths[0].name + ".freight-part")
    part.parent.mkdir(parents=True)
    part.write_bytes(paths[0].read_bytes())  # all of the first file
    stale = tmp_path / "dest" / "src" / (paths[1].name + ".freight-part")
    stale.write_bytes(b"not what the sender has")  # a part of something else
    entries, targets, held, message = round_trip(tmp_path)
    assert held == [True, False, False]
    assert paths[0].read_bytes() not in message and paths[1].read_bytes() in message
    for e, t in zip(entries, targets, strict=True):
        if e.type == "file":
            assert e.source is not None and t.read_bytes() == e.source.read_bytes()


def test_a_file_that_changed_size_since_the_list_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, [10])
    entries = build_manifest([src])
    (src / "f000 é.bin").write_bytes(b"longer than ten bytes")
    with pytest.raises(Exception, match="changed while being sent"):
        _read_batch([(1, entries[1], 0, "")])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m[:-1],  # truncated body
        lambda m: m + b"x",  # trailing garbage
        lambda m: m[:1] + (2).to_bytes(4, "big") + m[5:],  # count larger than content
        lambda m: m[:5] + (99).to_bytes(4, "big") + m[9:],  # index not in the list
        lambda m: m[:9] + (3).to_bytes(4, "big") + m[13:],  # length not the listed size
    ],
    ids=["truncated", "trailing", "count", "index", "length"],
)
def test_malformed_batches_are_refused(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, [10])
    entries = build_manifest([src])
    message, _ = _read_batch([(1, entries[1], 0, "")])
    tree = Tree.open(tmp_path)
    incoming = {1: _Incoming(entries[1], tree, ("out.bin",))}
    assert len(_parse_batch(message, incoming)) == 1
    with pytest.raises(TransferRefused):
        _parse_batch(mutate(message), incoming)
    tree.close()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_any_bytes_give_a_batch_or_a_refusal(tmp_path: Path, body: bytes) -> None:
    src = tmp_path / "fuzz-src"
    if not src.exists():
        make_files(src, [3])
    entries = build_manifest([src])
    tree = Tree.open(tmp_path)
    incoming = {1: _Incoming(entries[1], tree, ("fuzz-out.bin",))}
    try:
        items = _parse_batch(b"B" + body, incoming)
    except TransferRefused:
        return
    finally:
        tree.close()
    for index, inc, data, digest, held in items:
        assert index == 1 and inc is incoming[1] and len(digest) == 64
        assert held or len(data) == 3
