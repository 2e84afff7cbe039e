"""Channels that are not JSON: the control WebSocket and the HTTP
attachment that stands in for it when a proxy blocks WebSockets (handlers:
:mod:`freight.hub.channels`, :mod:`freight.hub.httpattach`; their frames:
docs/protocol.md). Documented with their content types; the fuzzing leaves
them out (each says why), their own tests drive them with real frames."""

from __future__ import annotations

from .common import BINARY, Schema, json_ok, obj, op, path, query

_AID = path("aid", {"type": "string", "pattern": "^[0-9a-f]{32}$"})
_COUNT_PARAM = {"type": "integer", "minimum": 0}
FRAMES = "binary frames (docs/protocol.md), not JSON"

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/control": {
        "get": op(
            "control",
            "The control channel: a WebSocket carrying frames",
            "channels",
            auth="user",
            description="Upgrade with 'Connection: Upgrade' and 'Upgrade: websocket'; each "
            "binary message is one frame (Hello first). A node takes --attach-rate control "
            "channels a second (WebSocket and HTTP together): the rest get 429 rate_limited "
            "with a Retry-After.",
            ok={101: {"description": "Switching to the WebSocket protocol."}},
            errors=[400, 429],
            fuzz="a WebSocket upgrade carrying " + FRAMES,
        )
    },
    "/v1/attach/http": {
        "post": op(
            "attachHttp",
            "Open an HTTP attachment (the control channel without WebSockets)",
            "channels",
            auth="user",
            ok={
                200: json_ok(
                    obj(
                        {"aid": {"type": "string"}, "keepalive": {"type": "number"}},
                        ["aid", "keepalive"],
                    )
                )
            },
            errors=[429],
            fuzz="each call starts an attachment that waits for its Hello frame",
        )
    },
    "/v1/attach/http/{aid}": {
        "delete": op(
            "detachHttp",
            "End an HTTP attachment",
            "channels",
            auth="user",
            params=[_AID],
            ok={204: {"description": "Ended."}},
            errors=[404],
            fuzz="part of the attachment's frame exchange",
        )
    },
    "/v1/attach/http/{aid}/down": {
        "get": op(
            "attachHttpDown",
            "The hub's frames, streamed (ack=N acknowledges what arrived)",
            "channels",
            auth="user",
            params=[_AID, query("ack", _COUNT_PARAM)],
            ok={200: {"description": "A stream of frames.", "content": {BINARY: {}}}},
            errors=[400, 404],
            fuzz="a long-lived streamed response of " + FRAMES,
        )
    },
    "/v1/attach/http/{aid}/up": {
        "post": op(
            "attachHttpUp",
            "The client's frames (seq=K numbers the first; no body: an ack alone)",
            "channels",
            auth="user",
            params=[_AID, query("seq", _COUNT_PARAM), query("ack", _COUNT_PARAM)],
            body={"type": "string", "format": "binary"},
            body_type=BINARY,
            ok={204: {"description": "Taken."}},
            errors=[404],
            fuzz="a body of " + FRAMES,
        )
    },
}
