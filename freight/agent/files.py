"""The agent's file manager: what ``freight ls|cp AGENT:PATH`` talk to, over
an end-to-end encrypted connection (application ``freight.files``).

The first message is a request ``Q{"op": ...}`` answered by ``A{"ok": ...}``;
``get`` and ``put`` then run the send/receive protocol of
:mod:`freight.client.sendrecv` (resumable, digests checked, modes and
mtimes kept). Only admins may use it, and only inside the agent's roots;
each refusal is reported to the hub as a security event.
"""

from __future__ import annotations

import errno
import math
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..client.options import QuietReporter
from ..client.receiving import Destination, FileExists, existing_files, receive_entries
from ..client.relay import Connection
from ..client.safefs import Tree
from ..client.sendrecv import build_manifest, send_entries
from ..errors import Forbidden, FreightError, UsageError
from ..protocol.files import (
    APP,
    MAX_PAGE_ENTRIES,
    Entry,
    Listing,
    Page,
    Ready,
    Refusal,
    decode_request,
    encode_answer,
    entry_size,
)
from ..protocol.sendrecv import MAX_MTIME
from .roots import OutsideRoots, locate, resolve

__all__ = ["APP", "COMMAND_PAGE_BYTES", "FileServer", "list_dir", "page"]

# What one page of a folder listing may take as JSON. A ``list_dir``
# command's result travels inside a frame header (64 KiB, where its quotes
# are escaped once more); a file-manager answer may be a relay message of
# up to 8 MiB, and ``ls`` sends as many as the folder needs.
COMMAND_PAGE_BYTES = 24 * 1024
LS_PAGE_BYTES = 1024 * 1024


def describe(path: Path, name: str | None = None) -> Entry:
    st = path.lstat()
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
    mtime = st.st_mtime if math.isfinite(st.st_mtime) else 0.0
    return Entry(
        name=name or path.name or str(path),
        type=kind,
        size=st.st_size if kind == "file" else 0,
        mtime=min(MAX_MTIME, max(-MAX_MTIME, mtime)),  # what the wire allows
        mode=stat.S_IMODE(st.st_mode),
    )


def list_entries(raw: str, roots: list[Path]) -> tuple[str, list[Entry]]:
    """The folder ``raw`` (or the roots, for ``/``): its path and every entry."""
    if raw in ("", "/") and not any(r == Path("/") for r in roots):
        return "/", [describe(r, str(r)) for r in roots]
    path = resolve(raw, roots)
    if not path.exists():
        raise UsageError(f"{raw}: no such file or folder on the agent")
    if not path.is_dir():
        return str(path), [describe(path)]
    entries = []
    for child in sorted(path.iterdir()):
        try:
            entries.append(describe(child))
        except OSError:
            continue  # vanished while listing
    return str(path), entries


def page(path: str, entries: Sequence[Entry], offset: int, budget: int) -> Page:
    """Entries from ``offset`` on, as many as fit ``budget`` bytes of JSON
    (at least one). ``next`` is where the following page starts, None on
    the last one; ``total`` counts them all."""
    if offset < 0 or offset > len(entries):
        raise UsageError(f"offset {offset} is outside the {len(entries)} entries of {path}")
    out: list[Entry] = []
    used = 0
    for entry in entries[offset : offset + MAX_PAGE_ENTRIES]:
        size = entry_size(entry)
        if out and used + size > budget:
            break
        out.append(entry)
        used += size
    end = offset + len(out)
    return Page(
        path=path,
        entries=out,
        total=len(entries),
        offset=offset,
        next=end if end < len(entries) else None,
    )


def list_dir(
    raw: str, roots: list[Path], offset: int = 0, budget: int = COMMAND_PAGE_BYTES
) -> dict[str, Any]:
    """One page of the folder ``raw`` (the ``list_dir`` command's result)."""
    path, entries = list_entries(raw, roots)
    result: dict[str, Any] = msgspec.to_builtins(page(path, entries, offset, budget))
    return result


