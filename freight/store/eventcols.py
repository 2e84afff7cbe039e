"""The columns of an event the log is searched by, besides its kind and
actor: the agent it concerns and the network address it came from. Both
are taken from the event's detail when it is written (and by migration
0010 for events written before), so a filter on them is an index lookup
rather than a scan of every event's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_ADDRESS", "MAX_AGENT", "event_address", "event_agent"]

MAX_AGENT = 64  # characters kept (an account name is shorter)
MAX_ADDRESS = 128

# Events whose actor is the agent itself.
_AGENT_ACTS = frozenset(
    {
        "agent_login",
        "agent_login_failure",
        "agent_attached",
        "agent_detached",
        "agent_enrolled",
        "agent_file_received",
        "collect_stored",
        "collect_rejected",
    }
)
# Events an admin made about the agent named in the detail's ``name``.
_AGENT_NAMED = frozenset(
    {"agent_removed", "agent_cap", "agent_key_set", "enrol_token_created", "enrol_token_revoked"}
)


def event_agent(kind: str, actor: str, detail: Mapping[str, Any]) -> str:
    """The agent an event concerns, or ""."""
    agent = detail.get("agent")
    if not isinstance(agent, str):
        if kind in _AGENT_NAMED:
            agent = detail.get("name")
        elif kind in _AGENT_ACTS or (kind.startswith("command_") and kind != "command_queued"):
            agent = actor
    return agent[:MAX_AGENT] if isinstance(agent, str) else ""


def event_address(detail: Mapping[str, Any]) -> str:
    """The network address an event came from, or ""."""
    address = detail.get("address")
    return address[:MAX_ADDRESS] if isinstance(address, str) and address != "?" else ""
