"""The hub's JSON API described as an OpenAPI 3.1 document, served at
``GET /v1/openapi.json`` (no login needed).

The document is plain data, split by area (:mod:`.hubpaths`,
:mod:`.accountpaths`, :mod:`.agentpaths`, :mod:`.channelpaths`) on the
building blocks of :mod:`.common`. A route added to the hub is described in
the module of its area; ``tests/unit/test_openapi_routes.py`` fails while a
registered route has no operation here, or an operation no route.
``tests/integration/test_openapi.py`` fuzzes a live hub against it."""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web

from ... import __version__
from . import (
    accountpaths,
    agentpaths,
    approvalpaths,
    channelpaths,
    hubpaths,
    nodepaths,
    observepaths,
)
from .common import ERROR, responses

AREAS = (
    hubpaths,
    accountpaths,
    approvalpaths,
    agentpaths,
    channelpaths,
    observepaths,
    nodepaths,
)
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def document() -> dict[str, Any]:
    """The whole document, built anew (cheap; the hub serves one copy)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR}
    for area in AREAS:
        for route, ops in area.PATHS.items():
            paths.setdefault(route, {}).update(ops)
        schemas.update(getattr(area, "SCHEMAS", {}))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Freight hub",
            "version": __version__,
            "description": "The hub's JSON API, shared by the freight CLI, the SDK and the "
            "web console. Log in with POST /v1/login and send the token as "
            "'Authorization: Bearer TOKEN'. Every error is answered as "
            '{"error": {"code", "message"}} with a stable code.',
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "responses": responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token POST /v1/login (or /v1/agents/login) answers",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "freight_session",
                    "description": "the web console's session cookie",
                },
            },
        },
    }


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    return {
        (method.upper(), route)
        for route, ops in doc["paths"].items()
        for method in ops
        if method in METHODS
    }


@functools.cache
def _body() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=_body(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", serve)
