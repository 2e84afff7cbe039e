"""The rows the hub's database hands out: frozen, typed, one class per
table (or per join), built from the query's columns by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ..protocol.commands import CommandState, ContentState

R = TypeVar("R")


def row_of(cls: type[R], mapping: Mapping[Any, Any]) -> R:
    """A ``cls`` from a result row's mapping (columns named as its fields)."""
    return cls(**mapping)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    name: str
    pw_hash: str
    role: str
    disabled: bool
    created: float
    quota: int  # bytes; 0: no quota
    # active, pending (a registration waiting for an admin) or refused
    state: str = field(default="active", kw_only=True)


@dataclass(frozen=True, slots=True)
class AppRow:
    """An application name and an admin's decision on it."""

    name: str
    state: str  # pending, approved or refused
    requested_by: str
    requested: float
    decided_by: str
    decided: float


@dataclass(frozen=True, slots=True)
class LoginRow(UserRow):
    """The account a live login stands for."""

    token_expires: float
    token_key: str  # the identity key bound to the login, or ""


@dataclass(frozen=True, slots=True)
class KeyRow:
    key: str
    created: float


@dataclass(frozen=True, slots=True)
class StreamRow:
    user_id: int
    sid: str
    name: str
    size: int
    mtime: float
    checkpoint: int
    state: str
    created: float
    updated: float
    owner: str = ""  # the node receiving it
    lease: float = 0.0  # until when that node holds it


@dataclass(frozen=True, slots=True)
class FileRow:
    user_id: int
    name: str
    size: int
    digest: str
    mtime: float
    created: float
    sid: str


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    ts: float
    kind: str
    actor: str
    detail: dict[str, Any]
    agent: str = ""  # the agent it concerns (from the detail)
    address: str = ""  # the address it came from (from the detail)

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class CodeRow:
    nameplate: str
    user_id: int
    created: float
    expires: float
    failures: int
    claim_cid: str | None  # the claim that linked last
    claimant_id: int | None
    finished: int = 0  # 1: a transfer under it finished (not counted as open)


@dataclass(frozen=True, slots=True)
class EnrolTokenRow:
    token_hash: str
    name: str
    created: float
    expires: float
    used: bool
    revoked: bool


@dataclass(frozen=True, slots=True)
class AgentRow:
    id: int
    name: str
    disabled: bool
    user_id: int
    enrolled: float
    last_seen: float
    version: str
    address: str
    cap: int  # bytes/s, 0 = no cap
    node: str = ""  # the cluster node it is attached to ("": none)


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: int
    agent_id: int
    kind: str
    args: str  # JSON
    state: CommandState
    result: str  # JSON
    requested_by: str
    created: float
    updated: float
    deliveries: int  # times handed to the agent

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", CommandState(self.state))


@dataclass(frozen=True, slots=True)
class PolicyRow:
    name: str
    agents: str  # glob on agent names
    include: str  # JSON list of globs
    exclude: str
    max_size: int
    every: float
    created: float

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class CatalogueRow:
    agent_id: int
    path: str
    policy: str
    digest: str
    size: int
    mtime: float
    seen: float


@dataclass(frozen=True, slots=True)
class CollectedRow(CatalogueRow):
    agent: str  # the agent's name
    state: ContentState

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", ContentState(self.state))


@dataclass(frozen=True, slots=True)
class ContentRow:
    digest: str
    size: int
    state: ContentState
    source: int  # agent asked to upload it
    command_id: int
    issued: float
    attempts: int
    received: int  # bytes that crossed
    created: float
    updated: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", ContentState(self.state))


@dataclass(frozen=True, slots=True)
class LinkRow:
    token_hash: str
    user_id: int
    name: str
    size: int
    digest: str
    to_id: int | None  # the one account that may use it, or None
    uses: int  # whole deliveries allowed
    used: int  # whole deliveries made
    served: int  # bytes sent, ranges included
    created: float
    expires: float


@dataclass(frozen=True, slots=True)
class LinkView(LinkRow):
    """A link with its owner's and recipient's names."""

    owner: str
    to_name: str | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    url: str
    host: str
    pid: int
    incarnation: str
    started: float
    seen: float
    clients: int
    transfers: int
    draining: int
    watched: int = 0
