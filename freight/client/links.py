"""Links to files on the hub (``freight share``, ``freight fetch``,
``freight links``; docs/protocol.md §17). The by-reference manner of jobs,
which stores sealed data behind a single-use link, is :mod:`.references`.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp
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
    retry_after_seconds,
)
from ..names import check_name, check_user_name, has_control
from ..units import parse_duration
from .config import ClientConfig
from .options import DISK_FULL_ERRNOS, QuietReporter
from .safefs import DEFAULT_FILE_MODE, Tree
from .session import HubSession, ca_context, canonical_url, hostport, parse_hub_url

if TYPE_CHECKING:
    from .api import Client

BLOCK = 4 << 20
PART = ".freight-part"
DEFAULT_SHARE = 86400.0


# --- reaching a link ---------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How to reach a link: the TLS trust, a bearer token (only for the
    hub this login belongs to) and a proxy."""

    tls: ssl.SSLContext | aiohttp.Fingerprint
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
    return Access(trust_for(fingerprint, ca_pem))


def _pin(fingerprint: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(fingerprint.removeprefix("SHA256:")))


def trust_for(fingerprint: str, ca_pem: str) -> ssl.SSLContext | aiohttp.Fingerprint:
    if fingerprint:
        return _pin(fingerprint)
    if ca_pem:
        try:
            return ssl.create_default_context(cadata=ca_pem)
        except ssl.SSLError as exc:
            raise UsageError(f"the reference's CA certificate does not load: {exc}") from None
    # The system's CAs, read here: aiohttp's own default context holds none
    # in the freight command (see freight.client.trust.import_web_client).
    return ssl.create_default_context()


async def _refusal(resp: aiohttp.ClientResponse) -> FreightError:
    """The hub's error answer as its typed error."""
    try:
        body = await resp.json(content_type=None)
        err = body.get("error", {}) if isinstance(body, dict) else {}
    except (ValueError, aiohttp.ClientError):
        err = {}
    exc = code_to_error(err.get("code", "remote"), err.get("message", resp.reason or ""))
    if isinstance(exc, RateLimited):
        exc.retry_after = retry_after_seconds(resp.headers.get("Retry-After", ""))
    if resp.status == 416:
        return RemoteError("the hub holds less than was asked for; fetch it again")
    return exc


@contextlib.asynccontextmanager
async def open_link(
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


def served_name(resp: aiohttp.ClientResponse, url: URL) -> str:
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
        probe = await stack.enter_async_context(open_link(http, url, "bytes=0-0"))
        digest = probe.headers.get("X-Freight-Digest", "")
        size = int(probe.headers.get("X-Freight-Size", "0"))
        name = served_name(probe, url)
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
            async with open_link(http, url, byte_range) as resp:
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
