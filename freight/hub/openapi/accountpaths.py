"""Operations on accounts: logging in and out, users, passwords, identity
keys and links to stored files (handlers: :mod:`freight.hub.users`,
:mod:`freight.hub.keys`, :mod:`freight.hub.links`)."""

from __future__ import annotations

from .common import (
    BINARY,
    COUNT,
    FILE_NAME,
    KEY,
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

PASSWORD = {"type": "string", "minLength": 8, "maxLength": 1024}
ROLE = {"type": "string", "enum": ["admin", "user", "agent"]}
ACCOUNT_STATE = {
    "type": "string",
    "enum": ["active", "pending", "refused"],
    "description": "pending: a registration waiting for an admin; refused: it may never log in",
}
LINK_TOKEN = {
    "type": "string",
    "description": "the link's token (43 URL-safe base64 characters) or, to revoke, its id "
    "(12 hex digits)",
}

_USED = {"allOf": [ref("User"), obj({"used": COUNT}, ["used"])]}  # an account and its bytes

SCHEMAS: dict[str, Schema] = {
    "Login": obj(
        {
            "token": {"type": "string", "description": "send as 'Authorization: Bearer TOKEN'"},
            "user": USER_NAME,
            "role": ROLE,
        },
        ["token", "user", "role"],
    ),
    "User": obj(
        {
            "name": USER_NAME,
            "role": ROLE,
            "disabled": {"type": "boolean"},
            "created": TIME,
            "quota": {"type": "integer", "minimum": 0, "description": "bytes; 0: none"},
            "state": ACCOUNT_STATE,
        },
        ["name", "role", "disabled", "created", "quota", "state"],
    ),
    "Keys": obj(
        {
            "user": USER_NAME,
            "max": {"type": "integer", "description": "keys an account may hold"},
            "keys": array(obj({"key": KEY, "created": TIME}, ["key", "created"])),
        },
        ["user", "max", "keys"],
    ),
    "Link": obj(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
            "name": FILE_NAME,
            "size": COUNT,
            "digest": {"type": "string"},
            "uses": {"type": "integer", "minimum": 1, "maximum": 1000},
            "used": COUNT,
            "created": TIME,
            "expires_at": TIME,
            "state": {"type": "string", "enum": ["live", "used", "expired"]},
            "owner": USER_NAME,
            "to": nullable(USER_NAME),
        },
        ["id", "name", "size", "digest", "uses", "used", "created", "expires_at", "state"],
    ),
}

