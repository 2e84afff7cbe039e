"""Agents at the hub: enrolment tokens, key-based login, status, the
per-agent bandwidth cap and the durable command queue.

An agent is an account with role ``agent`` and no password. It enrols once
with a one-time token (hashed at rest, expiring, single use, revocable),
registering its Ed25519 public key, its one login key (an admin may
replace it; the agent cannot add keys); afterwards it logs in by signing a
fresh challenge together with the SHA-256 of the hub certificate it sees
(tls-server-end-point channel binding): a signature made through a
man-in-the-middle names the wrong certificate and is refused. Names are
checked before anything is stored or logged; failures are limited per name
at an address and per address (:mod:`.limiter`), outstanding challenges per
name, address and in all (:mod:`.challenges`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import AgentRefused, BadCredentials, Conflict, NotFound, UsageError
from ..names import check_user_name, shown
from ..protocol.agents import COMMAND_KINDS, FILE_COMMANDS, login_message
from ..store.commands import TERMINAL_COMMAND_STATES
from . import auth, commandfiles, users
from .commands import command_json
from .dispatch import Dispatcher, Link
from .keys import check_key
from .limiter import address_key
from .requests import admin_user, current_user, name_page
from .requests import json_object as _json
from .services import STATE, Hub

ENROL_TOKEN_TTL = 24 * 3600.0
AGENT_PAGE = 100  # agents per page of GET /v1/agents?limit=
MAX_AGENT_PAGE = 1000
RECHECK = 3.0  # seconds between reads of a command waited for (see get_command)
NAME_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{0,64}")


async def _agent_row(st: Hub, name: str) -> Any:
    row = await st.db.user_by_name(name)
    if row is None or row.role != "agent":
        raise NotFound(f"there is no agent {name!r} on this hub", hint="run: freight agents ls")
    return row


# --- enrolment ---------------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    body = await _json(request)
    name = check_user_name(str(body.get("name", "")))
    ttl = body.get("ttl", ENROL_TOKEN_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 30 * 86400:
        raise UsageError("an enrolment token lives between a second and 30 days")
    if await st.db.user_by_name(name) is not None:
        raise Conflict(f"the name {name!r} is already taken on this hub")
    token, token_hash = auth.new_enrol_token()
    expires = time.time() + ttl
    await st.db.add_enrol_token(token_hash, name, expires)
    await st.events.emit("enrol_token_created", admin.name, name=name, expires=expires)
    return web.json_response({"name": name, "token": token, "expires": expires})


async def list_tokens(request: web.Request) -> web.Response:
    await admin_user(request)
    rows = await request.app[STATE].db.list_enrol_tokens()
    now = time.time()
    return web.json_response(
        [
            {
                "name": r.name,
                "created": r.created,
                "expires": r.expires,
                "state": "used"
                if r.used
                else "revoked"
                if r.revoked
                else "expired"
                if r.expires < now
                else "open",
            }
            for r in rows
        ]
    )


async def revoke_tokens(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    n = await st.db.revoke_enrol_tokens(name)
    if not n:
        raise NotFound(f"no unused enrolment token for {name!r}")
    await st.events.emit("enrol_token_revoked", admin.name, name=name, count=n)
    return web.json_response({"revoked": n})


async def enroll(request: web.Request) -> web.Response:
    """An agent trades a one-time token for an account bound to its key."""
    st = request.app[STATE]
    body = await _json(request)
    peer = request.remote or "?"
    now = time.time()
    try:
        token, key = str(body["token"]), check_key(str(body["key"]))
    except (KeyError, UsageError):
        raise UsageError("enrolment needs 'token' and 'key' (an Ed25519 public key, hex)") from None
    with st.logins.attempt("enrol", "", address_key(peer), now) as attempt:
        name, detail = await st.db.enrol_agent(auth.token_hash(token), key, now)
        if name is not None:
            attempt.succeeded()
    if name is None:
        await st.events.emit("enrol_failure", "?", address=peer, reason=detail)
        raise BadCredentials(str(detail), hint="ask an admin for a new one: freight agents token")
    await st.events.emit("agent_enrolled", name, address=peer)
    return web.json_response({"name": name, "fingerprint": st.cert_fingerprint})


async def challenge(request: web.Request) -> web.Response:
    st = request.app[STATE]
    body = await _json(request)
    name = check_user_name(str(body.get("name", "")))
    address = address_key(request.remote)
    now = time.time()
    st.logins.check(st.logins.keys("agent", name, address), now)
    return web.json_response({"challenge": st.challenges.issue(name, address, now)})


async def agent_login(request: web.Request) -> web.Response:
    """Counted per agent name at the client's address and per address (a
    lockout aimed at an agent from elsewhere does not reach it). A valid
    signature of a disabled agent is refused but not counted: its restarts
    must not lock out the agents sharing its address."""
    st = request.app[STATE]
    body = await _json(request)
    name = check_user_name(str(body.get("name", "")))
    nonce, signature = str(body.get("challenge", "")), str(body.get("signature", ""))
    peer = request.remote or "?"
    now = time.time()
    with st.logins.attempt("agent", name, address_key(peer), now) as attempt:
        row = await st.db.user_by_name(name)
        key = ""
        if st.challenges.take(nonce, name, now) and row is not None and row.role == "agent":
            message = login_message(name, nonce, st.cert_fingerprint)
            key = _signer(await st.db.identity_keys(int(row.id)), signature, message)
        if key:
            attempt.succeeded()
    if not key or row is None or row.disabled:
        why = "disabled" if key else "not recognised"  # a valid key: the agent itself
        await st.events.emit("agent_login_failure", name, address=peer, reason=why)
        raise AgentRefused(f"agent {name!r} {why}")
    token, token_hash = auth.new_token()
    await st.db.add_token(token_hash, int(row.id), now + st.token_lifetime, key)
    await st.events.emit("agent_login", name, address=peer)
    return web.json_response({"token": token, "user": name, "role": "agent"})


def _signer(keys: list[str], signature: str, message: bytes) -> str:
    """The key among ``keys`` that made ``signature`` over ``message``, or ""."""
    try:
        sig = bytes.fromhex(signature)
    except ValueError:
        return ""
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key)).verify(sig, message)
        except (InvalidSignature, ValueError):
            continue
        return key
    return ""


async def set_key(request: web.Request) -> web.Response:
    """Replace an agent's login key (a new machine, or a key that leaked):
    its logins end and only the new key logs in from now on."""
    admin = await admin_user(request)
    st = request.app[STATE]
    row = await _agent_row(st, request.match_info["name"])
    try:
        key = check_key(str((await _json(request))["key"]))
    except KeyError:
        raise UsageError("the body must be JSON with 'key': 64 hex digits") from None
    ended = await st.db.replace_keys(int(row.id), key)
    st.relay.forget_keys(int(row.id))
    closed = await st.sessions.end_user(int(row.id), "key_replaced")
    await st.events.emit(
        "agent_key_set", admin.name, name=row.name, key=key, logins=ended, channels=closed
    )
    return web.json_response({"name": row.name, "key": key, "logins_ended": ended})


# --- status and management -----------------------------------------------------


async def list_agents(request: web.Request) -> web.Response:
    """Every agent (a list), or with ``limit`` (1..1000) a page by name:
    ``{"agents": [...], "next": NAME or null}``, the next page ``after`` it;
    ``prefix``: only the agents whose name starts with it."""
    await admin_user(request)
    st = request.app[STATE]
    page = name_page(request.query, AGENT_PAGE, MAX_AGENT_PAGE)
    prefix = request.query.get("prefix", "")
    if not NAME_PREFIX.fullmatch(prefix):
        raise UsageError(
            "prefix must be the start of an agent's name: up to 64 of A-Z a-z 0-9 _ . -"
        )
    online = {a.user.id: a for a in st.relay.attachments if a.commands}
    elsewhere = await st.nodes.live_nodes()  # other nodes of a cluster, up now
    waiting = await st.db.open_command_counts()
    limit, after = page or (None, None)
    rows = await st.db.list_agents(
        after=after, limit=None if limit is None else limit + 1, prefix=prefix
    )
    more = limit is not None and len(rows) > limit
    out = []
    for r in rows[:limit]:
        att = online.get(int(r.id))
        out.append(
            {
                "name": r.name,
                "online": att is not None or r.node in elsewhere,
                "node": st.node if att is not None else (r.node if r.node in elsewhere else ""),
                "last_seen": time.time() if att is not None else r.last_seen,
                "version": r.version,
                "address": att.address if att is not None else r.address,
                "busy": len(att.ends) if att is not None else 0,
                "queued": waiting.get(int(r.id), 0),  # commands not answered yet
                "disabled": bool(r.disabled),
                "cap": r.cap,
                "enrolled": r.enrolled,
            }
        )
    if page is None:
        return web.json_response(out)
    return web.json_response({"agents": out, "next": out[-1]["name"] if more else None})


async def disable(request: web.Request) -> web.Response:
    await admin_user(request)  # before the name is looked up: no hint of who exists
    await _agent_row(request.app[STATE], request.match_info["name"])
    return await users.set_disabled(request, True)


async def enable(request: web.Request) -> web.Response:
    await admin_user(request)
    await _agent_row(request.app[STATE], request.match_info["name"])
    return await users.set_disabled(request, False)


async def remove(request: web.Request) -> web.Response:
    """Forget an agent: its key, logins and queue go at once."""
    admin = await admin_user(request)
    st = request.app[STATE]
    row = await _agent_row(st, request.match_info["name"])
    user_id = int(row.id)
    await st.db.delete_user(user_id)
    await st.sessions.end_user(user_id, "removed")
    st.relay.forget_keys(user_id)
    await asyncio.to_thread(st.layout.remove_account, user_id)
    await st.events.emit("agent_removed", admin.name, name=row.name)
    return web.json_response({"removed": row.name})


async def set_cap(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    row = await _agent_row(st, request.match_info["name"])
    body = await _json(request)
    try:
        cap = int(body["cap"])
    except (KeyError, ValueError, TypeError):
        raise UsageError("body must be JSON with 'cap' in bytes per second (0: none)") from None
    if cap < 0:
        raise UsageError("a cap cannot be negative")
    await st.db.set_agent_cap(int(row.id), cap)
    st.relay.presence.set_cap(int(row.id), cap)
    st.bandwidth.set_cap(int(row.id), cap)
    await st.events.emit("agent_cap", admin.name, name=row.name, cap=cap)
    return web.json_response({"name": row.name, "cap": cap})


# --- commands ----------------------------------------------------------------


async def add_command(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    row = await _agent_row(st, request.match_info["name"])
    body = await _json(request)
    kind = str(body.get("kind", ""))
    if kind not in COMMAND_KINDS:
        raise UsageError(f"unknown command {kind!r}; one of: {', '.join(COMMAND_KINDS)}")
    raw_args = body.get("args", {})
    if not isinstance(raw_args, dict):
        raise UsageError("a command's arguments are an object of names and values")
    if kind in FILE_COMMANDS:
        raw_args = await commandfiles.prepare(st.core, admin, kind, raw_args)
    agent_id = int(row.id)

    async def queued(command_id: int) -> None:
        await commandfiles.queued(st.core, admin, agent_id, command_id, kind, raw_args)
        await st.events.emit(
            "command_queued", admin.name, agent=row.name, id=command_id, command=kind
        )

    # Online: handed over now (else when it attaches).
    command_id, delivered = await st.commands.enqueue(
        agent_id, kind, json.dumps(raw_args), admin.name, prepare=queued
    )
    return web.json_response({"id": command_id, "state": "delivered" if delivered else "queued"})


async def get_command(request: web.Request) -> web.Response:
    """A command's state; ``?wait=S`` waits up to S seconds for its result."""
    await admin_user(request)
    st = request.app[STATE]
    command_id = _command_id(request)
    try:
        wait = min(120.0, max(0.0, float(request.query.get("wait", "0"))))
    except ValueError:
        raise UsageError("wait must be a number of seconds") from None
    deadline = time.monotonic() + wait
    with st.commands.waiter(command_id) as event:
        while True:
            row = await st.db.get_command(command_id)
            if row is None:
                raise NotFound(f"no command {command_id}")
            if row.state in TERMINAL_COMMAND_STATES or time.monotonic() >= deadline:
                return web.json_response(command_json(row))
            # Read again at least every RECHECK seconds: a command answered
            # on another node of a cluster without a bus wakes no one here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(RECHECK, deadline - time.monotonic()))
            event.clear()


