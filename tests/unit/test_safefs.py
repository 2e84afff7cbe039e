"""Writing below a destination without following links (freight.client.safefs):
links, FIFOs and files where folders should be are refused; modes and times
are set on descriptors; more folders than descriptors kept open still work."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from freight.client.safefs import MAX_OPEN_FOLDERS, Tree, UnsafePath, relative_parts
from freight.errors import UsageError


@pytest.mark.parametrize("rel", ["", "/etc", "a/../b", "./a", "a//b", "a\\b", "a\0b", ".."])
def test_paths_that_would_leave_are_refused(rel: str) -> None:
    with pytest.raises(UnsafePath):
        relative_parts(rel)


def test_links_fifos_and_files_are_refused_where_they_stand(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "linked")
    os.symlink(outside / "f", dest / "file-link")
    os.mkfifo(dest / "fifo")
    (dest / "plain").write_text("x")
    tree = Tree.open(dest)
    try:
        with pytest.raises(UnsafePath, match="symbolic link"):
            tree.folder(("linked",), create=True)
        with pytest.raises(UnsafePath, match="symbolic link"):
            tree.open_write(("linked", "new.txt"))
        with pytest.raises(UnsafePath, match="symbolic link"):
            tree.open_write(("file-link",))
        with pytest.raises(UnsafePath, match="not a regular file"):
            tree.open_write(("fifo",))  # and does not block
        with pytest.raises(UsageError, match="not a folder"):
            tree.folder(("plain",), create=True)
        assert tree.open_read(("file-link",)) is None
        assert tree.open_read(("fifo",)) is None
        st = tree.lstat(("linked",))
        assert st is not None and stat.S_ISLNK(st.st_mode)
    finally:
        tree.close()
    assert list(outside.iterdir()) == []


def test_many_folders_modes_and_times(tmp_path: Path) -> None:
    tree = Tree.open(tmp_path / "dest", create=True)
    count = MAX_OPEN_FOLDERS * 3
    try:
        for i in range(count):
            parts = (f"d{i % 7}", f"sub{i}")
            fd = tree.open_write((*parts, "f.txt"), truncate=True)
            os.write(fd, b"%d" % i)
            tree.publish(fd, (*parts, "f.txt"), "f.txt", 0o4755, 1_500_000_000.0)
        for i in range(count):
            tree.finish_folder((f"d{i % 7}", f"sub{i}"), 0o2750, 1_400_000_000.0)
        assert len(tree._fds) <= MAX_OPEN_FOLDERS
    finally:
        tree.close()
    for i in range(count):
        folder = tmp_path / "dest" / f"d{i % 7}" / f"sub{i}"
        f = folder / "f.txt"
        assert f.read_bytes() == b"%d" % i
        assert stat.S_IMODE(f.stat().st_mode) == 0o755 and f.stat().st_mtime == 1_500_000_000
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750
        assert folder.stat().st_mtime == 1_400_000_000


def test_beneath_refuses_a_link_on_the_way(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    os.symlink(tmp_path, root / "b")
    Tree.beneath(root, ["a"]).close()
    with pytest.raises(UnsafePath):
        Tree.beneath(root, ["b"])
    with pytest.raises(UsageError, match="no such folder"):
        Tree.beneath(root, ["missing"])
