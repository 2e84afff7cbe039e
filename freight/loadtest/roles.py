"""Which coroutine each role of the scenario sheet runs for one client."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final

from .clients import RowRun
from .roles_files import pull_client, push_client
from .roles_other import agent_client, garbage_client, message_client, request_client
from .roles_relay import (
    connect_client,
    forward_client,
    listen_client,
    receive_client,
    send_client,
)

Role = Callable[[RowRun, int], Coroutine[Any, Any, None]]

ROLES: Final[dict[str, Role]] = {
    "agent-idle": agent_client,
    "push": push_client,
    "pull": pull_client,
    "send": send_client,
    "receive": receive_client,
    "connect": connect_client,
    "listen": listen_client,
    "message": message_client,
    "request": request_client,
    "forward": forward_client,
    "garbage": garbage_client,
}
# What a listen row serves for the rows aimed at it.
SERVICE: Final = {"connect": "relay", "message": "msg", "request": "msg", "forward": "tunnel"}
