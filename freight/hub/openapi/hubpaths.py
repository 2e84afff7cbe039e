"""Operations of the hub itself: health, the caller's files, bandwidth and
compression, streams, events, relayed connections, tunnels, messaging
hosts, metrics and this document (handlers: :mod:`freight.hub.rest`,
:mod:`freight.hub.tunnels`, :mod:`freight.hub.messaging`)."""

from __future__ import annotations

from .common import (
    COUNT,
    FILE_NAME,
    TIME,
    USER_NAME,
    Schema,
    array,
    json_ok,
    obj,
    op,
    path,
    query,
    ref,
)

LEVEL = {"type": "string", "enum": ["auto", "none", "fast", "max"]}

SCHEMAS: dict[str, Schema] = {
    "Health": obj(
        {"ok": {"const": True}, "version": {"type": "string"}, "protocol": {"type": "integer"}},
        ["ok", "version", "protocol"],
    ),
    "File": obj(
        {
            "name": FILE_NAME,
            "size": COUNT,
            "digest": {"type": "string"},
            "mtime": {"type": "number"},
            "created": TIME,
        },
        ["name", "size", "digest", "mtime", "created"],
    ),
    "Bandwidth": obj(
        {
            "budget": {"type": "string", "description": "the budget as set ('off': none)"},
            "now": {"type": "integer", "description": "bytes/s in force now; 0: unlimited"},
            "now_text": {"type": "string"},
            "active_streams": COUNT,
        },
        ["budget", "now", "now_text", "active_streams"],
    ),
    "Compression": obj(
        {
            "hub": LEVEL,
            "users": {"type": "object", "additionalProperties": {"type": "string"}},
            "load": {"type": "number", "description": "load per processor"},
        },
        ["hub", "users", "load"],
    ),
    "Stream": obj(
        {
            "user_id": {"type": "integer"},
            "sid": {"type": "string"},
            "name": {"type": "string"},
            "size": COUNT,
            "checkpoint": COUNT,
            "state": {"type": "string"},
            "updated": TIME,
        },
        ["user_id", "sid", "name", "size", "checkpoint", "state", "updated"],
    ),
    "Event": obj(
        {
            "id": {"type": "integer"},
            "ts": TIME,
            "kind": {"type": "string"},
            "actor": {"type": "string"},
            "detail": {"type": "object"},
        },
        ["id", "ts", "kind", "actor", "detail"],
    ),
    "Connection": obj(
        {
            "id": {"type": "string"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "app": {"type": "string"},
            "state": {"type": "string", "enum": ["connected", "waiting"]},
            "bytes_from": COUNT,
            "bytes_to": COUNT,
            "started": TIME,
            "elapsed": {"type": "number"},
        },
        ["id", "from", "to", "app", "state", "bytes_from", "bytes_to", "started", "elapsed"],
    ),
    "Exposed": obj(
        {"owner": USER_NAME, "name": {"type": "string"}, "allow": array({"type": "string"})},
        ["owner", "name", "allow"],
    ),
    "MsgHosts": obj(
        {
            "hosts": array(
                obj(
                    {
                        "hid": {"type": "string"},
                        "account": {"type": "string"},
                        "regs": array(
                            obj(
                                {
                                    "app": {"type": "string"},
                                    "interest": {"type": "integer"},
                                    "peer": {"type": "string"},
                                }
                            )
                        ),
                        "since": TIME,
                        "sent": COUNT,
                        "delivered": COUNT,
                        "refused": COUNT,
                        "inflight": COUNT,
                    },
                    ["hid", "account", "regs"],
                )
            )
        },
        ["hosts"],
    ),
}

_TUNNEL = {
    "allOf": [
        ref("Connection"),
        obj(
            {
                "proto": {"type": "string", "enum": ["tcp", "udp"]},
                "target": {"type": "string"},
                "kind": {"type": "string", "enum": ["expose", "forward"]},
                "rate": {"type": "integer", "description": "bytes/s since it started"},
            },
            ["proto", "target", "kind", "rate"],
        ),
    ]
}
TUNNEL_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.-]{1,64}$",
    "description": "the name a tunnel is exposed under",
}

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/openapi.json": {
        "get": op(
            "getOpenAPI",
            "This document (OpenAPI 3.1)",
            "hub",
            auth="none",
            ok={200: json_ok({"type": "object"}, "The document.")},
        )
    },
    "/v1/health": {
        "get": op(
            "getHealth",
            "Whether the hub answers; its version and protocol",
            "hub",
            auth="none",
            ok={200: json_ok(ref("Health"))},
        )
    },
    "/metrics": {
        "get": op(
            "getMetrics",
            "Prometheus metrics (text exposition format)",
            "hub",
            auth="none",
            ok={
                200: {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    },
    "/v1/files": {
        "get": op(
            "listFiles",
            "The caller's files on the hub",
            "files",
            auth="user",
            ok={200: json_ok(array(ref("File")))},
        )
    },
    "/v1/files/{name}": {
        "delete": op(
            "deleteFile",
            "Remove one of the caller's files",
            "files",
            auth="user",
            params=[path("name", {"type": "string", "minLength": 1}, "may contain '/'")],
            ok={200: json_ok(obj({"removed": {"type": "string"}}, ["removed"]))},
            errors=[404],
        )
    },
    "/v1/bandwidth": {
        "get": op(
            "getBandwidth",
            "The hub's bandwidth budget and what is in force now",
            "hub",
            auth="user",
            ok={200: json_ok(ref("Bandwidth"))},
        )
    },
    "/v1/admin/bandwidth": {
        "put": op(
            "setBandwidth",
            "Set the hub's bandwidth budget",
            "admin",
            auth="admin",
            description="'50M', 'off', or a timetable such as '08:00,10M 18:00,off'.",
            body=obj({"budget": {"type": "string", "maxLength": 4096}}, ["budget"]),
            ok={200: json_ok(ref("Bandwidth"))},
        )
    },
    "/v1/admin/compression": {
        "get": op(
            "getCompression",
            "The compression levels the hub asks of pushes",
            "admin",
            auth="admin",
            ok={200: json_ok(ref("Compression"))},
        ),
        "put": op(
            "setCompression",
            "Set the hub's level, or (with user) one account's",
            "admin",
            auth="admin",
            body=obj({"level": LEVEL, "user": {"type": "string", "maxLength": 256}}, ["level"]),
            ok={200: json_ok(ref("Compression"))},
            errors=[404],
        ),
    },
    "/v1/admin/streams": {
        "get": op(
            "listStreams",
            "Pushes under way (or waiting to resume)",
            "admin",
            auth="admin",
            ok={200: json_ok(array(ref("Stream")))},
        )
    },
    "/v1/admin/connections": {
        "get": op(
            "listConnections",
            "Live relayed connections; with limit, the newest and how many there are",
            "admin",
            auth="admin",
            params=[query("limit", {"type": "string", "pattern": "^[0-9]{1,9}$"}, "1-1000")],
            ok={
                200: json_ok(
                    {
                        "anyOf": [
                            array(ref("Connection")),
                            obj(
                                {"connections": array(ref("Connection")), "total": COUNT},
                                ["connections", "total"],
                            ),
                        ]
                    }
                )
            },
            errors=[400],
        )
    },
    "/v1/admin/connections/{cid}": {
        "delete": op(
            "killConnection",
            "End a live relayed connection",
            "admin",
            auth="admin",
            params=[path("cid", {"type": "string"})],
            ok={200: json_ok(obj({"killed": {"type": "string"}}, ["killed"]))},
            errors=[404],
        )
    },
    "/v1/admin/tunnels": {
        "get": op(
            "listTunnels",
            "Live tunnel connections",
            "tunnels",
            auth="admin",
            ok={200: json_ok(array(_TUNNEL))},
        )
    },
    "/v1/tunnels/exposed": {
        "get": op(
            "listExposed",
            "The names the caller exposes (an admin with all=1: everyone's)",
            "tunnels",
            auth="user",
            params=[query("all", {"type": "string", "enum": ["0", "1"]})],
            ok={200: json_ok(array(ref("Exposed")))},
        )
    },
    "/v1/tunnels/exposed/{name}": {
        "put": op(
            "expose",
            "Expose a name (or change whom it allows)",
            "tunnels",
            auth="user",
            params=[path("name", TUNNEL_NAME)],
            body=obj(
                {
                    "allow": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 64,
                        "items": {"anyOf": [USER_NAME, {"const": "*"}]},
                    },
                    "takeover": {"type": "boolean"},
                },
                ["allow"],
            ),
            ok={200: json_ok(ref("Exposed"))},
            errors=[429],
        ),
        "delete": op(
            "unexpose",
            "Stop exposing a name",
            "tunnels",
            auth="user",
            params=[path("name", TUNNEL_NAME)],
            ok={200: json_ok(obj({"ok": {"const": True}}, ["ok"]))},
            errors=[404],
        ),
    },
    "/v1/msg/hosts": {
        "get": op(
            "listMsgHosts",
            "Messaging hosts the caller may see",
            "messaging",
            auth="user",
            ok={200: json_ok(ref("MsgHosts"))},
        )
    },
    "/api/msg/hosts": {
        "get": op(
            "listMsgHostsLegacy",
            "The same as GET /v1/msg/hosts (kept for older clients)",
            "messaging",
            auth="user",
            ok={200: json_ok(ref("MsgHosts"))},
        )
        | {"deprecated": True}
    },
}
