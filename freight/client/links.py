"""Links to files on the hub (``freight share``, ``freight fetch``,
``freight links``) and the by-reference manner of jobs: data sealed with a
fresh key (:mod:`freight.protocol.refseal`), stored on the hub, fetched
once through a link (docs/protocol.md §17).

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
import re
import secrets
import ssl
import struct
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import aiohttp
import blake3
from yarl import URL

from ..engine.partial import FolderPlace, LengthCheckpoints, PartialFile
from ..engine.pipeline import WriteBehind
from ..errors import (
    FreightError,
    IntegrityError,
    NetworkError,
    RateLimited,
    RemoteError,
    StorageError,
    TLSError,
    UsageError,
    code_to_error,
)
from ..names import check_name, check_user_name, has_control
from ..protocol import refseal
from ..protocol import sendrecv as wire
from ..transport.proxy import choose_proxy
from ..units import parse_duration
from .config import PROXY_ENV, ClientConfig
from .options import DISK_FULL_ERRNOS, QuietReporter
from .safefs import DEFAULT_FILE_MODE, Tree
from .session import HubSession, ca_context, canonical_url, hostport, parse_hub_url

if TYPE_CHECKING:
    from .api import Client
    from .relay import Connection

BLOCK = 4 << 20
PART = ".freight-part"
MAX_RECORD = 64 << 20  # a packed record (about 1 MiB in practice)
JOBS_PREFIX = ".jobs/"
DEFAULT_SHARE = 86400.0
DEFAULT_REFERENCE = 15 * 60.0
_LEN = struct.Struct(">I")


# --- reaching a link ---------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How to reach a link: the TLS trust, a bearer token (only for the
    hub this login belongs to) and a proxy."""

    tls: ssl.SSLContext | aiohttp.Fingerprint | bool
    token: str = ""
    proxy: URL | None = None

    def session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=120)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.tls),
            headers=headers,
            timeout=timeout,
            proxy=self.proxy,
        )


def parse_link(link: str) -> tuple[URL, str]:
    """A link's URL and the certificate fingerprint written after ``#``
    (``https://hub:8443/v1/links/TOKEN#SHA256:…``), or ""."""
    url = URL(link.strip())
    if url.scheme != "https" or not url.host:
        raise UsageError(f"a link looks like https://HOST:PORT/v1/links/TOKEN, not {link!r}")
    fragment = url.fragment
    if fragment and not re.fullmatch(r"SHA256:[0-9a-f]{64}", fragment):
        raise UsageError("the part after '#' must be the hub's fingerprint, SHA256:<64 hex>")
    return url.with_fragment(None), fragment


def access_for(
    url: URL, config: ClientConfig | None, *, fingerprint: str = "", ca_pem: str = ""
) -> Access:
    """The trust to reach ``url`` with. With a login for that hub: the
    login's own trust and token (a link naming another certificate is
    refused: the token never goes to a server the link alone vouches
    for). Else the fingerprint or CA given with the link, else the pin
    saved for that hub, else the system's CAs."""
    if config is not None:
        hub = canonical_url(parse_hub_url(f"https://{hostport(url)}"))
        try:
            session: HubSession | None = HubSession.from_config(config, hub)
        except FreightError:
            session = None
        if session is not None:
            if session.ca_file is not None:
                return Access(ca_context(session.ca_file), session.token, session.proxy)
            if fingerprint and fingerprint != session.fingerprint:
                raise TLSError(
                    f"the link names certificate {fingerprint}, but {session.fingerprint} "
                    f"is pinned for {hostport(url)}",
                    hint="ask for the link again; if the hub's certificate was replaced, "
                    "log in again",
                )
            return Access(_pin(session.fingerprint), session.token, session.proxy)
        pinned = config.pinned(hostport(url))
        if pinned and not fingerprint and not ca_pem:
            return Access(_pin(pinned))
    return Access(_trust(fingerprint, ca_pem))


def _pin(fingerprint: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(fingerprint.removeprefix("SHA256:")))


def _trust(fingerprint: str, ca_pem: str) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    if fingerprint:
        return _pin(fingerprint)
    if ca_pem:
        try:
            return ssl.create_default_context(cadata=ca_pem)
        except ssl.SSLError as exc:
            raise UsageError(f"the reference's CA certificate does not load: {exc}") from None
    return True


async def _refusal(resp: aiohttp.ClientResponse) -> FreightError:
    """The hub's error answer as its typed error."""
    try:
        body = await resp.json(content_type=None)
        err = body.get("error", {}) if isinstance(body, dict) else {}
    except (ValueError, aiohttp.ClientError):
        err = {}
    exc = code_to_error(err.get("code", "remote"), err.get("message", resp.reason or ""))
    if isinstance(exc, RateLimited):
        with contextlib.suppress(ValueError):
            exc.retry_after = float(resp.headers.get("Retry-After", "0"))
    if resp.status == 416:
        return RemoteError("the hub holds less than was asked for; fetch it again")
    return exc


