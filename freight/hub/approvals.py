"""Self-registration, approvals and roles (docs/protocol.md 1.5).

``POST /v1/register`` needs no login: with ``freight hub --registration
open`` the account is active at once, with ``approval`` it waits
(``pending``) until an admin approves or refuses it, with ``off`` (the
default) the answer is 403. Every attempt counts against the login guard
per client address, and a bounded number of accounts wait at once
(``freight hub --max-pending``, 1,000 by default). Admins approve and
refuse accounts, reset another account's password (its logins end) and set
roles; the last enabled admin keeps its role. With ``--app-approval`` a new
application name waits for an admin as well (:mod:`.messaging` holds it).
Every change is an event naming its actor.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from ..errors import Conflict, LimitReached, NotFound, UsageError
from ..names import check_new_password, check_user_name
from ..store.approvals import ACTIVE, APP_STATES, APPROVED, REFUSED
from .approvalrules import registration_state
from .limiter import address_key
from .requests import admin_user, json_fields
from .services import STATE
from .users import user_json

ROLES = ("admin", "user")


async def register(request: web.Request) -> web.Response:
    st = request.app[STATE]
    state = registration_state(st.registration)
    peer = request.remote or "?"
    # Counted before anything is looked at, never forgiven: a flood from one
    # address is refused (429) whatever its names.
    with st.logins.attempt("register", "", address_key(peer), time.time()):
        pass
    body = await json_fields(request, "user", "password")
    name = check_user_name(body["user"])
    password = check_new_password(body["password"])
    if await st.db.user_by_name(name) is not None:  # spare the hashing
        raise Conflict(f"the name {name!r} is taken; choose another")
    pw_hash = await st.passwords.hash(password)
    got = await st.db.register_user(name, pw_hash, state, st.max_pending)
    if got == "taken":
        raise Conflict(f"the name {name!r} is taken; choose another")
    if got == "full":
        raise LimitReached(
            f"{st.max_pending} registrations already wait for approval; try again later"
        )
    await st.events.emit("register", name, address=peer, state=state)
    return web.json_response({"user": name, "role": "user", "state": state}, status=201)


async def _target(request: web.Request) -> tuple[Any, Any]:
    """The admin asking and the account named in the path."""
    admin = await admin_user(request)
    name = request.match_info["name"]
    row = await request.app[STATE].db.user_by_name(name)
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return admin, row


async def _decide(request: web.Request, state: str) -> web.Response:
    admin, row = await _target(request)
    st = request.app[STATE]
    if not await st.db.decide_user(int(row.id), state):
        raise Conflict(f"{row.name} does not wait for approval (its account is {row.state})")
    await st.events.emit(
        "user_approved" if state == ACTIVE else "user_refused", admin.name, name=row.name
    )
    return web.json_response(user_json(row) | {"state": state})


async def approve_user(request: web.Request) -> web.Response:
    return await _decide(request, ACTIVE)


async def refuse_user(request: web.Request) -> web.Response:
    """The account stays (its name taken) and can never log in."""
    return await _decide(request, REFUSED)


async def reset_password(request: web.Request) -> web.Response:
    """An admin sets another account's password; every login of it ends."""
    admin, row = await _target(request)
    st = request.app[STATE]
    body = await json_fields(request, "password")
    password = check_new_password(body["password"])
    if int(row.id) == admin.id:
        raise UsageError("to change your own password use freight passwd (POST /v1/passwd)")
    if row.role == "agent":
        raise UsageError(f"{row.name} is an agent: it logs in with its key, not a password")
    revoked = await st.db.reset_password(int(row.id), await st.passwords.hash(password))
    await st.sessions.end_user(int(row.id), "password_reset")
    await st.events.emit("password_reset", admin.name, name=row.name, revoked_tokens=revoked)
    return web.json_response({"user": row.name, "revoked_tokens": revoked})


async def set_role(request: web.Request) -> web.Response:
    admin, row = await _target(request)
    st = request.app[STATE]
    body = await json_fields(request, "role")
    role = body["role"]
    if role not in ROLES:
        raise UsageError("role must be admin or user")
    if row.role == "agent":
        raise UsageError(f"{row.name} is an agent; its role does not change")
    if not await st.db.set_role(int(row.id), role):
        raise Conflict(f"{row.name} is the last enabled admin: make another account admin first")
    await st.events.emit("role_set", admin.name, name=row.name, role=role, was=row.role)
    return web.json_response(user_json(row) | {"role": role})


# --- applications --------------------------------------------------------------


def app_json(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "state": row.state,
        "requested_by": row.requested_by,
        "requested": row.requested,
        "decided_by": row.decided_by or None,
        "decided": row.decided or None,
    }


async def list_apps(request: web.Request) -> web.Response:
    await admin_user(request)
    state = request.query.get("state")
    if state is not None and state not in APP_STATES:
        raise UsageError(f"state must be one of {', '.join(APP_STATES)}")
    rows = await request.app[STATE].db.list_apps(state)
    return web.json_response([app_json(r) for r in rows])


APP_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_app_name(name: str) -> str:
    if not APP_NAME.fullmatch(name):
        raise UsageError("an application name is 1-64 of A-Z a-z 0-9 _ . : -")
    return name


async def _decide_app(request: web.Request, state: str) -> web.Response:
    admin = await admin_user(request)
    st = request.app[STATE]
    name = check_app_name(request.match_info["name"])
    row = await st.db.decide_app(name, state, admin.name)
    await st.events.emit(
        "app_approved" if state == APPROVED else "app_refused", admin.name, app=name
    )
    await st.messaging.decided(name, state)
    return web.json_response(app_json(row))


async def approve_app(request: web.Request) -> web.Response:
    return await _decide_app(request, APPROVED)


async def refuse_app(request: web.Request) -> web.Response:
    return await _decide_app(request, REFUSED)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/register", register)
    app.router.add_post("/v1/users/{name}/approve", approve_user)
    app.router.add_post("/v1/users/{name}/refuse", refuse_user)
    app.router.add_post("/v1/users/{name}/password", reset_password)
    app.router.add_post("/v1/users/{name}/role", set_role)
    app.router.add_get("/v1/apps", list_apps)
    app.router.add_post("/v1/apps/{name}/approve", approve_app)
    app.router.add_post("/v1/apps/{name}/refuse", refuse_app)
