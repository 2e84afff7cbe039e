"""The bucket store itself (:mod:`freight.store.bucket`,
:mod:`freight.hub.blobfiles`) against moto's real S3 server: the ``--blobs``
URL's rules, large files in parts, a partial rebuilt from segments (gaps,
overlaps and foreign keys included), and the sweep."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.engine.pipeline import read_blocks
from freight.errors import ConfigError, StorageError
from freight.hub.blobfiles import (
    BucketCheckpoints,
    BucketSource,
    restore_partial,
    store_content,
    sweep,
)
from freight.hub.streams import DatabaseCheckpoints, SoleNode
from freight.store import Database
from freight.store import bucket as bucket_module
from freight.store.bucket import Bucket, BucketSpec, Listed, content_key, segment_key
from tests.s3support import S3Server, s3  # noqa: F401 - a fixture

MiB = 1024 * 1024


def test_blobs_urls_that_are_taken() -> None:
    assert BucketSpec.parse("s3://freight-blobs") == BucketSpec("freight-blobs", "")
    spec = BucketSpec.parse("s3://freight.blobs/site/one/", "http://127.0.0.1:9000")
    assert (spec.bucket, spec.prefix, spec.endpoint) == (
        "freight.blobs",
        "site/one/",
        spec.endpoint,
    )
    assert str(spec) == "s3://freight.blobs/site/one/"


@pytest.mark.parametrize(
    "url",
    ["", "s3://", "s3://bucket#x", "s3://user@bucket", "s3://Bucket", "s3://ab", "s3://-bucket", "s3://bucket/a//b",
     "s3://bucket/../etc", "s3://bucket/./x", "s3://bucket?x=1", "file:///tmp", "s3://a_b"],
)  # fmt: skip
def test_blobs_urls_that_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        BucketSpec.parse(url)


def test_an_endpoint_must_be_http() -> None:
    with pytest.raises(ConfigError, match="--s3-endpoint"):
        BucketSpec.parse("s3://bucket", "ftp://host")


@given(st.text(max_size=80))
def test_any_blobs_value_parses_or_is_a_config_error(url: str) -> None:
    try:
        spec = BucketSpec.parse(url)
    except ConfigError:
        return
    assert ".." not in spec.prefix.split("/") and "" not in spec.prefix.split("/")[:-1]


async def _open(s3: S3Server, name: str) -> Bucket:  # noqa: F811
    return await Bucket.open(BucketSpec.parse(f"s3://{s3.bucket(name)}/p", s3.url))


@contextlib.asynccontextmanager
async def _store_and_db(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
    name: str,
) -> AsyncIterator[tuple[Bucket, Database, int]]:
    """A bucket, a hub database (SQLite) and an account's id in it."""
    db = Database.sqlite(tmp_path / "db")
    b = await _open(s3, name)
    try:
        await db.migrate()
        yield b, db, await db.add_user("u", "h", "user")
    finally:
        await b.close()
        await db.close()


async def test_a_large_file_goes_in_parts_and_reads_back_in_ranges(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bucket_module, "PART_BYTES", 5 * MiB)
    monkeypatch.setattr(bucket_module, "MULTIPART_FROM", 6 * MiB)
    data = os.urandom(11 * MiB + 3)
    src = tmp_path / "f"
    src.write_bytes(data)
    b = await _open(s3, "freight-parts")
    key = content_key("e" * 64)
    try:
        await b.put_file(key, src)
        assert await b.size(key) == len(data)
        assert await b.read(key, 5 * MiB - 1, 2) == data[5 * MiB - 1 : 5 * MiB + 1]
        source = BucketSource(b, "e" * 64, len(data))  # a pull's, a link's reads
        blocks = read_blocks(source.read, None, 7, len(data), block=3 * MiB)
        assert b"".join([blk async for blk in blocks]) == data[7:]
        source.close()
        with pytest.raises(StorageError, match="shorter than recorded"):
            await b.read(key, len(data) - 1, 2)
        assert await b.size("content/missing") is None
        assert list(s3.keys("freight-parts")) == ["p/" + key]  # no part left behind
    finally:
        await b.close()


