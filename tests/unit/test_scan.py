"""The agent's incremental scanner: globs, cache reuse, links, races.

Files are written with an mtime an hour in the past (``put``): the scanner
re-hashes a file modified within its racy window (2 s) of being hashed, so
"second scan hashes nothing" is only true of files that settled; that rule
has its own test.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from freight.agent.scan import (
    Found,
    GlobSet,
    ScanCache,
    ScanResult,
    blake3_file,
    compile_glob,
    glob_to_regex,
    scan,
)

HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def put(root: Path, rel: str, data: bytes, mtime_ns: int = HOUR_AGO_NS) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def digests(res: ScanResult) -> dict[str, str]:
    return {f.path: f.digest for f in res.found}


@pytest.fixture
def cache(tmp_path: Path) -> ScanCache:
    c = ScanCache(tmp_path / "state" / "scan.db")
    yield c  # type: ignore[misc]
    c.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def run(root: Path | list[Path], cache: ScanCache, **kw: object) -> ScanResult:
    roots = root if isinstance(root, list) else [root]
    include = kw.pop("include", [])
    exclude = kw.pop("exclude", [])
    max_size = kw.pop("max_size", 0)
    return scan(roots, include, exclude, max_size, cache, **kw)  # type: ignore[arg-type]


def refuse(path: str) -> str:
    raise AssertionError(f"{path} was hashed, the cache should have answered")


# ------------------------------------------------------------------- globs


def m(pattern: str, rel: str) -> bool:
    return compile_glob(pattern).fullmatch(rel) is not None


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("**/*.jpg", ["a.jpg", "x/a.jpg", "x/y/z/a.jpg"], ["a.jpeg", "x/a.jpg.txt", "a.JPG"]),
        ("*.png", ["a.png", ".png"], ["x/a.png", "x/y/a.png", "a.png/b"]),
        ("photos/**", ["photos/a.jpg", "photos/x/y.jpg"], ["photos", "x/photos/a", "photosx/a"]),
        ("photos/", ["photos/a.jpg", "photos/x/y.jpg"], ["photos", "x/photos/a"]),
        ("a/*/b", ["a/x/b", "a/.x/b"], ["a/b", "a/x/y/b", "a/x/bb"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a/xb", "ab", "x/a/b"]),
        ("**", ["a", "x/y/z"], []),
        ("a*", ["a", "abc"], ["ab/c", "x/a"]),
        ("a?b", ["axb"], ["a/b", "ab"]),
        ("x[a-c].txt", ["xa.txt", "xc.txt"], ["xd.txt", "x/.txt"]),
        ("x[!a]y", ["xby"], ["xay", "x/y"]),
        ("a+b(1).txt", ["a+b(1).txt"], ["aab(1).txt"]),
        (r"\*.txt", ["*.txt"], ["a.txt"]),
        ("/top.txt", ["top.txt"], ["x/top.txt"]),
        ("a//b", ["a/b"], ["a//b"]),
        ("we[ird", ["we[ird"], ["weird"]),
        ("**/*.txt", ["new\nline/a.txt", "a\nb.txt"], []),
    ],
)
def test_glob_cases(pattern: str, yes: list[str], no: list[str]) -> None:
    for rel in yes:
        assert m(pattern, rel), (pattern, rel, glob_to_regex(pattern))
    for rel in no:
        assert not m(pattern, rel), (pattern, rel, glob_to_regex(pattern))


def test_star_never_crosses_a_folder() -> None:
    # fnmatch's "*" would match "a/b.txt": the reason for our own translator.
    assert not m("*.txt", "a/b.txt")
    assert not m("a*b", "a/b")
    assert not m("*", "a/b")
    assert m("*/*", "a/b")


@pytest.mark.parametrize("bad", ["", "/", "//", "x[z-a]"])
def test_bad_globs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        compile_glob(bad)
    with pytest.raises(ValueError):
        GlobSet([bad])


def test_globset_matches_any_and_knows_which_folders_it_covers() -> None:
    g = GlobSet(["*.tmp", "cache/**", "**/node_modules/**"])
    assert g.match("a.tmp") and g.match("cache/x/y") and g.match("p/q/node_modules/m.js")
    assert not g.match("x/a.tmp")
    assert g.covers_dir("cache") and g.covers_dir("a/node_modules") and g.covers_dir("node_modules")
    assert not g.covers_dir("x") and not g.covers_dir("x/cache")
    assert not GlobSet([]).match("a") and not GlobSet([])
    assert GlobSet(["**"]).covers_dir("anything")


# ------------------------------------------------------------------- hashing


def test_blake3_file_reads_big_and_small_files(tmp_path: Path) -> None:
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 7, 17 << 20):
        data = os.urandom(size)
        p = tmp_path / f"f{size}"
        p.write_bytes(data)
        assert blake3_file(str(p)) == b3(data)


def test_blake3_file_never_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        blake3_file(str(tmp_path / "link"))


# ------------------------------------------------------------------- scanning


def test_first_scan_hashes_everything_and_second_nothing(root: Path, cache: ScanCache) -> None:
    files = {"a.txt": b"alpha", "x/b.bin": os.urandom(5000), "x/y/z/c": b"", "d e.txt": b"sp"}
    for rel, data in files.items():
        put(root, rel, data)

    first = run(root, cache)
    assert first.hashed == 4 and first.hashed_bytes == sum(map(len, files.values()))
    assert first.errors == [] and first.removed == [] and first.skipped_large == 0
    assert digests(first) == {str(root / rel): b3(data) for rel, data in files.items()}
    assert [f.path for f in first.found] == sorted(str(root / r) for r in files)
    a = next(f for f in first.found if f.path.endswith("a.txt"))
    assert a == Found(str(root / "a.txt"), 5, (root / "a.txt").stat().st_mtime, b3(b"alpha"))
    assert len(a.digest) == 64

    second = run(root, cache, hash_file=refuse)
    assert second.hashed == 0 and second.hashed_bytes == 0
    assert second.found == first.found and second.errors == []


def test_cache_survives_reopening(tmp_path: Path, root: Path) -> None:
    put(root, "a", b"1")
    with ScanCache(tmp_path / "c.db") as c:
        assert run(root, c).hashed == 1
        assert len(c) == 1
    with ScanCache(tmp_path / "c.db") as c:
        assert run(root, c, hash_file=refuse).hashed == 0


def test_modified_file_same_size_new_mtime_is_hashed_again(root: Path, cache: ScanCache) -> None:
    p = put(root, "f", b"aaaa")
    put(root, "g", b"gggg")
    assert digests(run(root, cache))[str(p)] == b3(b"aaaa")
    put(root, "f", b"bbbb", mtime_ns=HOUR_AGO_NS + 10**9)
    res = run(root, cache)
    assert res.hashed == 1 and digests(res)[str(p)] == b3(b"bbbb")


def test_replaced_file_same_size_same_mtime_new_inode_is_hashed(
    root: Path, cache: ScanCache
) -> None:
    p = put(root, "f", b"aaaa")
    run(root, cache)
    tmp = put(root, "f.new", b"bbbb")  # same size and mtime, another inode
    keep = put(root, "keep", b"k")  # holds f's old inode so it cannot be reused
    os.replace(tmp, p)
    res = run(root, cache)
    assert res.hashed == 2  # f (new inode) and keep (new file)
    assert digests(res)[str(p)] == b3(b"bbbb") and str(keep) in digests(res)


def test_deleted_file_is_removed_once(root: Path, cache: ScanCache) -> None:
    put(root, "keep", b"k")
    gone = put(root, "sub/gone", b"g")
    gone_dir = put(root, "old/deep/file", b"d")
    run(root, cache)
    gone.unlink()
    (gone_dir).unlink()
    gone_dir.parent.rmdir()
    res = run(root, cache, hash_file=refuse)
    assert res.removed == sorted([str(gone), str(gone_dir)])
    assert [f.path for f in res.found] == [str(root / "keep")]
    assert run(root, cache).removed == []  # forgotten after being reported


def test_file_replaced_by_folder_or_link_is_removed(root: Path, cache: ScanCache) -> None:
    a, b = put(root, "a", b"1"), put(root, "b", b"2")
    run(root, cache)
    a.unlink()
    a.mkdir()
    b.unlink()
    b.symlink_to(root / "a")
    assert run(root, cache).removed == [str(a), str(b)]


def test_folder_replaced_by_link_counts_as_removed(
    tmp_path: Path, root: Path, cache: ScanCache
) -> None:
    f = put(root, "d/f", b"1")
    run(root, cache)
    outside = tmp_path / "outside"
    (root / "d").rename(outside)
    (root / "d").symlink_to(outside)  # d/f still "exists", but only through a link
    res = run(root, cache)
    assert res.removed == [str(f)] and res.found == []


def test_unlistable_root_reports_nothing_removed(tmp_path: Path, cache: ScanCache) -> None:
    root = tmp_path / "disk"
    put(root, "a", b"1")
    run(root, cache)
    root.rename(tmp_path / "unmounted")
    res = run(root, cache)
    assert res.removed == [] and res.found == []
    assert len(res.errors) == 1 and "cannot list folder" in res.errors[0]
    (tmp_path / "unmounted").rename(root)
    assert run(root, cache, hash_file=refuse).found[0].path == str(root / "a")


def test_filtered_file_leaves_found_but_is_not_removed(root: Path, cache: ScanCache) -> None:
    put(root, "a.jpg", b"1")
    put(root, "b.txt", b"2")
    put(root, "big.jpg", b"x" * 100)
    put(root, "tmp/c.jpg", b"3")
    assert run(root, cache).hashed == 4
    res = run(root, cache, include=["**/*.jpg"], exclude=["tmp/**"], max_size=50)
    assert [f.path for f in res.found] == [str(root / "a.jpg")]
    assert res.removed == [] and res.skipped_large == 1 and res.hashed == 0
    assert len(cache) == 4  # still there: their digests are kept
    assert run(root, cache, hash_file=refuse).hashed == 0  # wanted back: nothing to hash


def test_policies_sharing_a_cache_do_not_rehash_each_other(root: Path, cache: ScanCache) -> None:
    # The agent scans every collection policy with the same cache; dropping
    # the rows another policy's globs exclude would re-hash them each time.
    put(root, "a.jpg", b"1")
    put(root, "b.png", b"2")
    put(root, "node_modules/m.js", b"3")
    jpg = {"include": ["**/*.jpg"], "exclude": ["node_modules/**"]}
    other = {"include": ["**/*.png", "**/*.js"]}
    assert run(root, cache, **jpg).hashed == 1
    assert run(root, cache, **other).hashed == 2
    for _ in range(2):
        assert run(root, cache, hash_file=refuse, **jpg).hashed == 0
        assert run(root, cache, hash_file=refuse, **other).hashed == 0


def test_deletion_in_an_excluded_folder_is_reported_by_a_scan_that_looks(
    root: Path, cache: ScanCache
) -> None:
    m = put(root, "node_modules/m.js", b"3")
    put(root, "a", b"1")
    run(root, cache)
    m.unlink()
    assert run(root, cache, exclude=["node_modules/**"]).removed == []  # did not look there
    assert run(root, cache).removed == [str(m)]
    assert len(cache) == 1


def test_include_exclude_precedence(root: Path, cache: ScanCache) -> None:
    for rel in ["a.jpg", "x/b.jpg", "private/c.jpg", "x/private/d.jpg", "e.png", "x/f.png"]:
        put(root, rel, rel.encode())
    res = run(root, cache, include=["**/*.jpg", "*.png"], exclude=["private/**", "**/d.jpg"])
    rels = sorted(os.path.relpath(f.path, root) for f in res.found)
    assert rels == ["a.jpg", "e.png", "x/b.jpg"]
    everything = run(root, cache, include=[], exclude=[])
    assert len(everything.found) == 6


def test_excluded_folders_are_not_walked(
    root: Path, cache: ScanCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(root, "keep/a", b"1")
    put(root, "node_modules/x/y", b"2")
    put(root, "p/node_modules/z", b"3")
    listed: list[str] = []
    real = os.scandir

    def spy(path: str) -> object:
        listed.append(os.path.relpath(path, root))
        return real(path)

    monkeypatch.setattr(os, "scandir", spy)
    res = run(root, cache, exclude=["**/node_modules/**"])
    assert [os.path.relpath(f.path, root) for f in res.found] == ["keep/a"]
    assert not any("node_modules" in d for d in listed)


def test_symlinks_are_never_followed_or_offered(
    tmp_path: Path, root: Path, cache: ScanCache
) -> None:
    outside = tmp_path / "outside"
    put(outside, "secret.txt", b"secret")
    put(outside, "dir/deep.txt", b"deep")
    put(root, "real.txt", b"real")
    put(root, "inner/own.txt", b"own")
    (root / "link-file").symlink_to(outside / "secret.txt")
    (root / "link-dir").symlink_to(outside / "dir")
    (root / "link-inner").symlink_to(root / "inner")  # even inside the root: no duplicates
    (root / "dangling").symlink_to(tmp_path / "nothing")
    hashed: list[str] = []

    def spy(path: str) -> str:
        hashed.append(path)
        return blake3_file(path)

    res = run(root, cache, include=["**"], hash_file=spy)
    paths = sorted(os.path.relpath(f.path, root) for f in res.found)
    assert paths == ["inner/own.txt", "real.txt"]
    assert sorted(os.path.relpath(p, root) for p in hashed) == paths
    assert b3(b"secret") not in digests(res).values() and res.errors == []


def test_fifos_and_sockets_are_skipped_without_blocking(root: Path, cache: ScanCache) -> None:
    put(root, "a", b"1")
    os.mkfifo(root / "fifo")
    res = run(root, cache)
    assert [f.path for f in res.found] == [str(root / "a")] and res.errors == []


def test_max_size(root: Path, cache: ScanCache) -> None:
    put(root, "small", b"x" * 10)
    put(root, "edge", b"x" * 50)
    put(root, "big", b"x" * 100)
    res = run(root, cache, max_size=50)
    assert sorted(os.path.basename(f.path) for f in res.found) == ["edge", "small"]
    assert res.skipped_large == 1 and res.hashed == 2
    unlimited = run(root, cache, max_size=0)
    assert len(unlimited.found) == 3 and unlimited.skipped_large == 0 and unlimited.hashed == 1


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod 000 does not stop root from reading",
)
def test_unreadable_file_and_folder_are_reported(root: Path, cache: ScanCache) -> None:
    put(root, "ok", b"1")
    locked = put(root, "locked", b"2")
    closed = put(root, "closed/inside", b"3").parent
    locked.chmod(0)
    closed.chmod(0)
    try:
        res = run(root, cache)
    finally:
        locked.chmod(0o644)
        closed.chmod(0o755)
    assert [f.path for f in res.found] == [str(root / "ok")]
    assert any(str(locked) in e and "cannot read" in e for e in res.errors)
    assert any(str(closed) in e and "cannot list folder" in e for e in res.errors)


def test_read_error_is_reported_and_the_cache_row_kept(root: Path, cache: ScanCache) -> None:
    # Runs everywhere (also as root), unlike the chmod test above.
    f = put(root, "f", b"one")
    run(root, cache)
    put(root, "f", b"two", mtime_ns=HOUR_AGO_NS + 1)

    def denied(path: str) -> str:
        raise PermissionError(13, "Permission denied", path)

    res = run(root, cache, hash_file=denied)
    assert res.found == [] and res.removed == []
    assert res.errors == [f"{f}: cannot read: Permission denied"]
    assert len(cache) == 1
    assert digests(run(root, cache))[str(f)] == b3(b"two")


@pytest.mark.parametrize("same_size", [False, True])
def test_file_changed_while_hashed_is_not_offered(
    root: Path, cache: ScanCache, same_size: bool
) -> None:
    f = put(root, "growing.log", b"first part")
    put(root, "calm", b"calm")

    def interfere(path: str) -> str:
        digest = blake3_file(path)
        if path == str(f):  # a writer gets in after we read it
            if same_size:
                put(root, "growing.log", b"FIRST PART", mtime_ns=HOUR_AGO_NS + 5)
            else:
                with open(path, "ab") as out:
                    out.write(b" and more")
        return digest

    res = run(root, cache, hash_file=interfere)
    assert [os.path.basename(x.path) for x in res.found] == ["calm"]
    assert len(res.errors) == 1 and "changed while being hashed" in res.errors[0]
    assert str(f) in res.errors[0] and res.removed == []
    os.utime(f, ns=(HOUR_AGO_NS + 9, HOUR_AGO_NS + 9))  # settled
    again = run(root, cache)
    assert again.hashed == 1 and digests(again)[str(f)] == b3(f.read_bytes())


def test_recently_modified_file_is_verified_again(root: Path, cache: ScanCache) -> None:
    # Modified within the racy window: a same-size write in the same timestamp
    # tick after hashing would be invisible to (size, mtime, inode), so the
    # digest is re-checked next time; settled files are not.
    put(root, "fresh", b"1", mtime_ns=time.time_ns())
    put(root, "old", b"2")
    assert run(root, cache).hashed == 2
    assert run(root, cache).hashed == 1  # "fresh" again
    assert run(root, cache, racy_window=0).hashed == 1
    assert run(root, cache, racy_window=0).hashed == 0


def test_non_utf8_names_round_trip_through_the_cache(root: Path, cache: ScanCache) -> None:
    name = os.fsdecode(b"caf\xe9.txt")  # Latin-1 name: a lone surrogate in str
    put(root, name, b"x")
    first = run(root, cache)
    assert [f.path for f in first.found] == [str(root / name)] and first.hashed == 1
    assert run(root, cache, hash_file=refuse).found == first.found


def test_nested_roots_offer_each_file_once(root: Path, cache: ScanCache) -> None:
    put(root, "a", b"1")
    put(root, "sub/b", b"2")
    res = run([root, root / "sub", root], cache)
    assert sorted(os.path.relpath(f.path, root) for f in res.found) == ["a", "sub/b"]
    assert res.hashed == 2


def test_cache_only_loads_its_roots(tmp_path: Path, cache: ScanCache) -> None:
    r1, r2, r10 = tmp_path / "r1", tmp_path / "r2", tmp_path / "r10"
    for r in (r1, r2, r10):
        put(r, "f", r.name.encode())
    run([r1, r2, r10], cache)
    assert set(cache.load([str(r1)])) == {str(r1 / "f")}  # not r10/f: prefix is "r1/"
    # Scanning only r1 must not report r2's files as removed.
    assert run(r1, cache).removed == [] and len(cache) == 3


def test_corrupt_cache_is_set_aside(tmp_path: Path, root: Path) -> None:
    db = tmp_path / "c.db"
    db.write_bytes(b"this is not sqlite" * 100)
    put(root, "a", b"1")
    with ScanCache(db) as c:
        assert run(root, c).hashed == 1
    assert (tmp_path / "c.db.corrupt").exists()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_cache_can_be_used_from_another_thread(root: Path, cache: ScanCache) -> None:
    import threading

    put(root, "a", b"1")
    out: list[ScanResult] = []
    t = threading.Thread(target=lambda: out.append(run(root, cache)))
    t.start()
    t.join()
    assert out[0].hashed == 1 and run(root, cache).hashed == 0


def test_hash_file_default_is_blake3(root: Path, cache: ScanCache) -> None:
    calls: list[str] = []

    def counting(path: str) -> str:
        calls.append(path)
        return blake3_file(path)

    put(root, "a", b"abc")
    hook: Callable[[str], str] = counting
    assert digests(run(root, cache, hash_file=hook)) == {str(root / "a"): b3(b"abc")}
    assert calls == [str(root / "a")]