_USER_PARAM = path("name", USER_NAME)
_WHOSE = query("user", USER_NAME, "another account's keys (admins only)")

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/login": {
        "post": op(
            "login",
            "Log in with a password; answers a bearer token",
            "accounts",
            auth="none",
            description="Failures are limited per account and address: after too many the "
            "answer is 429 with Retry-After, and the lockout doubles with each failure. "
            "An account that registered and waits for an admin's approval, or was refused, "
            "is answered 403 (code awaiting_approval, or forbidden), and only once its "
            "password is verified: a wrong password gets the ordinary 401.",
            body=obj({"user": USER_NAME, "password": {"type": "string"}}, ["user", "password"]),
            ok={200: json_ok(ref("Login"))},
            errors=[401, 403, 429],
        )
    },
    "/v1/logout": {
        "post": op(
            "logout",
            "End the caller's own login (what it holds open is closed)",
            "accounts",
            auth="user",
            ok={200: json_ok(obj({"user": USER_NAME}, ["user"]))},
            fuzz="it ends the login the fuzzing runs under",
        )
    },
    "/v1/passwd": {
        "post": op(
            "changePassword",
            "Change the caller's own password; its other logins end",
            "accounts",
            auth="user",
            description="A wrong current password counts against the login limits (429).",
            body=obj({"current": {"type": "string"}, "new": PASSWORD}, ["current", "new"]),
            ok={
                200: json_ok(
                    obj({"user": USER_NAME, "revoked_tokens": COUNT}, ["user", "revoked_tokens"])
                )
            },
            errors=[429],
        )
    },
    "/v1/users": {
        "get": op(
            "listUsers",
            "Every account with the bytes it holds; with limit or after, a page by name",
            "accounts",
            auth="admin",
            params=[
                query("state", ACCOUNT_STATE, "only the accounts in this state"),
                query("limit", {"type": "string", "pattern": "^[0-9]{1,9}$"}, "1-1000"),
                query("after", {"type": "string", "maxLength": 64}, "the previous page's next"),
            ],
            ok={
                200: json_ok(
                    {
                        "anyOf": [
                            array(_USED),
                            obj(
                                {"users": array(_USED), "next": nullable(USER_NAME)},
                                ["users", "next"],
                            ),
                        ]
                    }
                )
            },
            errors=[400],
        ),
        "post": op(
            "addUser",
            "Add an account",
            "accounts",
            auth="admin",
            body=obj(
                {"name": USER_NAME, "password": PASSWORD, "admin": {"type": "boolean"}},
                ["name", "password"],
            ),
            ok={201: json_ok(ref("User"), "Added.")},
            errors=[409],
        ),
    },
    "/v1/users/{name}/disable": {
        "post": op(
            "disableUser",
            "Disable an account: its logins and what they hold open end",
            "accounts",
            auth="admin",
            params=[_USER_PARAM],
            ok={200: json_ok(ref("User"))},
            errors=[404, 409],
        )
    },
    "/v1/users/{name}/enable": {
        "post": op(
            "enableUser",
            "Enable an account again",
            "accounts",
            auth="admin",
            params=[_USER_PARAM],
            ok={200: json_ok(ref("User"))},
            errors=[404],
        )
    },
    "/v1/users/{name}/quota": {
        "put": op(
            "setQuota",
            "Bytes an account may hold on the hub (0: no quota)",
            "accounts",
            auth="admin",
            params=[_USER_PARAM],
            body=obj({"quota": {"type": "integer", "minimum": 0, "maximum": 2**62}}, ["quota"]),
            ok={200: json_ok(ref("User"))},
            errors=[404],
        )
    },
    "/v1/users/{name}/cap": {
        "put": op(
            "setUserCap",
            "Bytes per second an account's traffic may take (0: none)",
            "accounts",
            auth="admin",
            params=[_USER_PARAM],
            body=obj({"cap": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1}}, ["cap"]),
            ok={200: json_ok({"allOf": [ref("User"), obj({"cap": {"type": "integer"}}, ["cap"])]})},
            errors=[404],
        )
    },
    "/v1/keys": {
        "get": op(
            "listKeys",
            "The caller's identity keys (an admin: any account's)",
            "keys",
            auth="user",
            params=[_WHOSE],
            ok={200: json_ok(ref("Keys"))},
            errors=[400, 403, 404],
        ),
        "put": op(
            "addKey",
            "Register this device's identity key and bind this login to it",
            "keys",
            auth="user",
            body=obj({"key": KEY}, ["key"]),
            ok={200: json_ok(obj({"user": USER_NAME, "key": KEY}, ["user", "key"]))},
            errors=[403, 409],
        ),
    },
    "/v1/keys/{key}": {
        # One path, two meanings (as the hub routes it): GET names an account,
        # DELETE a key.
        "get": op(
            "peerKeys",
            "An account's keys as its peers see them",
            "keys",
            auth="user",
            params=[path("key", {"type": "string", "minLength": 1}, "the account's name")],
            ok={200: json_ok(obj({"user": USER_NAME, "keys": array(KEY)}, ["user", "keys"]))},
            errors=[404],
        ),
        "delete": op(
            "removeKey",
            "Remove an identity key; the logins bound to it end",
            "keys",
            auth="user",
            params=[path("key", KEY), _WHOSE],
            ok={
                200: json_ok(
                    obj(
                        {"user": USER_NAME, "key": KEY, "logins_ended": COUNT},
                        ["user", "key", "logins_ended"],
                    )
                )
            },
            errors=[400, 403, 404],
        ),
    },
    "/v1/links": {
        "get": op(
            "listLinks",
            "The caller's links and those made for it",
            "links",
            auth="user",
            ok={
                200: json_ok(
                    array(
                        {
                            "allOf": [
                                ref("Link"),
                                obj({"mine": {"type": "boolean"}}, ["mine", "owner", "to"]),
                            ]
                        }
                    )
                )
            },
        ),
        "post": op(
            "createLink",
            "Make a link to one of the caller's files",
            "links",
            auth="user",
            body=obj(
                {
                    "name": FILE_NAME,
                    "expires": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 30 * 86400,
                        "default": 900,
                        "description": "seconds",
                    },
                    "uses": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
                    "to": nullable(USER_NAME),
                },
                ["name"],
            ),
            ok={
                201: json_ok(
                    {
                        "allOf": [
                            ref("Link"),
                            obj(
                                {"token": {"type": "string"}, "url": {"type": "string"}},
                                ["token", "url", "owner", "to"],
                            ),
                        ]
                    },
                    "Made.",
                )
            },
            errors=[404, 429],
        ),
    },
    "/v1/links/{token}": {
        "get": op(
            "fetchLink",
            "The linked file (Range resumes it); anyone with the token, or the one account "
            "it was made for",
            "links",
            auth="optional",
            params=[
                path("token", LINK_TOKEN),
                {
                    "name": "Range",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^bytes=[0-9]{1,19}-[0-9]{0,19}$"},
                },
            ],
            ok={
                200: {"description": "The whole file.", "content": {BINARY: {}}},
                206: {"description": "The range asked for.", "content": {BINARY: {}}},
            },
            errors=[400, 401, 403, 404, 409, 410, 416, 429],
            description="Unknown tokens count as failed guesses against the client's "
            "address (429 with Retry-After once too many).",
        ),
        "delete": op(
            "revokeLink",
            "Revoke one of the caller's links (by token or id)",
            "links",
            auth="user",
            params=[path("token", LINK_TOKEN)],
            ok={200: json_ok(obj({"revoked": COUNT}, ["revoked"]))},
            errors=[404],
        ),
    },
}
