"""Agents (``/console/agents``): enrolment tokens (create one with an
expiry and see it once with a copy button, revoke), the agents with
online/offline, last seen, version, address and cap, and a command run on
one with its answer (``POST /v1/agents/{name}/commands``, then ``GET
/v1/agents/commands/{id}?wait=…``). Admins only, as the API.

The table is a page of ``PAGE`` agents by name, ``GET /v1/agents?limit=&after=``
(keyset on the name index): ``?after=NAME`` in the page's address is the
page after that name, however many agents the hub has; ``?prefix=`` shows
only the names that start with it (the API's ``prefix``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...protocol.agents import COMMAND_KINDS, FILE_COMMANDS
from ...store.commands import TERMINAL_COMMAND_STATES
from .. import agents
from .core import PAGE, Viewer, add_page, after_of, api_or_error, fragment, table_src

# The commands the page offers (file copies have their own CLI: freight cp).
RUNNABLE = [k for k in COMMAND_KINDS if k not in FILE_COMMANDS]
WAIT = "5"  # seconds one fetch of a command's answer waits for it


def _prefix(request: web.Request) -> str:
    """The start of the names shown (the name filter), as typed."""
    return request.query.get("prefix", "")[:64]


async def _page(request: web.Request, who: Viewer) -> dict[str, Any]:
    prefix = _prefix(request)
    src = table_src("/console/agents/table", after_of(request), prefix=prefix)
    return {"kinds": RUNNABLE, "table_src": src, "prefix": prefix}


async def _tokens(request: web.Request, who: Viewer) -> dict[str, Any]:
    rows, error = await api_or_error(request, agents.list_tokens)
    return {"rows": rows, "error": error}


async def _agents(request: web.Request, who: Viewer) -> dict[str, Any]:
    after, prefix = after_of(request), _prefix(request)
    query = {"limit": str(PAGE)} | {k: v for k, v in (("after", after), ("prefix", prefix)) if v}
    page, error = await api_or_error(request, agents.list_agents, query=query)
    return {
        "rows": page["agents"] if page else None,
        "error": error,
        "after": after,
        "prefix": prefix,
        "next": page["next"] if page else None,
    }


async def _new_token(request: web.Request, who: Viewer) -> dict[str, Any]:
    """``POST /v1/agents/tokens`` with this request's body: the token is
    shown this once."""
    token, error = await api_or_error(request, agents.create_token)
    return {"token": token, "error": error}


async def _run(request: web.Request, who: Viewer) -> dict[str, Any]:
    """``POST /v1/agents/{name}/commands`` with this request's body."""
    queued, error = await api_or_error(request, agents.add_command)
    # Its answer is fetched at once (the fragment asks for it).
    return {"command": queued, "error": error, "agent": request.match_info["name"], "wait": WAIT}


async def _command(request: web.Request, who: Viewer) -> dict[str, Any]:
    """``GET /v1/agents/commands/{id}?wait=…``: the answer, or the state so
    far (the fragment then asks again)."""
    command, error = await api_or_error(request, agents.get_command, query={"wait": WAIT})
    done = command is not None and command["state"] in TERMINAL_COMMAND_STATES
    return {
        "command": command,
        "error": error,
        "agent": request.query.get("agent", "")[:64],
        "wait": "" if done else WAIT,
    }


def add_routes(app: web.Application) -> None:
    add_page(app, "/console/agents", "Agents", "agents.html", _page, admin=True)
    app.router.add_get("/console/agents/tokens", fragment("agents_tokens.html", _tokens))
    app.router.add_post("/console/agents/tokens", fragment("agents_token.html", _new_token))
    app.router.add_get("/console/agents/table", fragment("agents_table.html", _agents))
    app.router.add_post("/console/agents/{name}/commands", fragment("agents_command.html", _run))
    app.router.add_get("/console/agents/commands/{id}", fragment("agents_command.html", _command))
