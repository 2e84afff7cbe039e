"""The OpenAPI document (``GET /v1/openapi.json``) against the routes the
hub registers: every route has an operation and every operation a route,
so the document cannot drift from the handlers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from freight.hub.compose import HubConfig, build_app, build_hub, close_hub
from freight.hub.openapi import document, operations

WHERE = (
    "describe it in the area's module of freight/hub/openapi/ (hubpaths, accountpaths, "
    "agentpaths or channelpaths)"
)


def shape(path: str) -> str:
    """A path with its parameters unnamed: aiohttp's '{name:.+}' and the
    document's '{name}' are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture
async def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[web.Application]:
    monkeypatch.setenv("FREIGHT_ADMIN_PASSWORD", "a-long-enough-password")
    hub = await build_hub(HubConfig(data=tmp_path / "hub", port=0))
    try:
        yield build_app(hub)
    finally:
        await close_hub(hub)


def console_page(path: str) -> bool:
    """The web console's HTML pages and static files: they render the
    documented JSON operations and are not themselves part of the API."""
    return path == "/" or path == "/console" or path.startswith("/console/")


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path shape) of every API route; HEAD is GET's twin, added by aiohttp."""
    return {
        (route.method, shape(route.resource.canonical))
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and not console_page(route.resource.canonical)
    }


async def test_every_registered_route_is_documented(app: web.Application) -> None:
    documented = {(method, shape(path)) for method, path in operations(document())}
    missing = sorted(registered(app) - documented)
    assert not missing, (
        "routes with no operation in the OpenAPI document: "
        + ", ".join(f"{method} {path}" for method, path in missing)
        + f"; {WHERE}"
    )


async def test_every_documented_operation_is_a_route(app: web.Application) -> None:
    documented = {(method, shape(path)): path for method, path in operations(document())}
    stale = sorted(set(documented) - registered(app))
    assert not stale, "operations in the OpenAPI document that the hub does not route: " + (
        ", ".join(f"{method} {documented[(method, p)]}" for method, p in stale)
    )


def test_operations_are_complete_and_distinct() -> None:
    """Each operation has a unique id, a summary, a success answer and
    every path parameter it names; errors point at the shared Error answers."""
    doc = document()
    ids: list[str] = []
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            ids.append(op["operationId"])
            assert op["summary"], where
            assert any(s.startswith("2") or s == "101" for s in op["responses"]), where
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{where}: path parameters {declared} != {names}"
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert answer == {"$ref": f"#/components/responses/{status}"}, where
                    assert status in doc["components"]["responses"], where
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_admin_only_operations_say_403_and_logins_401() -> None:
    doc = document()
    login = doc["paths"]["/v1/login"]["post"]
    assert login["security"] == [] and "401" in login["responses"]
    users = doc["paths"]["/v1/users"]["get"]
    assert {"401", "403"} <= set(users["responses"])
    assert doc["paths"]["/v1/health"]["get"]["security"] == []
    limited = doc["components"]["responses"]["429"]
    assert "Retry-After" in limited["headers"]
    assert doc["components"]["securitySchemes"]["session"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "freight_session",
        "description": "the web console's session cookie",
    }
