"""``freight collected get``: content the hub collected, fetched into a
local file through the one partial-file engine, resumed where an earlier
try stopped and checked against its BLAKE3 digest before it takes its
place.

The partial is named after the target and the digest
(``NAME.<digest[:16]>.freight-part``, ``0600``, opened without following a
link that stands there), so only a prefix of the same content is resumed:
the hub is asked for the rest with an HTTP ``Range``. A prefix that does
not hash right anyway (changed by hand) fails the final check; the partial
is removed then and the next try starts afresh.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from ..engine.partial import FolderPlace, LengthCheckpoints, PartialFile
from ..errors import NotFound, StorageError, UsageError
from .options import DISK_FULL_ERRNOS
from .remote import split_remote
from .safefs import DEFAULT_FILE_MODE, Tree
from .session import HubSession

BLOCK = 1 << 20
PART = ".freight-part"


async def _locate(session: HubSession, what: str) -> tuple[str, str]:
    """(digest, file name) of a digest or an ``AGENT:/path`` as offered."""
    remote = split_remote(what)
    if remote is None:
        if len(what) != 64 or any(c not in "0123456789abcdef" for c in what):
            raise UsageError("give a 64-digit BLAKE3 digest or AGENT:/path")
        return what, what[:16]
    rows = await session.request("GET", "/v1/collected")
    match = [r for r in rows for h in r["holders"] if (h["agent"], h["path"]) == remote]
    if not match:
        raise NotFound(f"{what} was not offered for collection")
    return str(match[0]["digest"]), Path(remote[1]).name


async def fetch_collected(session: HubSession, what: str, out: Path) -> tuple[str, int, Path]:
    """Collected content (a BLAKE3 digest, or ``AGENT:/path`` as offered)
    from the hub into ``out`` (a file, or a folder to put it in). Returns
    (digest, size, file written)."""
    digest, name = await _locate(session, what)
    target = out / name if out.is_dir() else out
    part = target.with_name(f"{target.name}.{digest[:16]}{PART}")
    folder = Tree.open(target.parent)
    place = FolderPlace(folder, (part.name,), target.name, mode=DEFAULT_FILE_MODE, shown=str(part))
    store = LengthCheckpoints(place)
    # Its size is not known before the hub answers: a prefix is trusted up
    # to the partial's own length, and the digest decides in the end.
    file = PartialFile(place, store, await store.load() or 0)
    try:
        size = await _download(session, what, digest, file, part)
        verified = False
        try:
            verified, _ = await file.finish(digest)
        except OSError as exc:
            raise StorageError(f"cannot write {part}: {exc.strerror or exc}") from None
        if not verified:
            raise StorageError("what arrived does not match its digest; try again")
        return digest, size, target
    finally:
        file.close()
        folder.close()


async def _download(
    session: HubSession, what: str, digest: str, file: PartialFile, part: Path
) -> int:
    """Fill ``file`` from the hub, from what it holds on; the total size."""
    try:
        start = await file.resume(file.size)
    except OSError as exc:
        raise StorageError(f"cannot write {part}: {exc.strerror or exc}") from None
    url = session.url.with_path(f"/v1/collected/{digest}")
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        async with session.http.get(url, headers=headers) as resp:
            if resp.status == 404:
                raise NotFound(f"{what} is not (yet) stored on the hub")
            if resp.status == 416 and start:  # the partial holds it all already
                return start
            if resp.status >= 400:
                raise UsageError(f"the hub refused: {resp.status}")
            if start and resp.status != 206:  # the whole content after all
                file.open_at(0)
                start = 0
            offset = start
            async for block in resp.content.iter_chunked(BLOCK):
                _write(file, offset, block, part)
                offset += len(block)
            return offset
    except aiohttp.ClientError as exc:
        raise session.connection_error(exc) from None


def _write(file: PartialFile, offset: int, block: bytes, part: Path) -> None:
    try:
        file.write(offset, block)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise StorageError(f"local disk full writing {part}") from None
        raise StorageError(f"cannot write {part}: {exc.strerror or exc}") from None
