"""Operations on self-registration, approvals and roles (handlers:
:mod:`freight.hub.approvals`)."""

from __future__ import annotations

from .accountpaths import PASSWORD
from .common import (
    COUNT,
    TIME,
    USER_NAME,
    Schema,
    array,
    json_ok,
    nullable,
    obj,
    op,
    path,
    query,
    ref,
)

_USER_PARAM = path("name", USER_NAME)
APP_NAME: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.:-]{1,64}$",
    "description": "an application name: 1-64 of A-Z a-z 0-9 _ . : -",
}
APP_STATE: Schema = {"type": "string", "enum": ["pending", "approved", "refused"]}
_APP_PARAM = path("name", APP_NAME)

SCHEMAS: dict[str, Schema] = {
    "Registered": obj(
        {
            "user": USER_NAME,
            "role": {"type": "string", "enum": ["user"]},
            "state": {
                "type": "string",
                "enum": ["active", "pending"],
                "description": "pending: it may log in once an admin approves it",
            },
        },
        ["user", "role", "state"],
    ),
    "App": obj(
        {
            "name": APP_NAME,
            "state": APP_STATE,
            "requested_by": {
                "type": "string",
                "description": "the account whose host registered it first (or the admin "
                "who decided ahead)",
            },
            "requested": TIME,
            "decided_by": nullable(USER_NAME),
            "decided": nullable(TIME),
        },
        ["name", "state", "requested_by", "requested", "decided_by", "decided"],
    ),
}

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/register": {
        "post": op(
            "register",
            "Register an account of one's own (freight hub --registration)",
            "accounts",
            auth="none",
            description="With --registration off (the default) the answer is 403. With open "
            "the account is active at once; with approval it waits (state pending) until an "
            "admin approves or refuses it. Every attempt counts against a limit per client "
            "address (429 with Retry-After); when as many registrations as the hub allows "
            "wait already the answer is 429 (code limit_reached); a taken name is 409.",
            body=obj({"user": USER_NAME, "password": PASSWORD}, ["user", "password"]),
            ok={201: json_ok(ref("Registered"), "Registered.")},
            errors=[403, 409, 429],
        )
    },
    "/v1/users/{name}/approve": {
        "post": op(
            "approveUser",
            "Approve an account that registered and waits: it may log in",
            "accounts",
            auth="admin",
            params=[_USER_PARAM],
            ok={200: json_ok(ref("User"))},
            errors=[404, 409],
        )
    },
    "/v1/users/{name}/refuse": {
        "post": op(
            "refuseUser",
            "Refuse an account that registered and waits: its name stays taken, it never logs in",
            "accounts",
            auth="admin",
            params=[_USER_PARAM],
            ok={200: json_ok(ref("User"))},
            errors=[404, 409],
        )
    },
    "/v1/users/{name}/password": {
        "post": op(
            "resetPassword",
            "Set another account's password; every login of it ends",
            "accounts",
            auth="admin",
            description="Not for one's own password (400: use POST /v1/passwd) nor an agent's.",
            params=[_USER_PARAM],
            body=obj({"password": PASSWORD}, ["password"]),
            ok={
                200: json_ok(
                    obj({"user": USER_NAME, "revoked_tokens": COUNT}, ["user", "revoked_tokens"])
                )
            },
            errors=[404],
        )
    },
    "/v1/users/{name}/role": {
        "post": op(
            "setRole",
            "Make an account an admin or an ordinary user",
            "accounts",
            auth="admin",
            description="The last enabled admin keeps its role (409); an agent's role does not "
            "change (400).",
            params=[_USER_PARAM],
            body=obj({"role": {"type": "string", "enum": ["admin", "user"]}}, ["role"]),
            ok={200: json_ok(ref("User"))},
            errors=[404, 409],
        )
    },
    "/v1/apps": {
        "get": op(
            "listApps",
            "Application names hosts registered, with an admin's decision on each",
            "accounts",
            auth="admin",
            description="With freight hub --app-approval the first registration of an unknown "
            "name records it pending; no host takes its messages until an admin approves it. "
            "At most 1,000 names, in name order.",
            params=[query("state", APP_STATE, "only the names in this state")],
            ok={200: json_ok(array(ref("App")))},
            errors=[400],
        )
    },
    "/v1/apps/{name}/approve": {
        "post": op(
            "approveApp",
            "Approve an application name: hosts registered on it take its messages at once",
            "accounts",
            auth="admin",
            description="A name nobody registered yet may be decided ahead.",
            params=[_APP_PARAM],
            ok={200: json_ok(ref("App"))},
            errors=[400],
        )
    },
    "/v1/apps/{name}/refuse": {
        "post": op(
            "refuseApp",
            "Refuse an application name: no host takes its messages",
            "accounts",
            auth="admin",
            params=[_APP_PARAM],
            ok={200: json_ok(ref("App"))},
            errors=[400],
        )
    },
}