async def test_a_partial_is_rebuilt_from_segments_that_chain_to_the_checkpoint(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    data = os.urandom(6000)
    b = await _open(s3, "freight-segments")
    try:
        for start, end in ((0, 2000), (2000, 4000), (4000, 6000)):
            await b.put_bytes(segment_key(1, "sid", start, end), data[start:end])
        # Written by a node that lost the push, and junk: neither is used.
        await b.put_bytes(segment_key(1, "sid", 2000, 3000), b"x" * 1000)
        await b.put_bytes("partial/1/sid/not-a-segment", b"junk")
        await b.put_bytes(segment_key(1, "other", 0, 6000), os.urandom(6000))
        out = tmp_path / "part"
        used = await restore_partial(b, 1, "sid", 4000, out)
        assert out.read_bytes() == data[:4000]
        assert used is not None and [s.size for s in used] == [2000, 2000]
        assert await restore_partial(b, 1, "sid", 6000, out) is not None
        assert out.read_bytes() == data
        await b.delete([segment_key(1, "sid", 2000, 4000)])
        # A gap: the best chain reaches 3000 of the bogus segment only.
        assert await restore_partial(b, 1, "sid", 6000, tmp_path / "gap") is None
        assert not (tmp_path / "gap").exists()
        assert await restore_partial(b, 2, "sid", 2000, tmp_path / "none") is None
    finally:
        await b.close()


async def test_the_sweep_removes_only_what_nothing_names(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    async with _store_and_db(tmp_path, s3, "freight-sweep") as (b, db, uid):
        named, loose = os.urandom(100), os.urandom(100)
        d_named, d_loose = blake3.blake3(named).hexdigest(), blake3.blake3(loose).hexdigest()
        await db.publish(uid, "s1", name="kept.bin", size=100, digest=d_named, mtime=0.0)
        await b.put_bytes(content_key(d_named), named)
        await b.put_bytes(content_key(d_loose), loose)
        await b.put_bytes("content/foreign-object", b"not ours")
        await b.put_bytes(segment_key(uid, "gone", 0, 10), b"0123456789")
        assert await db.start_stream(
            uid, "live", name="l", size=10, mtime=0.0, owner="hub", lease_for=9.0
        )
        await b.put_bytes(segment_key(uid, "live", 0, 10), b"0123456789")
        assert await sweep(b, db, grace=3600) == (0, 0)  # everything is too young
        assert await sweep(b, db, grace=0) == (1, 1)
        left = set(s3.keys("freight-sweep", "p/"))
        assert left == {
            "p/" + content_key(d_named),
            "p/content/foreign-object",
            "p/" + segment_key(uid, "live", 0, 10),
        }


async def test_the_sweep_leaves_content_this_node_is_still_recording(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    """Content written and recorded while a sweep runs (the record made
    after the sweep asked which digests are named) is not removed, however
    short the grace; once nothing holds or names it, it goes."""
    async with _store_and_db(tmp_path, s3, "freight-sweep-race") as (b, db, uid):
        body = os.urandom(100)
        digest = blake3.blake3(body).hexdigest()
        asked = db.referenced_digests
        recorded = asyncio.Event()

        async def record_meanwhile(digests: list[str]) -> set[str]:
            named = await asked(digests)  # before the record: not named
            recorded.set()  # the writer records it and lets go, mid-sweep
            await writing
            return named

        async def write_and_record() -> None:
            with b.holding([digest]):
                await b.put_bytes(content_key(digest), body)
                await recorded.wait()
                await db.publish(uid, "s1", name="new.bin", size=100, digest=digest, mtime=0.0)

        writing = asyncio.ensure_future(write_and_record())
        await asyncio.sleep(0)
        while not s3.keys("freight-sweep-race", "p/content/"):
            await asyncio.sleep(0.01)
        db.referenced_digests = record_meanwhile  # type: ignore[method-assign]
        assert await asyncio.wait_for(sweep(b, db, grace=0), 30) == (0, 0)
        assert list(s3.keys("freight-sweep-race", "p/content/")) == ["p/" + content_key(digest)]
        db.referenced_digests = asked  # type: ignore[method-assign]
        assert await sweep(b, db, grace=0) == (0, 0)  # named now
        await db.delete_file(uid, "new.bin")
        assert await sweep(b, db, grace=0) == (1, 0)  # named by nothing, held by nobody


async def test_content_is_made_of_its_segments_and_its_last_bytes(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    """Segments of at least 5 MiB are copied inside the store; smaller ones
    (a short checkpoint interval) mean the whole file is sent instead."""
    data = os.urandom(32 * MiB + 11)
    part = tmp_path / "part"
    part.write_bytes(data)
    b = await _open(s3, "freight-compose")
    try:
        step = 8 * MiB
        known = []
        for start in range(0, 32 * MiB, step):
            key = segment_key(1, "big", start, start + step, "0a0b0c0d")
            await b.put_bytes(key, data[start : start + step])
            known.append(Listed(key, step, 0.0))
        await store_content(b, part, "a" * 64, known, 32 * MiB)
        assert s3.read("freight-compose", "p/" + content_key("a" * 64)) == data
        etag = s3.client.head_object(Bucket="freight-compose", Key="p/" + content_key("a" * 64))
        assert etag["ETag"].endswith('-5"')  # four copied segments and the last bytes
        # Segments not known to hold the verified bytes (another node's, a
        # stale attempt's) are never used: the file is sent whole.
        await b.put_bytes(segment_key(1, "big", 0, step, "ffffffff"), b"x" * step)
        await store_content(b, part, "b" * 64, [], 32 * MiB)
        assert s3.read("freight-compose", "p/" + content_key("b" * 64)) == data
        small = [Listed(segment_key(1, "s", i * MiB, (i + 1) * MiB), MiB, 0.0) for i in range(4)]
        await store_content(b, part, "c" * 64, small, 4 * MiB)  # parts too small to copy
        assert s3.read("freight-compose", "p/" + content_key("c" * 64)) == data
    finally:
        await b.close()


async def test_checkpoints_write_a_segment_of_at_least_5_mib_before_recording_it(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
) -> None:
    async with _store_and_db(tmp_path, s3, "freight-ckpt") as (b, db, uid):
        assert await db.start_stream(
            uid, "p1", name="f", size=12 * MiB, mtime=0.0, owner="hub", lease_for=9.0
        )
        await b.put_bytes(segment_key(uid, "p1", 0, 6 * MiB, "0badc0de"), b"stale")  # earlier try
        part = tmp_path / "p1.part"
        data = os.urandom(12 * MiB)
        part.write_bytes(data)
        cp = BucketCheckpoints(DatabaseCheckpoints(db, uid, "p1", SoleNode()), b, part, uid, "p1")
        await cp.fresh()
        assert s3.keys("freight-ckpt", "p/partial/") == {}
        await cp.save(4 * MiB)  # below 5 MiB: neither written nor recorded
        assert s3.keys("freight-ckpt", "p/partial/") == {} and await cp.load() == 0
        await cp.save(6 * MiB)
        (key,) = s3.keys("freight-ckpt", "p/partial/")
        assert key == "p/" + segment_key(uid, "p1", 0, 6 * MiB, cp.token)
        assert s3.read("freight-ckpt", key) == data[: 6 * MiB]
        assert await cp.load() == 6 * MiB and [s.size for s in cp.known] == [6 * MiB]
        await cp.clear()  # the push is worthless: row and segments go
        assert s3.keys("freight-ckpt", "p/partial/") == {} and await cp.load() is None
