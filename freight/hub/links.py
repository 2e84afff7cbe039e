"""Links to stored files: ``freight share`` and the by-reference manner of
jobs (docs/protocol.md §17).

``POST /v1/links`` makes a link to one of the caller's files; ``GET
/v1/links/<token>`` streams that file (a ``Range`` resumes it) to whoever
holds the token, or only to the one account it was made for;
``GET /v1/links`` lists the caller's links and those made for it;
``DELETE /v1/links/<token or id>`` revokes one.

A token is 32 random bytes (URL-safe base64); the database keeps only its
SHA-256. A link serves its file only while the file's digest is the one it
was made for, until it expires, and for as many whole deliveries as it
allows (a response that reaches the file's last byte spends one). Unknown,
expired, used and revoked tokens get one and the same answer, and unknown
ones count as failed guesses against the client's address, with the
limits failed logins have (:mod:`.limiter`).
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..engine.pipeline import read_blocks
from ..engine.streams import FileSource
from ..errors import (
    Conflict,
    Forbidden,
    Gone,
    LimitReached,
    NotFound,
    NotLoggedIn,
    SourceChanged,
    UsageError,
)
from ..names import check_name, check_user_name, shown
from ..store.rows import LinkRow
from . import auth
from .blobfiles import BucketSource
from .limiter import address_key
from .requests import current_user, json_object
from .services import STATE, Hub

TOKEN_BYTES = 32
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
LINK_ID = re.compile(r"[0-9a-f]{12}")
MAX_LIVE_LINKS = 1000  # per account
DEFAULT_EXPIRES = 15 * 60.0
MAX_EXPIRES = 30 * 86400.0
MAX_USES = 1000
BLOCK = 4 << 20  # bytes read and written at once
READ_AHEAD = 4 * BLOCK
JOBS_PREFIX = ".jobs/"  # references of jobs: removed once their link is spent

UNKNOWN = "no such link: it is unknown, expired, used up or revoked; ask for a new link"
CHANGED = "the file changed since it was shared; ask for a new link"


@dataclass
class LinkBook:
    """Whole deliveries under way per link (a link allowing one use is
    fetched by one request at a time)."""

    busy: Counter[str] = field(default_factory=Counter)


LINKS: web.AppKey[LinkBook] = web.AppKey("links", LinkBook)


def new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, auth.token_hash(token)


def link_json(row: LinkRow, now: float) -> dict[str, Any]:
    if row.used >= row.uses:
        state = "used"
    elif row.expires < now:
        state = "expired"
    else:
        state = "live"
    return {
        "id": row.token_hash[:12],
        "name": row.name,
        "size": row.size,
        "digest": row.digest,
        "uses": row.uses,
        "used": row.used,
        "created": row.created,
        "expires_at": row.expires,
        "state": state,
    }


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"'{key}' must be a number")
    return float(value)


async def create_link(request: web.Request) -> web.Response:
    user = await current_user(request)
    st = request.app[STATE]
    body = await json_object(request)
    raw_name = body.get("name")
    if not isinstance(raw_name, str):
        raise UsageError("this needs a JSON body with 'name': a file of yours on the hub")
    name = check_name(raw_name)
    expires = _number(body, "expires", DEFAULT_EXPIRES)
    if not 0 < expires <= MAX_EXPIRES:
        raise UsageError(f"'expires' must be more than 0 and at most {int(MAX_EXPIRES)} s (30 d)")
    uses = _number(body, "uses", 1)
    if not 1 <= uses <= MAX_USES or uses != int(uses):
        raise UsageError(f"'uses' must be a whole number from 1 to {MAX_USES}")
    to = body.get("to")
    to_id: int | None = None
    if to is not None:
        if not isinstance(to, str):
            raise UsageError("'to' must be a user name or null")
        target = await st.db.user_by_name(check_user_name(to))
        if target is None or target.disabled:
            raise NotFound(f"no user named {to!r}", hint="ask them for their user name")
        to_id = int(target.id)
    row = await st.db.get_file(user.id, name)
    if row is None:
        raise NotFound(f"no file named {shown(name)} on the hub")
    if await st.db.count_live_links(user.id) >= MAX_LIVE_LINKS:
        raise LimitReached(
            f"you have {MAX_LIVE_LINKS} live links, the most an account may have; "
            "revoke some (freight links revoke ID) or let them expire"
        )
    token, token_hash = new_token()
    now = time.time()
    link = await st.db.create_link(
        token_hash,
        user_id=user.id,
        name=name,
        size=row.size,
        digest=row.digest,
        to_id=to_id,
        uses=int(uses),
        expires=now + expires,
    )
    await st.events.emit("link_created", user.name, name=name, to=to, uses=int(uses))
    url = f"https://{request.host}/v1/links/{token}"
    out = link_json(link, now) | {"token": token, "url": url, "to": to, "owner": user.name}
    return web.json_response(out, status=201)


async def list_links(request: web.Request) -> web.Response:
    user = await current_user(request)
    now = time.time()
    rows = await request.app[STATE].db.list_links(user.id)
    return web.json_response(
        [
            link_json(r, now) | {"owner": r.owner, "to": r.to_name, "mine": r.user_id == user.id}
            for r in rows
        ]
    )


async def revoke_link(request: web.Request) -> web.Response:
    user = await current_user(request)
    st = request.app[STATE]
    given = request.match_info["token"]
    if LINK_ID.fullmatch(given):
        removed = await st.db.revoke_links(user.id, None, given)
    elif TOKEN.fullmatch(given):
        removed = await st.db.revoke_links(user.id, auth.token_hash(given), "")
    else:
        removed = 0
    if not removed:
        raise NotFound(f"no link of yours is {shown(given)}", hint="run: freight links")
    await st.events.emit("link_revoked", user.name, links=removed)
    return web.json_response({"revoked": removed})


async def _usable(request: web.Request, st: Hub, token: str) -> LinkRow:
    """The link ``token`` names, if it may be used now by this request."""
    now = time.time()
    address = address_key(request.remote)
    st.logins.check(st.logins.keys("link", "", address), now)
    token_hash = auth.token_hash(token) if TOKEN.fullmatch(token) else ""
    row = await st.db.get_link(token_hash) if token_hash else None
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        st.logins.failed("link", "", address, now)
        await st.events.emit("link_unknown", "", address=request.remote or "?")
        raise NotFound(UNKNOWN, hint="check the link, or ask for a new one")
    if row.expires < now or row.used >= row.uses:
        raise NotFound(UNKNOWN, hint="ask for a new link")
    owner = await st.db.user_by_id(row.user_id)
    if owner is None or owner.disabled:  # a disabled account shares nothing
        raise NotFound(UNKNOWN, hint="ask for a new link")
    if row.to_id is not None:
        try:
            user = await current_user(request)
        except NotLoggedIn:
            raise NotLoggedIn(
                "this link was shared with one account: log in as that user and fetch it again"
            ) from None
        if user.id != row.to_id:
            raise Forbidden("this link was shared with another account; log in as that user")
    # Ranges could fetch a file many times over without one whole delivery.
    if row.served > (row.uses + 1) * row.size + BLOCK:
        raise NotFound(UNKNOWN, hint="ask for a new link")
    return row


def byte_range(header: str, size: int) -> tuple[int, int]:
    """[start, end) that a ``Range: bytes=A-`` / ``bytes=A-B`` asks for
    (the whole file without one); 416 when it lies outside the file."""
    if not header:
        return 0, size
    m = re.fullmatch(r"\s*bytes=(\d{1,19})-(\d{0,19})\s*", header)
    if m is None:
        raise UsageError("only one range, 'bytes=START-' or 'bytes=START-END', is served")
    start = int(m.group(1))
    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
    if start >= size or end <= start:
        if size == 0 and start == 0:
            return 0, 0
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


def ranged_response(start: int, end: int, size: int) -> web.StreamResponse:
    """The answer carrying bytes ``start`` to ``end`` of ``size``: 200 for
    all of them, else 206 with its Content-Range."""
    resp = web.StreamResponse(status=206 if start or end < size else 200)
    resp.content_length = end - start
    resp.content_type = "application/octet-stream"
    resp.headers["Accept-Ranges"] = "bytes"
    if resp.status == 206:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return resp


async def fetch_link(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    book = request.app[LINKS]
    row = await _usable(request, st, request.match_info["token"])
    start, end = byte_range(request.headers.get("Range", ""), row.size)
    stored = await st.db.get_file(row.user_id, row.name)
    if stored is None or stored.digest != row.digest or stored.size != row.size:
        raise Gone(CHANGED)
    whole = end == row.size  # this response reaches the end: it spends a use
    if whole and book.busy[row.token_hash] + row.used >= row.uses:
        raise Conflict("this link is being fetched right now; try again when that ends")
    # With a bucket its content is read from there; a stored file was
    # written around the page cache and is read so too (FileSource, direct).
    source: BucketSource | FileSource
    try:
        source = (
            BucketSource(st.bucket, row.digest, row.size)
            if st.bucket is not None
            else FileSource(st.layout.file_path(row.user_id, row.name), direct=True)
        )
    except FileNotFoundError:
        raise Gone(CHANGED) from None
    if whole:
        book.busy[row.token_hash] += 1
    sent = 0
    completed = False
    try:
        if whole:  # counted above; what other requests spent since is read now
            fresh = await st.db.get_link(row.token_hash)
            if fresh is None or fresh.used + book.busy[row.token_hash] - 1 >= fresh.uses:
                raise NotFound(UNKNOWN, hint="ask for a new link")
        if source.size != row.size:
            raise Gone(CHANGED)
        resp = ranged_response(start, end, row.size)
        resp.headers["X-Freight-Digest"] = row.digest
        resp.headers["X-Freight-Size"] = str(row.size)
        resp.headers["Content-Disposition"] = "attachment; filename*=UTF-8''" + quote(
            row.name.rsplit("/", 1)[-1], safe=""
        )
        await resp.prepare(request)
        blocks = read_blocks(source.read, None, start, end, block=BLOCK, max_bytes=READ_AHEAD)
        try:
            async with contextlib.aclosing(blocks):
                async for block in blocks:
                    await resp.write(block)
                    sent += len(block)
            if start + sent == end:
                await resp.write_eof()
                completed = True
            elif request.transport is not None:  # the file shrank under us: cut short
                request.transport.close()
        except SourceChanged:  # (FileSource says so when a read comes short)
            if request.transport is not None:
                request.transport.close()
        except ConnectionResetError:  # the client went away: nothing to answer
            pass
    finally:
        source.close()
        done = whole and completed
        try:
            await st.db.count_served(row.token_hash, sent, whole=done)
        finally:  # only once the use is counted may the next whole request start
            if whole:
                book.busy[row.token_hash] -= 1
                if book.busy[row.token_hash] <= 0:
                    del book.busy[row.token_hash]
    if done:
        await st.events.emit("link_used", "", name=row.name, bytes=sent)
        if row.name.startswith(JOBS_PREFIX) and row.used + 1 >= row.uses:
            await _drop_reference(st, row)
    return resp


async def _drop_reference(st: Hub, row: LinkRow) -> None:
    """A job's sealed data, fetched as often as its link allowed: removed."""
    await st.core.forget_file(row.user_id, row.name)


def add_routes(app: web.Application) -> None:
    app[LINKS] = LinkBook()
    app.router.add_post("/v1/links", create_link)
    app.router.add_get("/v1/links", list_links)
    app.router.add_get("/v1/links/{token}", fetch_link, allow_head=False)
    app.router.add_delete("/v1/links/{token}", revoke_link)