@contextlib.asynccontextmanager
async def _get(
    http: aiohttp.ClientSession, url: URL, byte_range: str = ""
) -> AsyncIterator[aiohttp.ClientResponse]:
    headers = {"Range": byte_range} if byte_range else {}
    try:
        async with http.get(url, headers=headers) as resp:
            if resp.status >= 400:
                raise await _refusal(resp)
            yield resp
    except aiohttp.ServerFingerprintMismatch as exc:
        raise NetworkError(
            f"the hub at {hostport(url)} presents certificate SHA256:{exc.got.hex()}, "
            "not the one the link names"
        ) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise TLSError(
            f"the certificate of {hostport(url)} is not one this machine trusts "
            f"({exc.certificate_error})",
            hint="use the link as it was shared, with its #SHA256:… part, or log in to that hub",
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NetworkError(f"cannot fetch from {hostport(url)}: {exc or 'timed out'}") from None


# --- links on the hub ------------------------------------------------------------------


async def create_link(
    client: Client,
    name: str,
    *,
    to: str | None = None,
    expires: float | str = DEFAULT_SHARE,
    uses: int = 1,
) -> dict[str, Any]:
    """A link to your file ``name`` on the hub (for ``to`` alone, if given);
    the answer has ``url`` (with the hub's fingerprint after ``#`` when it
    is pinned) and ``token``."""
    seconds = parse_duration(expires) if isinstance(expires, str) else float(expires)
    body = {
        "name": check_name(name),
        "expires": seconds,
        "uses": uses,
        "to": check_user_name(to) if to else None,
    }
    out = dict(await client.request("POST", "/v1/links", body))
    fingerprint = client.session.fingerprint
    if fingerprint and not client.session.ca_file:
        out["url"] = f"{out['url']}#{fingerprint}"
    return out


async def list_links(client: Client) -> list[dict[str, Any]]:
    """Links you made and links made for you."""
    return list(await client.request("GET", "/v1/links"))


async def revoke_link(client: Client, token: str) -> dict[str, Any]:
    """Revoke one of your links (its token, its URL or its id)."""
    token = token.strip().rsplit("/", 1)[-1].split("#", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", token):
        raise UsageError("give a link, its token or its id (see: freight links)")
    return dict(await client.request("DELETE", f"/v1/links/{token}"))


def _file_name(resp: aiohttp.ClientResponse, url: URL) -> str:
    """The name the hub gives the file (its last part), checked."""
    disposition = resp.headers.get("Content-Disposition", "")
    m = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
    name = unquote(m.group(1)) if m else url.name
    if not name or "/" in name or name in (".", "..") or has_control(name) or "\\" in name:
        return "download"
    return name


async def fetch_link(
    link: str,
    out: Path | None = None,
    *,
    config: ClientConfig | None = None,
    reporter: Any = None,
) -> dict[str, Any]:
    """Fetch a link into ``out`` (a file, or a folder to put it in; default:
    the current folder), resumed where an earlier try stopped, and checked
    against the file's BLAKE3 before it takes its place.

    A first request for one byte tells the file's name, size and digest
    (and any refusal, with its reason) without spending the link; the
    second asks for what the partial file does not hold yet."""
    url, fingerprint = parse_link(link)
    access = access_for(url, config, fingerprint=fingerprint)
    rep: Any = reporter or QuietReporter()
    began = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(access.session())
        probe = await stack.enter_async_context(_get(http, url, "bytes=0-0"))
        digest = probe.headers.get("X-Freight-Digest", "")
        size = int(probe.headers.get("X-Freight-Size", "0"))
        name = _file_name(probe, url)
        base = out or Path(".")
        target = base / name if base.is_dir() else base
        if target != out and target.exists():  # a name the hub chose replaces nothing
            raise UsageError(f"{target} exists already; give -o PATH to replace it")
        file, folder, part = _partial(target, digest, size)
        stack.callback(folder.close)
        stack.callback(file.close)
        start = await file.resume()
        if probe.status == 200:  # an empty file: the probe brought it all
            file.open_at(start := 0)
            await _write_body(probe, file, 0, part, rep, name, size)
        elif start < size:
            probe.close()
            byte_range = f"bytes={start}-" if start else ""
            async with _get(http, url, byte_range) as resp:
                if start and resp.status != 206:  # the whole file after all
                    file.open_at(start := 0)
                await _write_body(resp, file, start, part, rep, name, size)
        if file.done != size:
            raise NetworkError("the hub ended the file early; fetch it again to resume")
        verified, actual = await file.finish(digest)
        if not verified:
            raise IntegrityError(
                f"what arrived does not match the digest the hub gave ({actual[:16]}…)"
            )
    seconds = time.monotonic() - began
    result = {
        "path": str(target),
        "name": name,
        "size": size,
        "digest": digest,
        "resumed_from": start,
        "seconds": round(seconds, 3),
        "bytes_per_second": round((size - start) / seconds) if seconds > 0 else 0,
    }
    rep.finish(name, result)
    return result


def _partial(target: Path, digest: str, size: int) -> tuple[PartialFile, Tree, Path]:
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise RemoteError("the hub's answer names no digest for the file")
    part = target.with_name(f"{target.name}.{digest[:16]}{PART}")
    folder = Tree.open(target.parent if str(target.parent) else Path("."))
    place = FolderPlace(folder, (part.name,), target.name, mode=DEFAULT_FILE_MODE, shown=str(part))
    return PartialFile(place, LengthCheckpoints(place), size), folder, part


async def _write_body(
    resp: aiohttp.ClientResponse,
    file: PartialFile,
    offset: int,
    part: Path,
    rep: Any,
    name: str,
    size: int,
) -> None:
    """The response's bytes into ``file`` from ``offset``: the event loop
    reads (and decrypts TLS), one worker thread writes and hashes behind
    it, in pieces of about a block."""
    rep.start(name, size)
    rep.update(name, offset)
    writer = WriteBehind(4 * BLOCK, name="freight-fetch")
    pending: list[bytes] = []
    held = 0
    try:
        async for data in resp.content.iter_any():
            pending.append(data)
            held += len(data)
            if held >= BLOCK:
                piece, pending, held = b"".join(pending), [], 0
                await writer.submit(file.write, offset, piece, size=len(piece))
                offset += len(piece)
                rep.update(name, offset)
        if pending:
            piece = b"".join(pending)
            await writer.submit(file.write, offset, piece, size=len(piece))
            offset += len(piece)
        await writer.call(file.flush)
        rep.update(name, offset)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise StorageError(f"local disk full writing {part}") from None
        raise StorageError(f"cannot write {part}: {exc.strerror or exc}") from None
    except aiohttp.ClientError as exc:
        raise NetworkError(f"the download stopped: {exc}; fetch it again to resume") from None
    finally:
        await writer.aclose()


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


async def put_reference(client: Client, paths: list[Path], *, expires: float) -> dict[str, Any]:
    """Pack ``paths``, seal them with a fresh key, store the ciphertext on
    the hub under ``.jobs/<random>`` and make a single-use link to it.
    Returns what the receiver needs (the key among it: keep it secret)."""
    from .sendrecv import build_manifest, send_entries

    entries = build_manifest(paths)
    key = secrets.token_bytes(refseal.KEY_BYTES)
    name = f"{JOBS_PREFIX}{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="freight-ref-") as tmp:
        sealed_path = Path(tmp) / "reference"
        with open(sealed_path, "wb") as out:
            conn = _PackConn(out, refseal.RefSealer(key), len(entries))
            summary = await send_entries(cast("Connection", conn), entries, QuietReporter())
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
        self.buf = bytearray()
        self.pos = 0  # where the next record starts in buf
        self.plain = blake3.blake3()
        self.bytes = 0
        self.cipher = blake3.blake3()
        self.sealed = 0
        self.ended = False
        self.verdict: wire.Verdict | None = None

    def _open(self, data: bytes, last: bool) -> None:
        """Hash, open and hash again (in a worker thread: AES-GCM and BLAKE3
        of a block take longer than the event loop should wait)."""
        self.cipher.update(data)
        self.sealed += len(data)
        pieces = self.opener.feed(data)
        if last:
            pieces.append(self.opener.finish())
        del self.buf[: self.pos]  # what the records taken so far held
        self.pos = 0
        for piece in pieces:
            self.plain.update(piece)
            self.bytes += len(piece)
            self.buf += piece

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
        await asyncio.to_thread(self._open, b"".join(parts), self.ended)
        return True

    async def recv(self) -> bytes:
        while True:
            held = len(self.buf) - self.pos
            if held >= _LEN.size:
                (n,) = _LEN.unpack_from(self.buf, self.pos)
                if n > MAX_RECORD:
                    raise IntegrityError(f"a record of {n} bytes in the reference")
                if held >= _LEN.size + n:
                    start = self.pos + _LEN.size
                    self.pos = start + n
                    with memoryview(self.buf) as view:
                        return bytes(view[start : self.pos])
            if not await self._more():
                if len(self.buf) > self.pos:
                    raise IntegrityError("the reference ends inside a record")
                return b""

    async def send(self, data: bytes) -> None:
        if data[:1] == b"K":
            self.verdict = wire.decode(data, wire.Verdict)

    async def drain(self) -> None:
        """Read to the end: every byte is authenticated and hashed."""
        while await self._more():
            pass
        if len(self.buf) > self.pos:
            raise IntegrityError("bytes after the last record of the reference")


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
    proxy = _proxy_for(url, config)
    if not key_hex:
        return await _fetch_plain(
            ref, url, dest, Access(_trust(fingerprint, ca), proxy=proxy), reporter
        )
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise UsageError("a reference's key must be hex") from None
    from .receiving import Destination, receive_entries

    access = Access(_trust(fingerprint, ca), proxy=proxy)
    async with access.session() as http, _get(http, url) as resp:
        conn = _UnpackConn(resp.content.iter_any().__aiter__(), refseal.RefOpener(key))
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
    async with access.session() as http, _get(http, url) as resp:
        name = _file_name(resp, url)
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
