"""Identity keys: the Ed25519 public keys that connect/listen and agents
prove themselves with (docs/protocol.md 12.4, 13.1).

    GET    /v1/keys[?user=NAME]           your keys, newest first (admins: NAME's)
    PUT    /v1/keys {key}                 register this device's key (not agents)
    DELETE /v1/keys/{key}[?user=NAME]     remove a key; the logins bound to it end
    GET    /v1/keys/{name}                NAME's keys as peers see them

A user's device registers its key through its login, which binds the two:
peers are sent only the key of the device at the other end, and removing a
key ends the logins bound to it. An account holds at most
``MAX_IDENTITY_KEYS``. An agent has exactly one key, its login key, set at
enrolment or by an admin (``PUT /v1/agents/{name}/key``, in
:mod:`.agents`); it cannot add any: a stolen agent login must not become a
permanent one.
"""

from __future__ import annotations

import re

from aiohttp import web

from ..errors import Conflict, Forbidden, NotFound, UsageError
from ..names import check_user_name
from ..store.accounts import MAX_IDENTITY_KEYS
from .requests import current_user
from .services import STATE
from .streams import User

KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")


async def _key_body(request: web.Request) -> str:
    try:
        body = await request.json()
        key = str(body["key"])
    except (ValueError, KeyError, TypeError):
        raise UsageError("the body must be JSON with 'key': 64 hex digits") from None
    return check_key(key)


def check_key(key: str) -> str:
    if not KEY_HEX.fullmatch(key):
        raise UsageError("an identity key is 32 bytes written as 64 hex digits")
    return key.lower()


async def _account(request: web.Request, me: User) -> tuple[int, str, str]:
    """Whose keys a request is about: the caller's, or with ``?user=`` (an
    admin only) another account's. (id, name, role)."""
    name = request.query.get("user")
    if name is None or name == me.name:
        return me.id, me.name, me.role
    if me.role != "admin":
        raise Forbidden("only an admin manages another account's keys")
    row = await request.app[STATE].db.user_by_name(check_user_name(name))
    if row is None:
        raise NotFound(f"there is no account {name!r} on this hub", hint="run: freight users ls")
    return int(row.id), str(row.name), str(row.role)


async def list_keys(request: web.Request) -> web.Response:
    me = await current_user(request)
    user_id, name, _ = await _account(request, me)
    rows = await request.app[STATE].db.list_keys(user_id)
    return web.json_response(
        {
            "user": name,
            "max": MAX_IDENTITY_KEYS,
            "keys": [{"key": r.key, "created": r.created} for r in rows],
        }
    )


async def put_key(request: web.Request) -> web.Response:
    """Register this device's identity key and bind this login to it."""
    user = await current_user(request)
    st = request.app[STATE]
    if user.role == "agent":
        raise Forbidden(
            "an agent cannot add identity keys; its login key is set at enrolment",
            hint="an admin replaces it with: freight agents key NAME KEY",
        )
    key = await _key_body(request)
    known = key in {str(r.key) for r in await st.db.list_keys(user.id)}
    if not await st.db.register_key(user.id, user.token, key):
        raise Conflict(
            f"account {user.name!r} already has {MAX_IDENTITY_KEYS} identity keys",
            hint="see them with: freight keys ls; remove an unused one with: freight keys rm KEY",
        )
    st.relay.forget_keys(user.id)
    if not known:
        await st.events.emit("key_added", user.name, key=key)
    return web.json_response({"user": user.name, "key": key})


async def delete_key(request: web.Request) -> web.Response:
    me = await current_user(request)
    st = request.app[STATE]
    key = check_key(request.match_info["key"])
    user_id, name, _ = await _account(request, me)
    tokens = await st.db.remove_key(user_id, key)
    if tokens is None:
        raise NotFound(f"{name!r} has no identity key {key}", hint="run: freight keys ls")
    st.relay.forget_keys(user_id)
    closed = await st.sessions.end_tokens(tokens, "key_removed")
    await st.events.emit(
        "key_removed", me.name, user=name, key=key, logins=len(tokens), channels=closed
    )
    return web.json_response({"user": name, "key": key, "logins_ended": len(tokens)})


async def get_keys(request: web.Request) -> web.Response:
    await current_user(request)
    st = request.app[STATE]
    row = await st.db.user_by_name(request.match_info["name"])
    if row is None:
        raise NotFound(f"there is no user {request.match_info['name']!r} on this hub")
    return web.json_response({"user": row.name, "keys": await st.relay.keys_of(int(row.id))})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/keys", list_keys)
    app.router.add_put("/v1/keys", put_key)
    app.router.add_delete("/v1/keys/{key}", delete_key)
    app.router.add_get("/v1/keys/{name}", get_keys)
