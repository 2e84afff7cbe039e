"""The paths a folder pull reports: the destination resolved once, the
same paths as resolving each file's (which costs a lookup per component)."""

from __future__ import annotations

from pathlib import Path

import pytest

from freight.client.pulltree import PullItem, shown_paths


def _item(name: str, dest: Path) -> PullItem:
    return PullItem(name=name, dest=dest, size=1, digest="0" * 64, mtime=0.0)


def test_paths_below_a_linked_destination_are_the_resolved_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    (real / "album" / "deep").mkdir(parents=True)
    (tmp_path / "via").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    root = Path("via") / "album"  # relative, through a link
    items = [_item("album/a.txt", root / "a.txt"), _item("album/deep/b", root / "deep" / "b")]
    for i in items:
        i.dest.write_bytes(b"x")
    got = shown_paths(root, items)
    assert got == [str(i.dest.resolve()) for i in items]
    assert got[1] == str(real / "album" / "deep" / "b")


def test_a_file_outside_the_root_is_resolved_itself(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.bin"
    assert shown_paths(tmp_path / "root", [_item("x", other)]) == [str(other.resolve())]
