"""Building blocks of the hub's OpenAPI document: the shared schemas, the
error answers every handler shares (``{"error": {"code", "message"}}``),
and :func:`op`, which turns what one handler does into an operation.

Plain data: an operation lists its parameters, body, success answers and
the statuses of its typed errors; the statuses that follow from who may
call it (401, 403) and from reading a JSON body (400, 408, 413) are added
here, so each area module states only what its handlers check."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

JSON = "application/json"
BINARY = "application/octet-stream"
Schema = dict[str, Any]

USER_NAME: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.-]{1,64}$",
    "description": "1-64 of A-Z a-z 0-9 _ . - (not '.' or '..')",
}
FILE_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1024,
    "description": "a relative POSIX path (no '.', '..', backslash or control character); "
    "at most 1024 bytes as UTF-8",
}
KEY: Schema = {
    "type": "string",
    "pattern": "^[0-9a-fA-F]{64}$",
    "description": "an Ed25519 public key: 32 bytes as 64 hex digits",
}
DIGEST: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "64 hex digits"}
TIME: Schema = {"type": "number", "description": "seconds since the Unix epoch"}
COUNT: Schema = {"type": "integer", "minimum": 0}
RATE_TEXT: Schema = {
    "type": "string",
    "maxLength": 64,
    "description": "bytes per second with an optional K, M, G or T (1024-based), or 'off'",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: Schema, required: Iterable[str] = (), *, closed: bool = False) -> Schema:
    """A JSON object; ``required`` defaults to none. Request bodies stay
    open (handlers ignore fields they do not know)."""
    out: Schema = {"type": "object", "properties": props}
    req = list(required)
    if req:
        out["required"] = req
    if closed:
        out["additionalProperties"] = False
    return out


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


ERROR = obj(
    {
        "error": obj(
            {
                "code": {
                    "type": "string",
                    "description": "stable, machine-readable (usage, not_logged_in, "
                    "forbidden, not_found, conflict, gone, rate_limited, limit_reached, …)",
                },
                "message": {"type": "string", "description": "one line for people"},
            },
            ["code", "message"],
        )
    },
    ["error"],
)

# Each status a handler answers with an Error body, and what it means.
ERRORS: dict[int, str] = {
    400: "The request is malformed: a field or parameter fails its check (code usage).",
    401: "No login, or an expired, revoked or disabled one; or wrong credentials.",
    403: "The account may not do this (most often: it needs an admin).",
    404: "No such thing (or, for a name, not one the caller may see).",
    405: "The path exists but not with this method.",
    408: "The request's body did not arrive in time.",
    409: "The request conflicts with the hub's state.",
    410: "What was asked for existed but changed or went.",
    413: "The request's body is larger than 1 MiB.",
    416: "The range asked for lies outside the file (Content-Range says its size).",
    429: "Too many attempts (code rate_limited, with Retry-After in seconds) or an "
    "account at one of its limits (code limit_reached).",
}


def _error_response(status: int) -> Schema:
    out: Schema = {"description": ERRORS[status], "content": {JSON: {"schema": ref("Error")}}}
    if status == 429:
        out["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before trying again (rate_limited only)",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    if status == 416:
        out["headers"] = {
            "Content-Range": {"description": "bytes */SIZE", "schema": {"type": "string"}}
        }
    return out


def responses() -> dict[str, Schema]:
    return {str(s): _error_response(s) for s in ERRORS}


def json_ok(schema: Schema, description: str = "Done.") -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def path(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema} | (
        {"description": description} if description else {}
    )


def query(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema} | (
        {"description": description} if description else {}
    )


BEARER: list[Schema] = [{"bearer": []}, {"session": []}]
AUTH_ERRORS = {"none": (), "optional": (), "user": (401,), "agent": (401,), "admin": (401, 403)}


def op(
    op_id: str,
    summary: str,
    tag: str,
    *,
    auth: str,
    ok: dict[int, Schema],
    errors: Iterable[int] = (),
    params: Iterable[Schema] = (),
    body: Schema | None = None,
    body_type: str = JSON,
    description: str = "",
    fuzz: str = "",
) -> Schema:
    """One operation. ``auth``: none, optional (a login is read when given),
    user (any login), agent (an agent's login) or admin. ``fuzz``: why the
    operation is left out of the schema-driven fuzzing (empty: it is fuzzed)."""
    statuses = set(errors) | set(AUTH_ERRORS[auth])
    out: Schema = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        out["description"] = description
    out["security"] = [] if auth == "none" else BEARER
    if auth == "optional":
        out["security"] = [{}, *BEARER]
    params = list(params)
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": True, "content": {body_type: {"schema": body}}}
        statuses |= {400, 408, 413}
    answers: dict[str, Schema] = {str(s): r for s, r in sorted(ok.items())}
    for s in sorted(statuses):
        answers[str(s)] = {"$ref": f"#/components/responses/{s}"}
    out["responses"] = answers
    if fuzz:
        out["x-fuzz-excluded"] = fuzz
    return out
