"""Operations of a cluster's nodes: the list clients keep, and the admins'
view and drain (docs/cluster.md)."""

from __future__ import annotations

from .common import COUNT, TIME, Schema, array, json_ok, obj, op, path

NODE_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
STATE: Schema = {"type": "string", "enum": ["up", "draining", "down"]}

SCHEMAS: dict[str, Schema] = {}

_NODE = obj(
    {
        "name": {"type": "string"},
        "url": {"type": "string"},
        "state": STATE,
        "started": TIME,
        "seen": {"type": "number", "description": "seconds since its last heartbeat"},
        "clients": COUNT,
        "transfers": COUNT,
    },
    ["name", "url", "state"],
)

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/nodes": {
        "get": op(
            "listNodeAddresses",
            "The cluster's nodes and where to reach them (a client's list of addresses)",
            "cluster",
            auth="user",
            ok={200: json_ok(obj({"nodes": array(_NODE)}, ["nodes"]))},
        )
    },
    "/v1/admin/nodes": {
        "get": op(
            "listNodes",
            "The cluster's nodes: state, heartbeat, clients and pushes under way",
            "cluster",
            auth="admin",
            ok={200: json_ok(obj({"me": {"type": "string"}, "nodes": array(_NODE)}, ["nodes"]))},
        )
    },
    "/v1/admin/nodes/{name}/drain": {
        "post": op(
            "drainNode",
            "Drain a node: it takes no new work and its clients move to the others",
            "cluster",
            auth="admin",
            params=[path("name", NODE_NAME)],
            ok={200: json_ok(obj({"node": {"type": "string"}, "draining": {"type": "boolean"}}))},
            errors=[400, 404],
            fuzz="it would drain the hub under test",
        ),
        "delete": op(
            "undrainNode",
            "Let a drained node serve again",
            "cluster",
            auth="admin",
            params=[path("name", NODE_NAME)],
            ok={200: json_ok(obj({"node": {"type": "string"}, "draining": {"type": "boolean"}}))},
            errors=[400, 404],
        ),
    },
    "/v1/admin/nodes/{name}": {
        "delete": op(
            "removeNode",
            "Forget a node that is down",
            "cluster",
            auth="admin",
            params=[path("name", NODE_NAME)],
            ok={200: json_ok(obj({"removed": {"type": "string"}}, ["removed"]))},
            errors=[400, 404, 409],
        )
    },
}
