"""Operations of the observation side: the event log's query and export,
transfers in flight and finished, one's own relayed connections, and the
overview and status the console's dashboard shows."""

from __future__ import annotations

from .common import COUNT, TIME, Schema, array, json_ok, nullable, obj, op, path, query, ref

TEXT_128: Schema = {"type": "string", "maxLength": 128}
LIMIT: Schema = {"type": "string", "pattern": "^[0-9]{1,9}$", "description": "1-1000"}
CURSOR: Schema = {"type": "string", "maxLength": 512, "description": "the previous page's next"}
WHEN: Schema = {
    "type": "string",
    "maxLength": 64,
    "description": "epoch seconds or ISO 8601 (UTC unless it says)",
}
FLAG: Schema = {"type": "string", "enum": ["0", "1", "true", "false"]}

SCHEMAS: dict[str, Schema] = {
    "Transfer": obj(
        {
            "kind": {"type": "string"},
            "user": {"type": "string"},
            "name": {"type": "string"},
        },
        ["kind"],
    ),
}

_PAGE_OF_TRANSFERS = obj(
    {"transfers": array(ref("Transfer")), "next": nullable({"type": "string"})},
    ["transfers", "next"],
)

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/admin/events": {
        "get": op(
            "listEvents",
            "The event log: filtered, sorted, a page at a time by cursor, or exported",
            "admin",
            auth="admin",
            params=[
                query(
                    "kind",
                    {"type": "string", "maxLength": 1100},
                    "one kind, several separated by commas, or repeated",
                ),
                query("actor", TEXT_128, "the account that acted"),
                query("agent", TEXT_128, "the agent it concerns"),
                query("address", TEXT_128, "the network address it came from"),
                query("since", WHEN),
                query("until", WHEN),
                query("q", {"type": "string", "maxLength": 256}, "free text"),
                query(
                    "sort",
                    {"type": "string", "enum": ["ts", "-ts", "kind", "-kind", "actor", "-actor"]},
                    "column, '-' for descending (default -ts)",
                ),
                query("limit", LIMIT),
                query("cursor", CURSOR),
                query("format", {"type": "string", "enum": ["csv", "json"]}, "export every row"),
            ],
            ok={
                200: {
                    "description": "A page of events, or with format the whole export",
                    "content": {
                        "application/json": {
                            "schema": {
                                "anyOf": [
                                    obj(
                                        {
                                            "events": array(ref("Event")),
                                            "next": nullable({"type": "string"}),
                                        },
                                        ["events", "next"],
                                    ),
                                    array(ref("Event")),
                                ]
                            }
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                }
            },
            errors=[400],
        )
    },
    "/v1/transfers": {
        "get": op(
            "listTransfers",
            "Transfers in flight (state=live) or finished (state=done), one's own "
            "(an admin: everyone's unless mine=1)",
            "transfers",
            auth="user",
            params=[
                query("state", {"type": "string", "enum": ["live", "done"]}),
                query("mine", FLAG),
                query("limit", LIMIT),
                query("cursor", CURSOR),
            ],
            ok={200: json_ok(_PAGE_OF_TRANSFERS)},
            errors=[400],
        )
    },
    "/v1/connections": {
        "get": op(
            "listMyConnections",
            "The caller's own live relayed connections",
            "transfers",
            auth="user",
            ok={200: json_ok(array(ref("Connection")))},
        )
    },
    "/v1/connections/{cid}": {
        "delete": op(
            "endMyConnection",
            "End one of the caller's own live relayed connections",
            "transfers",
            auth="user",
            params=[path("cid", {"type": "string"})],
            ok={200: json_ok(obj({"killed": {"type": "string"}}, ["killed"]))},
            errors=[404],
        )
    },
    "/v1/admin/overview": {
        "get": op(
            "overview",
            "What the dashboard shows: attachments, transfers, throughput over the hour, "
            "disk, budget, recent security events",
            "admin",
            auth="admin",
            ok={
                200: json_ok(
                    obj(
                        {
                            "version": {"type": "string"},
                            "uptime": {"type": "number"},
                            "agents": {
                                **obj({"online": COUNT, "total": COUNT}, ["online", "total"]),
                                "description": "attached (command channel) and enrolled",
                            },
                            "streams": {**COUNT, "description": "unfinished pushes"},
                            "transfers": COUNT,
                            "connections": COUNT,
                            "throughput": COUNT,
                            "security": array(ref("Event")),
                        },
                        ["version", "uptime", "agents", "streams", "transfers", "connections"],
                    )
                )
            },
        )
    },
    "/v1/admin/status": {
        "get": op(
            "hubStatus",
            "The hub's version, node, start time, uptime and the data folder's disk",
            "admin",
            auth="admin",
            ok={
                200: json_ok(
                    obj(
                        {
                            "version": {"type": "string"},
                            "started": TIME,
                            "uptime": {"type": "number"},
                        }
                    )
                )
            },
        )
    },
}
