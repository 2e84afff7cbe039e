"""Operations on self-registration, approvals and roles (handlers:
:mod:`freight.hub.approvals`)."""

from __future__ import annotations

from .accountpaths import PASSWORD
from .common import COUNT, USER_NAME, Schema, json_ok, obj, op, path, ref

_USER_PARAM = path("name", USER_NAME)

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
}