class FileServer:
    def __init__(self, roots: list[Path], report: Any, allow_overwrite: bool = False) -> None:
        self.roots = roots
        self.report = report  # async (op, path, peer, reason) -> None
        self.allow_overwrite = allow_overwrite  # the agent's policy (agent.json)

    async def serve(self, conn: Connection) -> None:
        await conn.wait_established(60)
        op = raw = ""
        try:
            request = decode_request(await conn.recv())
            op, raw = request.op, request.path
            if conn.peer_role != "admin":
                raise Forbidden("only admins may use an agent's files")
            if op == "ls":
                await self._ls(conn, raw)
            elif op == "get":
                await self._get(conn, raw, request.recursive)
            else:
                await self._put(conn, raw, request.overwrite)
        except (OutsideRoots, Forbidden) as exc:
            await self.report(op, raw, conn.peer, exc.message)
            await conn.send(encode_answer(_refusal(exc.code, exc.message)))
        except FreightError as exc:
            await conn.send(encode_answer(_refusal(exc.code, exc.message)))
        except OSError as exc:
            await conn.send(encode_answer(_refusal("storage", f"{raw}: {exc.strerror or exc}")))
        await conn.close()

    async def _ls(self, conn: Connection, raw: str) -> None:
        """Answer with as many pages as the folder takes (listed once)."""
        path, entries = list_entries(raw, self.roots)
        offset: int | None = 0
        while offset is not None:
            p = page(path, entries, offset, LS_PAGE_BYTES)
            listing = Listing(
                path=p.path, entries=p.entries, total=p.total, offset=p.offset, next=p.next
            )
            await conn.send(encode_answer(listing))
            offset = p.next

    async def _get(self, conn: Connection, raw: str, recursive: bool) -> None:
        path = resolve(raw, self.roots)
        if not path.exists():
            raise UsageError(f"{raw}: no such file or folder on the agent")
        if path.is_dir() and not recursive:
            raise UsageError(f"{raw} is a folder: use cp -r")
        root, _ = locate(str(path), self.roots)
        entries = build_manifest([path])
        tree = Tree.open(root)
        try:

            def opener(source: Path) -> int:
                # Read from the root without following links: a folder on
                # the way swapped for a link after the check is refused.
                parts = source.relative_to(root).parts
                fd = tree.open_read(parts) if parts else None
                if fd is None:
                    raise OSError(errno.ELOOP, "not a regular file inside the roots")
                return fd

            await conn.send(encode_answer(Ready()))
            try:
                await send_entries(conn, entries, QuietReporter(), opener=opener)
            except FreightError as exc:
                # The copy has begun, so no 'A' answer any more: hang up
                # with the reason, which the admin's cp shows.
                await conn.abort(exc.code, exc.message)
        finally:
            tree.close()

    async def _put(self, conn: Connection, raw: str, overwrite: bool) -> None:
        root, rel = locate(raw, self.roots)
        await conn.send(encode_answer(Ready()))
        allowed = self.allow_overwrite

        async def consent(paths: list[str]) -> None:
            # Both must agree: the admin asks (cp --overwrite) and the
            # machine's owner allows it (allow_overwrite in agent.json).
            if not overwrite:
                raise FileExists(
                    f"{existing_files(paths)} on the agent; run again with --overwrite to replace"
                )
            if not allowed:
                raise FileExists(
                    f"{existing_files(paths)} on the agent, which does not allow replacing files "
                    "(its owner can set allow_overwrite in agent.json)"
                )

        await receive_entries(
            conn, Destination.beneath(root, rel, raw), QuietReporter(), consent=consent
        )


def _refusal(code: str, message: str) -> Refusal:
    """A refusal whose fields fit the wire's bounds, whatever the error says."""
    return Refusal(code=code[:64], error=message[:4096])
