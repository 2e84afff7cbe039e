"""The by-reference manner of jobs: data sealed with a fresh key
(:mod:`freight.protocol.refseal`), stored on the hub, fetched once through
a link made by :mod:`.links` (docs/protocol.md §17).

A reference packs its files as ``freight send`` lists and sends them (the
records of :mod:`.sendrecv`, each as a 4-byte length and its bytes), seals
that stream, pushes it to the hub under ``.jobs/<random>`` and makes a
single-use link. Its receiver needs no login: the link is the capability,
the key (which only travels in the job proposal) makes it readable, and the
files are unpacked by :mod:`.receiving`'s rules (never outside the
destination).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import struct
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import blake3
from yarl import URL

from ..errors import (
    FreightError,
    IntegrityError,
    NetworkError,
    UsageError,
)
from ..protocol import refseal
from ..protocol import sendrecv as wire
from ..transport.proxy import choose_proxy
from .config import PROXY_ENV, ClientConfig
from .options import QuietReporter
from .session import HubSession, canonical_url, hostport, parse_hub_url

if TYPE_CHECKING:
    from .api import Client
    from .relay import Connection

from .links import (
    BLOCK,
    PART,
    Access,
    create_link,
    open_link,
    served_name,
    trust_for,
)

MAX_RECORD = 64 << 20  # a packed record (about 1 MiB in practice)
JOBS_PREFIX = ".jobs/"  # where references are stored on the hub
_LEN = struct.Struct(">I")

# --- references: sealed data behind a single-use link ---------------------------------


class _PackConn:
    """What :func:`.sendrecv.send_entries` talks to when the receiver is a
    file: every record goes into the sealed stream, and the receiver's
    answers are the ones a receiver holding nothing gives."""

    def __init__(self, out: Any, sealer: refseal.RefSealer, count: int) -> None:
        self.out = out
        self.sealer = sealer
        self.count = count
        self.plain = blake3.blake3()
        self.cipher = blake3.blake3()
        self.bytes = 0
        self.sealed = 0
        self.answers: deque[bytes] = deque()
        self.first = True

    def _put(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.cipher.update(piece)
            self.out.write(piece)
            self.sealed += len(piece)

    def _seal(self, record: bytes) -> None:
        """Hash, seal, hash and write one record (in a worker thread)."""
        self.plain.update(record)
        self._put(self.sealer.feed(record))

    async def send(self, data: bytes) -> None:
        record = _LEN.pack(len(data)) + data
        self.bytes += len(record)
        await asyncio.to_thread(self._seal, record)
        if self.first:  # the list of files: the receiver holds none of them
            self.first = False
            self.answers.append(wire.encode(wire.Holdings(have=[(0, "")] * self.count)))
        elif data == b"Z":
            self.answers.append(wire.encode(wire.Verdict(ok=True)))

    async def recv(self) -> bytes:
        return self.answers.popleft() if self.answers else b""

    async def finish(self) -> None:
        await asyncio.to_thread(lambda: self._put(self.sealer.finish()))


async def put_reference(
    client: Client, paths: list[Path], *, expires: float, reporter: Any = None
) -> dict[str, Any]:
    """Pack ``paths``, seal them with a fresh key, store the ciphertext on
    the hub under ``.jobs/<random>`` and make a single-use link to it
    (``reporter`` shows the files being packed). Returns what the receiver
    needs (the key among it: keep it secret)."""
    from .sendrecv import build_manifest, send_entries

    entries = build_manifest(paths)
    key = secrets.token_bytes(refseal.KEY_BYTES)
    name = f"{JOBS_PREFIX}{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="freight-ref-") as tmp:
        sealed_path = Path(tmp) / "reference"
        with open(sealed_path, "wb") as out:
            conn = _PackConn(out, refseal.RefSealer(key), len(entries))
            summary = await send_entries(
                cast("Connection", conn), entries, reporter or QuietReporter()
            )
            await conn.finish()
        results = await client.push(sealed_path, as_name=name)
    if results[0].digest != conn.cipher.hexdigest():
        raise IntegrityError("the hub stored other bytes than were sealed; try again")
    link = await create_link(client, name, expires=expires, uses=1)
    session = client.session
    ca = ""
    if session.ca_file is not None:
        with contextlib.suppress(OSError):
            ca = session.ca_file.read_text()
    return {
        "url": str(link["url"]).split("#", 1)[0],
        "key": key.hex(),
        "size": conn.sealed,
        "digest": conn.cipher.hexdigest(),
        "bytes": conn.bytes,
        "files": summary.files,
        "blake3": conn.plain.hexdigest(),
        "ca": ca,
        "fingerprint": "" if ca else session.fingerprint,
        "expires_at": link["expires_at"],
    }


class _UnpackConn:
    """What :func:`.receiving.receive_entries` talks to when the sender is
    a sealed reference being downloaded: records come out of the opened
    stream; the receiver's answers are kept (its verdict says how it ended)."""

    def __init__(self, chunks: AsyncIterator[bytes], opener: refseal.RefOpener) -> None:
        self.chunks = chunks
        self.opener = opener
        # Opened plaintext not taken yet, as the opener gave it: a record is
        # copied once, out of these, not into a buffer first and out again.
        self.pieces: deque[bytes] = deque()
        self.head = 0  # bytes of pieces[0] already taken
        self.held = 0  # bytes in pieces not taken
        self.want: int | None = None  # the length of the record being read
        self.plain = blake3.blake3()
        self.bytes = 0
        self.cipher = blake3.blake3()
        self.sealed = 0
        self.ended = False
        self.verdict: wire.Verdict | None = None

    def _open(self, parts: list[bytes], last: bool) -> list[bytes]:
        """Hash, open and hash again (in a worker thread: AES-GCM and BLAKE3
        of a block take longer than the event loop should wait). The parts
        go to the opener as they came, not joined first."""
        pieces: list[bytes] = []
        for part in parts:
            self.cipher.update(part)
            self.sealed += len(part)
            pieces += self.opener.feed(part)
        if last:
            pieces.append(self.opener.finish())
        for piece in pieces:
            self.plain.update(piece)
            self.bytes += len(piece)
        return pieces

    async def _more(self) -> bool:
        """Read about a block more (or the end) and open it."""
        if self.ended:
            return False
        parts: list[bytes] = []
        held = 0
        while held < BLOCK:
            try:
                part = await anext(self.chunks)
            except StopAsyncIteration:
                self.ended = True
                break
            parts.append(part)
            held += len(part)
        for piece in await asyncio.to_thread(self._open, parts, self.ended):
            if piece:
                self.pieces.append(piece)
                self.held += len(piece)
        return True

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes of plaintext (``n <= self.held``)."""
        first = self.pieces[0]
        if len(first) - self.head >= n:
            out = first[self.head : self.head + n]
            self.head += n
        else:
            views: list[memoryview] = []
            need = n
            while need:
                piece = self.pieces[0]
                take = min(need, len(piece) - self.head)
                views.append(memoryview(piece)[self.head : self.head + take])
                self.head += take
                need -= take
                if self.head == len(piece):
                    self.pieces.popleft()
                    self.head = 0
            out = b"".join(views)
        if self.pieces and self.head == len(self.pieces[0]):
            self.pieces.popleft()
            self.head = 0
        self.held -= n
        return out

    async def recv(self) -> bytes:
        while True:
            if self.want is None and self.held >= _LEN.size:
                (n,) = _LEN.unpack(self._take(_LEN.size))
                if n > MAX_RECORD:
                    raise IntegrityError(f"a record of {n} bytes in the reference")
                self.want = n
            if self.want is not None and self.held >= self.want:
                n, self.want = self.want, None
                return self._take(n) if n else b""
            if not await self._more():
                if self.held or self.want is not None:
                    raise IntegrityError("the reference ends inside a record")
                return b""

    async def send(self, data: bytes) -> None:
        if data[:1] == b"K":
            self.verdict = wire.decode(data, wire.Verdict)

    async def drain(self) -> None:
        """Read to the end: every byte is authenticated and hashed."""
        while await self._more():
            pass
        if self.held or self.want is not None:
            raise IntegrityError("bytes after the last record of the reference")


async def _as_received(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body in the pieces the socket gave, each as it is held (``iter_any``
    would join what arrived meanwhile into a new buffer first)."""
    async for data, _ in content.iter_chunks():
        yield data


