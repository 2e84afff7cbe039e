"""``freight push photos/`` then ``freight pull photos/`` brings the folder
back, placed as ``cp -r`` places it, with --parallel, and an interrupted
pull finishes when run again. Real hub, real CLI processes.

Push keeps each file's bytes and modification time (the hub stores both);
it keeps neither modes nor folders of their own (an empty folder is not
pushed), so those are what a pull can give back."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Client, Hub, make_tree, random_file, same_bytes, wait_until

MiB = 1024 * 1024


def files_of(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def assert_same_files(src: Path, dst: Path) -> None:
    """Same file names, bytes and modification times."""
    a, b = files_of(src), files_of(dst)
    assert sorted(b) == sorted(a), f"missing {set(a) - set(b)}, extra {set(b) - set(a)}"
    for rel, p in a.items():
        assert same_bytes(p, b[rel]), rel
        assert abs(p.stat().st_mtime - b[rel].stat().st_mtime) < 1e-3, rel


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, shared_client: Client) -> Path:
    """A tree pushed once as ``album/`` (push names it after the folder)."""
    root = make_tree(tmp_path_factory.mktemp("src") / "album")
    shared_client.run("push", str(root), "--parallel", "3", "--quiet")
    return root


def pulled(res: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(res.stdout)["pulled"]
    assert isinstance(rows, list)
    return rows


@pytest.mark.parametrize("parallel", ["1", "4"])
def test_a_folder_comes_back_into_a_new_destination(
    tmp_path: Path, shared_client: Client, tree: Path, parallel: str
) -> None:
    dest = tmp_path / "copy"  # does not exist: it becomes the copy
    res = shared_client.run("pull", "album/", str(dest), "--parallel", parallel, "--json")
    rows = pulled(res)
    assert len(rows) == len(files_of(tree))
    assert not any(r["skipped"] for r in rows)
    assert_same_files(tree, dest)
    assert not list(dest.rglob("*.freight-partial"))


def test_a_folder_goes_inside_an_existing_destination(
    tmp_path: Path, shared_client: Client, tree: Path
) -> None:
    dest = tmp_path / "existing"
    dest.mkdir()
    (dest / "mine.txt").write_text("stays\n")
    shared_client.run("pull", "album", str(dest), "--parallel", "2", "--quiet")
    assert_same_files(tree, dest / "album")
    assert (dest / "mine.txt").read_text() == "stays\n"


def test_a_subfolder_and_a_single_file_still_pull(
    tmp_path: Path, shared_client: Client, tree: Path
) -> None:
    shared_client.run("pull", "album/docs/deep", str(tmp_path / "deep"), "--quiet")
    assert_same_files(tree / "docs" / "deep", tmp_path / "deep")
    res = shared_client.run("pull", "album/data.bin", str(tmp_path), "--json")
    one = json.loads(res.stdout)["pulled"]
    assert isinstance(one, dict) and one["name"] == "album/data.bin"
    assert same_bytes(tree / "data.bin", tmp_path / "data.bin")


def test_a_folder_over_a_file_or_a_missing_folder_is_refused(
    tmp_path: Path, shared_client: Client, tree: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    res = shared_client.run("pull", "album/", str(blocker), check=False)
    assert res.returncode == 2, res.stderr
    assert "is a file, not a folder" in res.stderr
    assert blocker.read_text() == "not a folder\n"
    res = shared_client.run("pull", "no-such-album/", str(tmp_path / "x"), check=False)
    assert res.returncode == 7, res.stderr
    assert "no folder named 'no-such-album'" in res.stderr
    # A trailing slash demands a folder, even where a file has the name.
    res = shared_client.run("pull", "album/data.bin/", str(tmp_path / "y"), check=False)
    assert res.returncode == 7 and "no folder named" in res.stderr


def test_an_interrupted_folder_pull_finishes_when_run_again(
    tmp_path: Path, hub: Hub, client: Client, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    src = tmp_path / "batch"
    src.mkdir()
    random_file(src / "a-small.bin", 200_000, seed=1)
    random_file(src / "b-big.bin", 48 * MiB, seed=2)
    random_file(src / "c-small.bin", 300_000, seed=3)
    os.utime(src / "b-big.bin", (1_600_000_000.5, 1_600_000_000.5))
    client.run("push", str(src), "--quiet")

    dest = tmp_path / "back"
    partial = dest / "b-big.bin.freight-partial"
    proc = spawn(client, "pull", "batch/", str(dest), "--limit", "8M", "--json")
    wait_until(lambda: partial.exists() and partial.stat().st_size >= 16 * MiB, 60, "16 MiB pulled")
    proc.kill()
    proc.wait(10)
    assert (dest / "a-small.bin").exists() and not (dest / "b-big.bin").exists()

    rows = {r["name"]: r for r in pulled(client.run("pull", "batch/", str(dest), "--json"))}
    assert rows["batch/a-small.bin"]["skipped"] is True  # done before: not fetched again
    assert 8 * MiB <= rows["batch/b-big.bin"]["resumed_from"] < 48 * MiB
    assert rows["batch/c-small.bin"]["skipped"] is False
    assert_same_files(src, dest)
    assert not partial.exists()
