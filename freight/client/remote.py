"""The client side of an agent's file manager: ``AGENT:/path`` listings and
copies to and from agents, over an end-to-end encrypted connection to the
agent's ``freight.files`` application (the typed messages of
``freight.protocol.files``: a request ``Q{...}`` answered by ``A{...}``,
then the send/receive protocol of ``freight.client.sendrecv``). The
``freight ls``/``freight cp`` commands and ``freight.Client`` both use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import UsageError, code_to_error
from ..protocol.files import APP, Answer, Entry, Request, decode_answer, encode_request
from .receiving import Consent, Destination, receive_entries, refuse_to_replace
from .relay import Connection, RelayClient
from .sendrecv import Entry as LocalEntry
from .sendrecv import Reporter, Shaping, Summary, build_manifest, send_entries

CONNECT_TIMEOUT = 60.0


def split_remote(spec: str) -> tuple[str, str] | None:
    """``AGENT:/path`` → (agent, path); None for a local path."""
    name, sep, path = spec.partition(":")
    if not sep or not name or "/" in name or not path.startswith("/"):
        return None
    return name, path


def _accepted(data: bytes) -> Answer:
    """The agent's ``A`` answer; a refusal raises the error its code names."""
    answer = decode_answer(data)
    if not answer.ok:
        raise code_to_error(answer.code, answer.error)
    return answer


@asynccontextmanager
async def open_files(
    relay_factory: Callable[[], RelayClient], agent: str, request: Request
) -> AsyncIterator[tuple[Connection, Answer]]:
    """A connection to ``agent``'s file manager that made ``request``, and
    the agent's first answer; the relay is closed when the block ends."""
    async with relay_factory() as relay:
        await relay.start()
        conn = await relay.connect(agent, APP, timeout=CONNECT_TIMEOUT)
        await conn.send(encode_request(request))
        answer = _accepted(await conn.recv())
        yield conn, answer


async def list_remote(
    relay_factory: Callable[[], RelayClient], agent: str, path: str
) -> list[Entry]:
    """The entries of a folder on an agent (every page of a large one)."""
    async with open_files(relay_factory, agent, Request(op="ls", path=path)) as (conn, answer):
        entries = list(answer.entries)
        # A large folder comes in pages, each answer saying where the next starts.
        while answer.next is not None:
            answer = _accepted(await conn.recv())
            entries += answer.entries
        await conn.close()
    return entries


async def upload(
    relay_factory: Callable[[], RelayClient],
    remote: tuple[str, str],
    local: list[Path],
    reporter: Reporter,
    *,
    overwrite: bool = False,
    manifest: list[LocalEntry] | None = None,
    on_open: Callable[[], object] | None = None,
    shaping: Shaping | None = None,
) -> Summary:
    """Copy local files and folders to ``AGENT:/path`` (cp's rules for the
    destination; resumable). ``manifest`` is ``build_manifest(local)`` if
    the caller made it already; ``on_open`` is called once the agent
    accepted."""
    agent, path = remote
    entries = build_manifest(local) if manifest is None else manifest
    request = Request(op="put", path=path, overwrite=overwrite)
    async with open_files(relay_factory, agent, request) as (conn, _):
        if on_open is not None:
            on_open()
        summary = await send_entries(conn, entries, reporter, shaping=shaping)
        await conn.close()
    return summary


async def download(
    relay_factory: Callable[[], RelayClient],
    remote: tuple[str, str],
    dest: str,
    reporter: Reporter,
    *,
    recursive: bool = False,
    consent: Consent = refuse_to_replace,
    on_open: Callable[[], object] | None = None,
    shaping: Shaping | None = None,
) -> Summary:
    """Copy ``AGENT:/path`` to ``dest`` (cp's rules; resumable).
    ``on_open`` is called once the agent accepted."""
    agent, path = remote
    # The copy is named as asked (cp AGENT:/data/latest . makes ./latest),
    # whatever the agent calls what it sends.
    target = Destination.local(dest, top_name=PurePosixPath(path).name)
    request = Request(op="get", path=path, recursive=recursive)
    async with open_files(relay_factory, agent, request) as (conn, _):
        if on_open is not None:
            on_open()
        summary = await receive_entries(conn, target, reporter, consent=consent, shaping=shaping)
        await conn.close()
    return summary


def cp_plan(sources: list[str], dest: str, recursive: bool) -> tuple[str, Any]:
    """Check a ``cp SOURCE... DEST`` and say which way it goes:
    ("up", ((agent, path), [local paths])) or ("down", ((agent, path), dest))."""
    if not sources:
        raise UsageError("give a source and a destination")
    remote_dest = split_remote(dest)
    remote_sources = [split_remote(s) for s in sources]
    if remote_dest is not None:
        if any(r is not None for r in remote_sources):
            raise UsageError("copy between two agents is not supported; copy through here")
        local = [Path(s) for s in sources]
        for p in local:
            if p.is_dir() and not recursive:
                raise UsageError(f"{p} is a folder: use -r")
        return "up", (remote_dest, local)
    if len(sources) != 1 or remote_sources[0] is None:
        raise UsageError("download one AGENT:/path at a time (upload takes several)")
    return "down", (remote_sources[0], dest)