def _proxy_for(url: URL, config: ClientConfig | None) -> URL | None:
    """The proxy to reach ``url`` through: the one of this machine's login
    to that hub (as its commands use), else ``$FREIGHT_PROXY`` or
    ``HTTPS_PROXY``."""
    if config is not None:
        hub = canonical_url(parse_hub_url(f"https://{hostport(url)}"))
        with contextlib.suppress(FreightError):
            return HubSession.from_config(config, hub).proxy
    return choose_proxy(url, explicit=os.environ.get(PROXY_ENV), saved=None)


async def fetch_reference(
    ref: dict[str, object],
    dest: Path,
    reporter: Any = None,
    *,
    config: ClientConfig | None = None,
) -> tuple[int, str]:
    """Fetch a reference into the folder ``dest``: a sealed one (with a
    ``key``) is opened and unpacked there; a plain HTTPS URL is fetched as
    one file. Checks the size and BLAKE3 declared; returns (plaintext
    bytes, their BLAKE3). Needs no login; goes through the proxy this
    machine uses for that hub (``config``'s login, else the environment)."""
    url = URL(str(ref.get("url", "")))
    if url.scheme != "https" or not url.host:
        raise UsageError("a reference's url must be https://…")
    fingerprint, ca = str(ref.get("fingerprint") or ""), str(ref.get("ca") or "")
    key_hex = str(ref.get("key") or "")
    access = Access(trust_for(fingerprint, ca), proxy=_proxy_for(url, config))
    if not key_hex:
        return await _fetch_plain(ref, url, dest, access, reporter)
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise UsageError("a reference's key must be hex") from None
    from .receiving import Destination, receive_entries

    async with access.session() as http, open_link(http, url) as resp:
        conn = _UnpackConn(_as_received(resp.content), refseal.RefOpener(key))
        try:
            await receive_entries(
                cast("Connection", conn), Destination.folder(dest), reporter or QuietReporter()
            )
            await conn.drain()
        except aiohttp.ClientError as exc:
            raise NetworkError(f"the reference's download stopped: {exc}") from None
    _check(ref, "size", conn.sealed, str(ref.get("digest") or ""), conn.cipher.hexdigest())
    _check(ref, "bytes", conn.bytes, str(ref.get("blake3") or ""), conn.plain.hexdigest())
    return conn.bytes, conn.plain.hexdigest()


def _check(ref: dict[str, object], field: str, got: int, want_digest: str, digest: str) -> None:
    want = ref.get(field)
    if isinstance(want, int) and want != got:
        raise IntegrityError(f"the reference has {got} bytes where {want} were declared")
    if want_digest and want_digest != digest:
        raise IntegrityError("the reference's BLAKE3 differs from the one declared")


async def _fetch_plain(
    ref: dict[str, object], url: URL, dest: Path, access: Access, reporter: Any
) -> tuple[int, str]:
    """A plain HTTPS URL as one file in ``dest``, hashed as it arrives."""
    hasher = blake3.blake3()
    total = 0
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    async with access.session() as http, open_link(http, url) as resp:
        name = served_name(resp, url)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=PART, dir=dest)
        placed = False
        try:
            with os.fdopen(fd, "wb") as out:
                async for block in resp.content.iter_chunked(BLOCK):
                    hasher.update(block)
                    out.write(block)
                    total += len(block)
            _check(ref, "size", total, str(ref.get("blake3") or ""), hasher.hexdigest())
            os.replace(tmp, dest / name)
            placed = True
        finally:
            if not placed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return total, hasher.hexdigest()