async def cancel_command(request: web.Request) -> web.Response:
    """``POST /v1/agents/commands/{id}/cancel``: an admin gives up on an
    open command; it is not delivered again and its result is refused."""
    admin = await admin_user(request)
    command_id = _command_id(request)
    return web.json_response(await request.app[STATE].commands.cancel(command_id, admin.name))


def _command_id(request: web.Request) -> int:
    """The command id in the path: a number the database can hold."""
    given = request.match_info["id"]
    try:
        command_id = int(given)
    except ValueError:
        raise UsageError(f"the command id must be a number, not {shown(given)}") from None
    if not 0 < command_id < 1 << 63:
        raise NotFound(f"no command {shown(given)}", hint="freight agents ls shows what is queued")
    return command_id


def register(dispatcher: Dispatcher, st: Hub) -> None:
    """When an agent's command channel attaches: record the visit, apply
    its bandwidth cap (before the queue hands over its commands) and say so
    (``agent_attached``); when it goes, ``agent_detached``. The events tell
    the console's live feed that the agent is online or offline now."""

    async def attached(link: Link, version: str) -> None:
        att = link.att
        await st.db.touch_agent(att.user.id, version, att.address, st.node)
        cap = await st.db.agent_cap(att.user.id)
        st.relay.presence.set_cap(att.user.id, cap)
        st.bandwidth.set_cap(att.user.id, cap)
        await st.events.emit(
            "agent_attached", att.user.name, address=att.address, version=version[:64]
        )

    def detached(att: Any) -> None:
        if att.commands:  # the agent's own channel, not one of its uploads
            st.relay.spawn(st.db.agent_left(att.user.id, st.node))
            st.relay.spawn(st.events.emit("agent_detached", att.user.name, address=att.address))

    dispatcher.on_agent_attached(attached)
    st.relay.detach_hooks.append(detached)


