"""The hub's blobs in an S3-compatible bucket (``--blobs s3://BUCKET/PREFIX``).

What lives there, under the prefix:

* ``content/<blake3>``: every stored file's bytes and every collected
  content, named by their BLAKE3 digest. An object never changes once
  written (the same name is the same bytes), so a pull reading it in ranges
  never sees two versions, and two accounts (or two names) holding the
  same bytes hold them once. A file's record in the database names its
  digest; content no record names is removed by the sweep
  (:func:`freight.hub.blobfiles.sweep`) once it is older than a grace period.
* ``partial/<user>/<sid>/<start>-<end>.<receiver>``: the bytes of a push
  between two checkpoints, written before the checkpoint is recorded: a push resumes
  on any node from them (the node receiving it keeps its partial file on
  its own disk as well and reads it from there).

aiobotocore is imported when a bucket is opened: a hub on a folder does
not load it. Every failure is a :class:`~freight.errors.StorageError`
that says which bucket and what to check.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, StorageError

PART_BYTES = 16 * 1024 * 1024  # multipart uploads' part size
MIN_PART = 5 * 1024 * 1024  # S3's least part (but the last)
MAX_PARTS = 10_000  # S3's most parts
MULTIPART_FROM = 2 * PART_BYTES  # smaller files go in one request
UPLOADS_AT_ONCE = 4  # parts (or small objects) sent at once per call
READ_BLOCK = 8 * 1024 * 1024  # ranged reads of a download
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT = re.compile(r"^(\d{15})-(\d{15})(?:\.[0-9a-f]{8})?$")
_HINT = "check --blobs, --s3-endpoint and the AWS_* credentials, and that the bucket exists"


@dataclass(frozen=True)
class BucketSpec:
    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None) -> BucketSpec:
        """``s3://BUCKET`` or ``s3://BUCKET/PREFIX``; ConfigError otherwise."""
        try:
            parts = urlsplit(url)
        except ValueError:  # such as an unclosed [
            parts = urlsplit("")
        if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
            raise ConfigError(
                f"--blobs must look like s3://BUCKET or s3://BUCKET/PREFIX, not {url!r}",
                hint="a bucket name is 3 to 63 lower-case letters, digits, dots and dashes",
            )
        prefix = parts.path.strip("/")
        if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
            raise ConfigError(f"--blobs has a bad prefix {prefix!r}")
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"--s3-endpoint must be an http(s):// URL, not {endpoint!r}")
        return cls(parts.netloc, prefix + "/" if prefix else "", endpoint or None)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def content_key(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("not a BLAKE3 digest")
    return f"content/{digest}"


def segments_prefix(user_id: int, sid: str) -> str:
    return f"partial/{user_id}/{sid}/"


def segment_key(user_id: int, sid: str, start: int, end: int, token: str = "") -> str:
    """Bytes ``start`` to ``end`` of a push, as written by receiver ``token``."""
    return f"{segments_prefix(user_id, sid)}{start:015d}-{end:015d}" + (
        f".{token}" if token else ""
    )


def segment_range(key: str) -> tuple[int, int] | None:
    m = _SEGMENT.match(key.rsplit("/", 1)[-1])
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Listed:
    key: str  # without the bucket's prefix
    size: int
    modified: float  # seconds since the epoch


class Bucket:
    """One bucket (and prefix) of an S3-compatible store; open it with
    :meth:`open`, close it with :meth:`close`."""

    def __init__(self, spec: BucketSpec, client: Any, stack: contextlib.AsyncExitStack) -> None:
        self.spec = spec
        self._c = client
        self._stack = stack
        self._errors: tuple[type[BaseException], ...] = ()
        # Content this node is writing and has not recorded yet, and what
        # was held or let go since the sweep last looked (:meth:`holding`).
        self.held: collections.Counter[str] = collections.Counter()
        self._touched: set[str] = set()

    @classmethod
    async def open(cls, spec: BucketSpec) -> Bucket:
        """Connect and check that the bucket answers (StorageError if not)."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
        from botocore.exceptions import BotoCoreError, ClientError

        stack = contextlib.AsyncExitStack()
        config = AioConfig(
            max_pool_connections=32,
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 4, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=spec.endpoint,
                region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                config=config,
            )
        )
        bucket = cls(spec, client, stack)
        bucket._errors = (BotoCoreError, ClientError, OSError, asyncio.TimeoutError)
        reached = False
        try:
            await bucket._call("head_bucket", what="reach", Bucket=spec.bucket)
            reached = True
        finally:
            if not reached:
                await stack.aclose()
        return bucket

    async def close(self) -> None:
        await self._stack.aclose()

    async def _call(self, op: str, *, what: str = "use", **kw: Any) -> Any:
        try:
            return await getattr(self._c, op)(**kw)
        except self._errors as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: BaseException) -> StorageError:
        detail = getattr(exc, "response", {}).get("Error", {}).get("Code") or str(exc)
        return StorageError(f"the hub cannot {what} its bucket {self.spec}: {detail}", hint=_HINT)

    @contextlib.contextmanager
    def holding(self, digests: Iterable[str]) -> Iterator[None]:
        """Content this node writes and then records, from before the first
        byte is written until the record is made: the sweep leaves it alone
        (one that was under way when a sweep began included)."""
        held = list(digests)
        self.held.update(held)
        self._touched.update(held)
        try:
            yield
        finally:
            self.held.subtract(held)
            self._touched.update(held)
            for d in held:
                if self.held[d] <= 0:
                    del self.held[d]

    def touched(self) -> set[str]:
        """The content held now, or held at any time since the last call."""
        seen, self._touched = self._touched, set()
        return seen | set(self.held)

    def _key(self, key: str) -> str:
        return self.spec.prefix + key

    # --- writing ---------------------------------------------------------------

    async def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        await self._call("put_object", what="write to", Bucket=self.spec.bucket,
                         Key=self._key(key), Body=bytes(data))  # fmt: skip

    async def put_range(self, key: str, path: Path, start: int, end: int) -> None:
        """Bytes ``start`` to ``end`` of the local file ``path`` as one object."""
        data = await asyncio.to_thread(_read_range, path, start, end)
        await self.put_bytes(key, data)

    async def put_file(self, key: str, path: Path) -> None:
        """The whole local file ``path`` as ``key`` (in parts when large)."""
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size < MULTIPART_FROM:
            await self.put_range(key, path, 0, size)
            return
        await self._multipart(key, [], path, 0, size)

    async def compose(
        self, key: str, parts: Sequence[str], path: Path, start: int, end: int
    ) -> None:
        """``key`` made of the objects ``parts`` (copied inside the store,
        each at least MIN_PART) followed by bytes ``start`` to ``end`` of
        the local file ``path``."""
        await self._multipart(key, parts, path, start, end)

    async def _multipart(
        self, key: str, copies: Sequence[str], path: Path, start: int, end: int
    ) -> None:
        full = self._key(key)
        up = await self._call("create_multipart_upload", what="write to",
                              Bucket=self.spec.bucket, Key=full)  # fmt: skip
        upload_id = up["UploadId"]
        gate = asyncio.Semaphore(UPLOADS_AT_ONCE)
        common = {"Bucket": self.spec.bucket, "Key": full, "UploadId": upload_id}

        async def copy(n: int, source: str) -> dict[str, Any]:
            async with gate:
                src = {"Bucket": self.spec.bucket, "Key": self._key(source)}
                res = await self._call("upload_part_copy", what="write to", PartNumber=n,
                                       CopySource=src, **common)  # fmt: skip
                return {"PartNumber": n, "ETag": res["CopyPartResult"]["ETag"]}

        async def part(n: int, at: int) -> dict[str, Any]:
            async with gate:
                data = await asyncio.to_thread(_read_range, path, at, min(end, at + PART_BYTES))
                res = await self._call("upload_part", what="write to", PartNumber=n, Body=data,
                                       **common)  # fmt: skip
                return {"PartNumber": n, "ETag": res["ETag"]}

        jobs = [copy(i + 1, k) for i, k in enumerate(copies)]
        jobs += [part(len(jobs) + i + 1, at) for i, at in enumerate(range(start, end, PART_BYTES))]
        completed = False
        try:
            parts = await asyncio.gather(*jobs)
            await self._call("complete_multipart_upload", what="write to",
                             MultipartUpload={"Parts": list(parts)}, **common)  # fmt: skip
            completed = True
        finally:
            if not completed:  # its parts would otherwise be kept (and billed)
                with contextlib.suppress(Exception):
                    await self._c.abort_multipart_upload(**common)

    async def delete(self, keys: Sequence[str]) -> None:
        for at in range(0, len(keys), 1000):  # S3's limit per request
            batch = [{"Key": self._key(k)} for k in keys[at : at + 1000]]
            await self._call("delete_objects", what="delete from", Bucket=self.spec.bucket,
                             Delete={"Objects": batch, "Quiet": True})  # fmt: skip

    async def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in await self.list(prefix)]
        if keys:
            await self.delete(keys)
        return len(keys)

    # --- reading ---------------------------------------------------------------

    async def read(self, key: str, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes from ``offset`` (StorageError if fewer)."""
        if n <= 0:
            return b""
        res = await self._call("get_object", what="read from", Bucket=self.spec.bucket,
                               Key=self._key(key), Range=f"bytes={offset}-{offset + n - 1}")  # fmt: skip
        try:
            async with res["Body"] as body:
                data: bytes = await body.read()
        except self._errors as exc:
            raise self._error("read from", exc) from None
        if len(data) != n:
            raise StorageError(f"{key} in the hub's bucket is shorter than recorded")
        return data

    async def read_all(self, keys: Sequence[str], sizes: Sequence[int]) -> list[bytes]:
        """Several small objects whole, each exactly its recorded size."""
        gate = asyncio.Semaphore(UPLOADS_AT_ONCE * 4)

        async def one(key: str, size: int) -> bytes:
            async with gate:
                return await self.read(key, 0, size) if size else b""

        return list(await asyncio.gather(*(one(k, s) for k, s in zip(keys, sizes, strict=True))))

    async def size(self, key: str) -> int | None:
        try:
            res = await self._c.head_object(Bucket=self.spec.bucket, Key=self._key(key))
        except self._errors as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("read from", exc) from None
        return int(res["ContentLength"])

    async def list(self, prefix: str) -> list[Listed]:
        out: list[Listed] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.spec.bucket, "Prefix": self._key(prefix)}
            if token:
                kw["ContinuationToken"] = token
            res = await self._call("list_objects_v2", what="list", **kw)
            for o in res.get("Contents", []):
                key = str(o["Key"])[len(self.spec.prefix) :]
                out.append(Listed(key, int(o["Size"]), o["LastModified"].timestamp()))
            if not res.get("IsTruncated"):
                return out
            token = res.get("NextContinuationToken")


def _read_range(path: Path, start: int, end: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, end - start, start)
        while len(data) < end - start:
            more = os.pread(fd, end - start - len(data), start + len(data))
            if not more:
                raise StorageError(f"{path.name} is shorter than {end} bytes")
            data += more
        return data
    finally:
        os.close(fd)
