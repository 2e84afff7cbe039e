"""Operations on agents and collection: enrolment tokens, enrolment and
key-based login, status, caps, the command queue, collection policies,
offers and what was collected (handlers: :mod:`freight.hub.agents`,
:mod:`freight.hub.collectapi`)."""

from __future__ import annotations

from ...protocol.agents import COMMAND_KINDS
from .common import (
    BINARY,
    COUNT,
    DIGEST,
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

_AGENT = path("name", USER_NAME, "the agent's name")
_COMMAND_ID = path("id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1})
POLICY_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
SIZE_TEXT = {
    "type": "string",
    "maxLength": 32,
    "description": "bytes with an optional K, M, G or T (1024-based), at most 4 EiB; '0': no limit",
}

SCHEMAS: dict[str, Schema] = {
    "Agent": obj(
        {
            "name": USER_NAME,
            "online": {"type": "boolean"},
            "last_seen": nullable(TIME),
            "version": nullable({"type": "string"}),
            "address": nullable({"type": "string"}),
            "busy": COUNT,
            "queued": COUNT,
            "disabled": {"type": "boolean"},
            "cap": {"type": "integer"},
            "enrolled": nullable(TIME),
            "node": {"type": "string", "description": "the cluster node it is attached to"},
        },
        ["name", "online", "busy", "queued", "disabled", "cap"],
    ),
    "Command": obj(
        {
            "id": {"type": "integer"},
            "kind": {"type": "string"},
            "state": {"type": "string"},
            "result": {"description": "the agent's answer (JSON), null until it answers"},
            "created": TIME,
            "updated": TIME,
            "deliveries": COUNT,
        },
        ["id", "kind", "state", "result", "created", "updated", "deliveries"],
    ),
    "Policy": obj(
        {
            "name": POLICY_NAME,
            "agents": {"type": "string", "description": "a glob of agent names"},
            "include": array({"type": "string"}),
            "exclude": array({"type": "string"}),
            "max_size": {"type": "integer", "minimum": 0},
            "every": {"type": "number"},
        },
        ["name", "agents", "include", "exclude", "max_size", "every"],
    ),
    "Collected": obj(
        {
            "digest": DIGEST,
            "size": COUNT,
            "state": {"type": "string"},
            "holders": array(
                obj(
                    {"agent": {"type": "string"}, "path": {"type": "string"}, "mtime": TIME},
                    ["agent", "path", "mtime"],
                )
            ),
        },
        ["digest", "size", "state", "holders"],
    ),
}

_TOKEN_STATE = {"type": "string", "enum": ["open", "used", "revoked", "expired"]}
_OFFER = obj(
    {
        "path": {"type": "string", "pattern": "^/", "maxLength": 4096},
        "size": COUNT,
        "mtime": {"type": "number"},
        "digest": DIGEST,
    },
    ["path", "size", "mtime", "digest"],
)

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/agents/tokens": {
        "post": op(
            "createEnrolToken",
            "A one-time token an agent enrols with",
            "agents",
            auth="admin",
            body=obj(
                {
                    "name": USER_NAME,
                    "ttl": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 30 * 86400,
                        "default": 86400,
                        "description": "seconds the token lives",
                    },
                },
                ["name"],
            ),
            ok={
                200: json_ok(
                    obj(
                        {"name": USER_NAME, "token": {"type": "string"}, "expires": TIME},
                        ["name", "token", "expires"],
                    )
                )
            },
            errors=[409],
        ),
        "get": op(
            "listEnrolTokens",
            "Enrolment tokens and their states",
            "agents",
            auth="admin",
            ok={
                200: json_ok(
                    array(
                        obj(
                            {
                                "name": USER_NAME,
                                "created": TIME,
                                "expires": TIME,
                                "state": _TOKEN_STATE,
                            },
                            ["name", "created", "expires", "state"],
                        )
                    )
                )
            },
        ),
    },
    "/v1/agents/tokens/{name}": {
        "delete": op(
            "revokeEnrolTokens",
            "Revoke a name's unused enrolment tokens",
            "agents",
            auth="admin",
            params=[path("name", {"type": "string", "minLength": 1})],
            ok={200: json_ok(obj({"revoked": COUNT}, ["revoked"]))},
            errors=[404],
        )
    },
    "/v1/agents/enroll": {
        "post": op(
            "enrollAgent",
            "Trade a one-time token for an agent account bound to a key",
            "agents",
            auth="none",
            body=obj({"token": {"type": "string"}, "key": KEY}, ["token", "key"]),
            ok={
                200: json_ok(
                    obj(
                        {"name": USER_NAME, "fingerprint": {"type": "string"}},
                        ["name", "fingerprint"],
                    )
                )
            },
            errors=[401, 429],
        )
    },
    "/v1/agents/challenge": {
        "post": op(
            "agentChallenge",
            "A fresh challenge for an agent's key-based login",
            "agents",
            auth="none",
            body=obj({"name": USER_NAME}, ["name"]),
            ok={200: json_ok(obj({"challenge": {"type": "string"}}, ["challenge"]))},
            errors=[429],
        )
    },
    "/v1/agents/login": {
        "post": op(
            "agentLogin",
            "Log an agent in with its signature of a challenge",
            "agents",
            auth="none",
            body=obj(
                {
                    "name": USER_NAME,
                    "challenge": {"type": "string"},
                    "signature": {"type": "string", "description": "hex"},
                },
                ["name", "challenge", "signature"],
            ),
            ok={200: json_ok(ref("Login"))},
            errors=[401, 429],
        )
    },
    "/v1/agents/security": {
        "post": op(
            "reportSecurity",
            "An agent reports a request it refused (agents only: others get 400)",
            "agents",
            auth="agent",
            body=obj({k: {"type": "string"} for k in ("op", "path", "peer", "reason")}),
            ok={200: json_ok(obj({"ok": {"const": True}}, ["ok"]))},
        )
    },
    "/v1/agents": {
        "get": op(
            "listAgents",
            "Every agent and its status; with limit or after, a page by name; prefix filters",
            "agents",
            auth="admin",
            params=[
                query("limit", {"type": "string", "pattern": "^[0-9]{1,9}$"}, "1-1000"),
                query("after", {"type": "string", "maxLength": 64}, "the previous page's next"),
                query(
                    "prefix",
                    {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{0,64}$"},
                    "only the names that start with it",
                ),
            ],
            ok={
                200: json_ok(
                    {
                        "anyOf": [
                            array(ref("Agent")),
                            obj(
                                {"agents": array(ref("Agent")), "next": nullable(USER_NAME)},
                                ["agents", "next"],
                            ),
                        ]
                    }
                )
            },
            errors=[400],
        )
    },
    "/v1/agents/{name}": {
        "delete": op(
            "removeAgent",
            "Forget an agent: its key, logins and queue go at once",
            "agents",
            auth="admin",
            params=[_AGENT],
            ok={200: json_ok(obj({"removed": USER_NAME}, ["removed"]))},
            errors=[404],
        )
    },
    "/v1/agents/{name}/disable": {
        "post": op(
            "disableAgent",
            "Disable an agent",
            "agents",
            auth="admin",
            params=[_AGENT],
            ok={200: json_ok(ref("User"))},
            errors=[404, 409],
        )
    },
    "/v1/agents/{name}/enable": {
        "post": op(
            "enableAgent",
            "Enable an agent again",
            "agents",
            auth="admin",
            params=[_AGENT],
            ok={200: json_ok(ref("User"))},
            errors=[404],
        )
    },
    "/v1/agents/{name}/key": {
        "put": op(
            "setAgentKey",
            "Replace an agent's login key; its logins end",
            "agents",
            auth="admin",
            params=[_AGENT],
            body=obj({"key": KEY}, ["key"]),
            ok={
                200: json_ok(
                    obj(
                        {"name": USER_NAME, "key": KEY, "logins_ended": COUNT},
                        ["name", "key", "logins_ended"],
                    )
                )
            },
            errors=[404],
        )
    },
    "/v1/agents/{name}/cap": {
        "put": op(
            "setAgentCap",
            "Bytes per second an agent's traffic may take (0: none)",
            "agents",
            auth="admin",
            params=[_AGENT],
            body=obj({"cap": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1}}, ["cap"]),
            ok={
                200: json_ok(obj({"name": USER_NAME, "cap": {"type": "integer"}}, ["name", "cap"]))
            },
            errors=[404],
        )
    },
    "/v1/agents/{name}/commands": {
        "post": op(
            "queueCommand",
            "Queue a command for an agent (handed over at once when it is online)",
            "agents",
            auth="admin",
            params=[_AGENT],
            body=obj(
                {
                    "kind": {"type": "string", "enum": list(COMMAND_KINDS)},
                    "args": {"type": "object", "description": "the command's arguments"},
                },
                ["kind"],
            ),
            ok={
                200: json_ok(
                    obj(
                        {
                            "id": {"type": "integer"},
                            "state": {"type": "string", "enum": ["delivered", "queued"]},
                        },
                        ["id", "state"],
                    )
                )
            },
            errors=[404],
        )
    },
    "/v1/agents/commands/{id}": {
        "get": op(
            "getCommand",
            "A command's state; wait=S waits up to S seconds for its result",
            "agents",
            auth="admin",
            params=[
                _COMMAND_ID,
                query(
                    "wait",
                    {"type": "number", "minimum": 0, "maximum": 120, "default": 0},
                    "seconds (brought within 0-120)",
                ),
            ],
            ok={200: json_ok(ref("Command"))},
            errors=[400, 404],
        )
    },
    "/v1/agents/commands/{id}/cancel": {
        "post": op(
            "cancelCommand",
            "Give up on an open command",
            "agents",
            auth="admin",
            params=[_COMMAND_ID],
            ok={200: json_ok(ref("Command"))},
            errors=[400, 404, 409],
        )
    },
    "/v1/collect/policies": {
        "get": op(
            "listPolicies",
            "Collection policies (an agent: those that select it; others get 400)",
            "collection",
            auth="user",
            ok={200: json_ok(array(ref("Policy")))},
            errors=[400],
        )
    },
    "/v1/collect/policies/{name}": {
        "put": op(
            "putPolicy",
            "Set a collection policy; the agents it selects rescan",
            "collection",
            auth="admin",
            params=[path("name", POLICY_NAME)],
            body=obj(
                {
                    "agents": {"type": "string", "default": "*", "maxLength": 1024},
                    "include": array({"type": "string"}),
                    "exclude": array({"type": "string"}),
                    "max_size": {"anyOf": [SIZE_TEXT, {"type": "integer", "minimum": 0}]},
                    "every": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 366 * 86400,
                        "default": 3600,
                        "description": "seconds between scans",
                    },
                }
            ),
            ok={200: json_ok(ref("Policy"))},
        ),
        "delete": op(
            "deletePolicy",
            "Remove a collection policy",
            "collection",
            auth="admin",
            params=[path("name", {"type": "string", "minLength": 1})],
            ok={200: json_ok(obj({"removed": {"type": "string"}}, ["removed"]))},
            errors=[404],
        ),
    },
    "/v1/collect/offers": {
        "post": op(
            "offerFiles",
            "An agent offers a batch of files (agents only: others get 400)",
            "collection",
            auth="agent",
            body=obj(
                {
                    "batch": {"type": "string"},
                    "policy": {"type": "string"},
                    "offers": {"type": "array", "items": _OFFER, "maxItems": 2000},
                    "removed": {"type": "array", "items": {"type": "string"}, "maxItems": 2000},
                },
                ["batch", "policy"],
            ),
            ok={
                200: json_ok(
                    obj(
                        {
                            "ack": {"type": "string"},
                            "wanted": {**COUNT, "description": "digests that became wanted"},
                        },
                        ["ack", "wanted"],
                    )
                )
            },
        )
    },
    "/v1/collected": {
        "get": op(
            "listCollected",
            "Collected contents and who holds them",
            "collection",
            auth="admin",
            params=[query("policy", {"type": "string"})],
            ok={200: json_ok(array(ref("Collected")))},
        )
    },
    "/v1/collected/stats": {
        "get": op(
            "collectionStats",
            "Counts of collected contents",
            "collection",
            auth="admin",
            ok={
                200: json_ok(
                    obj(
                        {
                            k: COUNT
                            for k in (
                                "unique_files",
                                "unique_bytes",
                                "received_bytes",
                                "pending",
                                "failed",
                                "paused_for_disk",
                            )
                        },
                        ["unique_files", "unique_bytes", "pending", "paused_for_disk"],
                    )
                )
            },
        )
    },
    "/v1/collected/{digest}": {
        "get": op(
            "getCollected",
            "One collected content's bytes",
            "collection",
            auth="admin",
            params=[path("digest", {"type": "string"}, "its BLAKE3 digest (64 hex)")],
            ok={200: {"description": "The content.", "content": {BINARY: {}}}},
            errors=[404],
        )
    },
}
