"""Accounts on the hub: logging in and out; admins list, add, disable and
enable users; anyone changes their own password. Every change is an event.

A password check counts against the limits of :mod:`.limiter` before
argon2 runs (in its own bounded pool), one check in flight per account.
Disabling an account, changing its password and logging out close what
the ended logins hold open (:mod:`.sessions`)."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from ..errors import BadCredentials, Conflict, NotFound, RateLimited, UsageError
from ..names import check_new_password, check_user_name
from ..store import quota
from ..store.approvals import ACCOUNT_STATES
from . import auth
from .approvalrules import login_refusal
from .limiter import address_key
from .requests import admin_user, current_user, json_fields, name_page
from .services import STATE


async def password_login(request: web.Request, name: str, password: str) -> tuple[str, Any]:
    """Check a user's password within the login limits and start a login:
    its token and the account's row. ``POST /v1/login`` and the console's
    login form both come here (one lockout counter for both)."""
    st = request.app[STATE]
    name = check_user_name(name)
    peer = request.remote or "?"
    now = time.time()
    try:
        with st.logins.attempt("user", name, address_key(peer), now, exclusive=True) as attempt:
            row = await st.db.user_by_name(name)
            ok = await st.passwords.verify(row.pw_hash if row else None, password)
            if ok and row is not None and not row.disabled and row.role != "agent":
                attempt.succeeded()
    except RateLimited:
        st.metrics.logins.labels("limited").inc()
        raise
    if not attempt.ok:
        st.metrics.logins.labels("failure").inc()
        await st.events.emit("login_failure", name, address=peer)
        raise BadCredentials("wrong user name or password")
    assert row is not None
    refusal = login_refusal(row.state)  # said only to whoever knows the password
    if refusal is not None:
        st.metrics.logins.labels("failure").inc()
        await st.events.emit("login_refused", name, address=peer, state=row.state)
        raise refusal
    token, token_hash = auth.new_token()
    await st.db.add_token(token_hash, int(row.id), now + st.token_lifetime)
    st.metrics.logins.labels("success").inc()
    await st.events.emit("login", name, address=peer)
    return token, row


async def login(request: web.Request) -> web.Response:
    body = await json_fields(request, "user", "password")
    token, row = await password_login(request, body["user"], body["password"])
    return web.json_response({"token": token, "user": row.name, "role": row.role})


async def logout(request: web.Request) -> web.Response:
    """End the request's own login: the token stops working and what it
    holds open is closed."""
    user = await current_user(request)
    st = request.app[STATE]
    await st.db.revoke_token(user.token)
    closed = await st.sessions.end_tokens([user.token], "logout")
    await st.events.emit("logout", user.name, address=request.remote or "?", channels=closed)
    return web.json_response({"user": user.name})


def user_json(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
        "disabled": bool(row.disabled),
        "created": row.created,
        "quota": int(row.quota),
        "state": row.state,
    }


USER_PAGE = 100  # accounts per page of GET /v1/users?limit=
MAX_USER_PAGE = 1000


async def list_users(request: web.Request) -> web.Response:
    """Every account (a list), or those in ``?state=`` (active, pending,
    refused); with ``limit`` (1..1000) or ``after`` a page by name:
    ``{"users": [...], "next": NAME or null}``, the next page ``after`` it
    (keyset on the name index, however many accounts)."""
    await admin_user(request)
    db = request.app[STATE].db
    state = request.query.get("state")
    if state is not None and state not in ACCOUNT_STATES:
        raise UsageError(f"state must be one of {', '.join(ACCOUNT_STATES)}")
    page = name_page(request.query, USER_PAGE, MAX_USER_PAGE)
    limit, after = page or (None, None)
    rows = await db.list_users(after=after, limit=None if limit is None else limit + 1, state=state)
    more = limit is not None and len(rows) > limit
    rows = rows[:limit]
    used = await quota.usage_by_user(db, None if page is None else [int(r.id) for r in rows])
    out = [{**user_json(r), "used": used.get(int(r.id), 0)} for r in rows]
    if page is None:
        return web.json_response(out)
    return web.json_response({"users": out, "next": out[-1]["name"] if more else None})


async def add_user(request: web.Request) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    body = await json_fields(request, "name", "password")
    name = check_user_name(body["name"])
    password = check_new_password(body["password"])
    role = "admin" if body.get("admin") is True else "user"
    if await st.db.user_by_name(name) is not None:  # spare the hashing
        raise Conflict(f"user {name!r} already exists")
    pw_hash = await st.passwords.hash(password)
    if await st.db.create_user(name, pw_hash, role) is None:
        raise Conflict(f"user {name!r} already exists")
    await st.events.emit("user_added", admin.name, name=name, role=role)
    row = await st.db.user_by_name(name)
    return web.json_response(user_json(row), status=201)


async def set_disabled(request: web.Request, disabled: bool) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    row = await st.db.user_by_name(name)
    if row is None:
        raise NotFound(f"no user named {name!r}")
    if disabled and int(row.id) == admin.id:
        raise Conflict("you cannot disable your own account")
    if not disabled:
        await st.db.set_disabled(int(row.id), False)
    elif not await st.db.disable_unless_last_admin(int(row.id)):
        raise Conflict(f"{name} is the last enabled admin: make another account admin first")
    if disabled:  # what it has running stops now, not at its next request
        await st.sessions.end_user(int(row.id), "disabled")
    await st.events.emit("user_disabled" if disabled else "user_enabled", admin.name, name=name)
    return web.json_response(user_json(row) | {"disabled": disabled})


async def disable_user(request: web.Request) -> web.Response:
    return await set_disabled(request, True)


async def enable_user(request: web.Request) -> web.Response:
    return await set_disabled(request, False)


async def change_password(request: web.Request) -> web.Response:
    """The caller's own password. A wrong current password counts against
    the login limits; success ends every other login of the account."""
    user = await current_user(request)
    st = request.app[STATE]
    body = await json_fields(request, "current", "new")
    new = check_new_password(body["new"])
    peer = request.remote or "?"
    with st.logins.attempt(
        "user", user.name, address_key(peer), time.time(), exclusive=True
    ) as attempt:
        row = await st.db.user_by_name(user.name)
        pw_hash = row.pw_hash if row else None
        if row is not None and await st.passwords.verify(pw_hash, body["current"]):
            attempt.succeeded()
    if not attempt.ok:
        await st.events.emit("password_change_failure", user.name, address=peer)
        raise BadCredentials("the current password is wrong")
    new_hash = await st.passwords.hash(new)
    revoked = await st.db.change_password(user.id, new_hash, user.token)
    await st.sessions.end_user(user.id, "password_changed", keep=user.token)
    await st.events.emit("password_changed", user.name, address=peer, revoked_tokens=revoked)
    return web.json_response({"user": user.name, "revoked_tokens": revoked})


MAX_QUOTA = 1 << 62  # bytes: far beyond any disk, within the database's integers


async def set_quota(request: web.Request) -> web.Response:
    """Bytes an account may hold on the hub (its files and unfinished
    pushes); 0 means no quota. Checked when an upload starts."""
    admin = await admin_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    try:
        value = (await request.json())["quota"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            f"body must be JSON with 'quota': bytes up to {MAX_QUOTA} (0: none)"
        ) from None
    row = await st.db.user_by_name(name)
    if row is None:
        raise NotFound(f"no user named {name!r}")
    await quota.set_quota(st.db, int(row.id), value)
    await st.events.emit("quota_set", admin.name, name=name, quota=value)
    return web.json_response(user_json(row) | {"quota": value})


USER_CAPS = "user_caps"  # setting: {user id: bytes/s}


async def saved_user_caps(db: Any) -> dict[int, int]:
    """The per-account caps admins set (``freight users cap``), by user id."""
    try:
        saved = json.loads(await db.get_setting(USER_CAPS) or "{}")
    except ValueError:
        return {}  # damaged: no caps rather than no hub
    if not isinstance(saved, dict):
        return {}
    return {
        int(k): v
        for k, v in saved.items()
        if isinstance(k, str) and k.isdigit() and isinstance(v, int) and v > 0
    }


async def set_cap(request: web.Request) -> web.Response:
    """Bytes per second an account's traffic may take through the hub, its
    pushes and pulls (each stream) and its relayed connections (all of them
    together, both ways); 0 lifts it. Agents have ``freight agents cap``."""
    admin = await admin_user(request)
    st = request.app[STATE]
    name = request.match_info["name"]
    try:
        cap = (await request.json())["cap"]
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap < 1 << 62:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UsageError("body must be JSON with 'cap': bytes per second (0: none)") from None
    row = await st.db.user_by_name(name)
    if row is None:
        raise NotFound(f"no user named {name!r}")
    if row.role == "agent":
        raise UsageError(f"{name} is an agent: use freight agents cap {name} RATE")
    caps = await saved_user_caps(st.db)
    caps.pop(int(row.id), None)
    if cap:
        caps[int(row.id)] = cap
    await st.db.set_setting(USER_CAPS, json.dumps({str(k): v for k, v in caps.items()}))
    st.relay.presence.set_cap(int(row.id), cap)
    st.bandwidth.set_cap(int(row.id), cap)
    await st.events.emit("user_cap", admin.name, name=name, cap=cap)
    return web.json_response(user_json(row) | {"cap": cap})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/login", login)
    app.router.add_post("/v1/logout", logout)
    app.router.add_get("/v1/users", list_users)
    app.router.add_post("/v1/users", add_user)
    app.router.add_post("/v1/users/{name}/disable", disable_user)
    app.router.add_post("/v1/users/{name}/enable", enable_user)
    app.router.add_put("/v1/users/{name}/quota", set_quota)
    app.router.add_put("/v1/users/{name}/cap", set_cap)
    app.router.add_post("/v1/passwd", change_password)