async def report_security(request: web.Request) -> web.Response:
    """An agent reports a refused request (path outside its roots)."""
    user = await current_user(request)
    if user.role != "agent":
        raise UsageError("only agents report security events")
    body = await _json(request)
    detail = {k: str(body.get(k, ""))[:1024] for k in ("op", "path", "peer", "reason")}
    await request.app[STATE].events.emit("security", user.name, **detail)
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/agents/tokens", create_token)
    app.router.add_get("/v1/agents/tokens", list_tokens)
    app.router.add_delete("/v1/agents/tokens/{name}", revoke_tokens)
    app.router.add_post("/v1/agents/enroll", enroll)
    app.router.add_post("/v1/agents/challenge", challenge)
    app.router.add_post("/v1/agents/login", agent_login)
    app.router.add_post("/v1/agents/security", report_security)
    app.router.add_get("/v1/agents", list_agents)
    app.router.add_post("/v1/agents/{name}/disable", disable)
    app.router.add_post("/v1/agents/{name}/enable", enable)
    app.router.add_delete("/v1/agents/{name}", remove)
    app.router.add_put("/v1/agents/{name}/key", set_key)
    app.router.add_put("/v1/agents/{name}/cap", set_cap)
    app.router.add_post("/v1/agents/{name}/commands", add_command)
    app.router.add_get("/v1/agents/commands/{id}", get_command)
    app.router.add_post("/v1/agents/commands/{id}/cancel", cancel_command)
