"""The hub's REST calls for accounts, keys, agents, collection and the hub
itself, as methods of :class:`freight.Client` (this mixin needs only its
``request``). Answers are the hub's JSON as dicts; errors are typed
(``freight.errors``)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import NotFound, UsageError
from ..names import check_new_password, check_user_name
from ..protocol.commands import TERMINAL_COMMAND_STATES
from ..units import UNLIMITED_WORDS, parse_rate, parse_size

USERS_HINT = "run: freight users ls"
KEYS_HINT = "run: freight keys ls"
APPS_HINT = "run: freight apps ls"


class AdminCalls(ABC):
    """Accounts, keys, agents, collection, events, bandwidth, connections."""

    @abstractmethod
    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One authenticated call to the hub's REST API (``Client`` makes it)."""

    async def _call(self, method: str, path: str, body: Any = None, *, hint: str) -> Any:
        try:
            return await self.request(method, path, body)
        except NotFound as exc:
            raise NotFound(exc.message, hint=hint) from None

    # --- accounts -----------------------------------------------------------

    async def users(self, *, page: int = 1000) -> list[dict[str, Any]]:
        """Every account: name, role, disabled, created, used and quota
        (admins); fetched ``page`` at a time by name."""
        out: list[dict[str, Any]] = []
        after = ""
        while True:
            query = {"limit": str(page)} | ({"after": after} if after else {})
            body = await self._call("GET", f"/v1/users?{urlencode(query)}", hint=USERS_HINT)
            if isinstance(body, list):  # a hub from before pages: the whole list
                return body
            out += body["users"]
            if not body["next"]:
                return out
            after = body["next"]

    async def add_user(self, name: str, password: str, *, admin: bool = False) -> dict[str, Any]:
        """Add an account (admins)."""
        check_user_name(name)
        check_new_password(password)
        body = {"name": name, "password": password, "admin": admin}
        return dict(await self._call("POST", "/v1/users", body, hint=USERS_HINT))

    async def disable_user(self, name: str) -> dict[str, Any]:
        """Disable an account: its logins end at once (admins)."""
        check_user_name(name)
        return dict(await self._call("POST", f"/v1/users/{name}/disable", hint=USERS_HINT))

    async def enable_user(self, name: str) -> dict[str, Any]:
        """Enable an account again; it logs in afresh (admins)."""
        check_user_name(name)
        return dict(await self._call("POST", f"/v1/users/{name}/enable", hint=USERS_HINT))

    async def set_quota(self, name: str, quota: int | str) -> dict[str, Any]:
        """Bytes (or a size such as ``"50G"``) the account may hold; 0: no quota."""
        check_user_name(name)
        if isinstance(quota, str):
            value = 0 if quota.strip().lower() in UNLIMITED_WORDS else parse_size(quota)
        else:
            value = quota
        body = {"quota": value}
        return dict(await self._call("PUT", f"/v1/users/{name}/quota", body, hint=USERS_HINT))

    async def set_user_cap(self, name: str, cap: int | str) -> dict[str, Any]:
        """Bytes/s (or a rate such as ``"20M"``) the account's traffic may take
        through the hub, relayed or not; 0: no cap."""
        check_user_name(name)
        value = parse_rate(cap) if isinstance(cap, str) else cap
        body = {"cap": value}
        return dict(await self._call("PUT", f"/v1/users/{name}/cap", body, hint=USERS_HINT))

    async def users_in_state(self, state: str) -> list[dict[str, Any]]:
        """The accounts in ``state``: pending (registrations waiting for an
        admin), active or refused (admins)."""
        query = urlencode({"state": state})
        return list(await self._call("GET", f"/v1/users?{query}", hint=USERS_HINT))

    async def approve_user(self, name: str) -> dict[str, Any]:
        """Approve a registration that waits: the account may log in (admins)."""
        check_user_name(name)
        return dict(await self._call("POST", f"/v1/users/{name}/approve", hint=USERS_HINT))

    async def refuse_user(self, name: str) -> dict[str, Any]:
        """Refuse a registration that waits: it never logs in (admins)."""
        check_user_name(name)
        return dict(await self._call("POST", f"/v1/users/{name}/refuse", hint=USERS_HINT))

    async def reset_password(self, name: str, password: str) -> dict[str, Any]:
        """Set another account's password; every login of it ends (admins)."""
        check_user_name(name)
        check_new_password(password)
        body = {"password": password}
        return dict(await self._call("POST", f"/v1/users/{name}/password", body, hint=USERS_HINT))

    async def set_role(self, name: str, role: str) -> dict[str, Any]:
        """Make an account ``admin`` or ``user`` (admins; the last enabled
        admin keeps its role)."""
        check_user_name(name)
        body = {"role": role}
        return dict(await self._call("POST", f"/v1/users/{name}/role", body, hint=USERS_HINT))

    async def apps_list(self, state: str | None = None) -> list[dict[str, Any]]:
        """Application names and the hub's decisions on them (admins)."""
        query = f"?{urlencode({'state': state})}" if state else ""
        return list(await self._call("GET", f"/v1/apps{query}", hint=APPS_HINT))

    async def decide_app(self, name: str, approve: bool) -> dict[str, Any]:
        """Approve or refuse an application name (admins)."""
        verb = "approve" if approve else "refuse"
        path = f"/v1/apps/{quote(name, safe='')}/{verb}"
        return dict(await self._call("POST", path, hint=APPS_HINT))

    async def passwd(self, current: str, new: str) -> dict[str, Any]:
        """Change this account's password; its other logins end."""
        check_new_password(new)
        body = {"current": current, "new": new}
        return dict(await self._call("POST", "/v1/passwd", body, hint=USERS_HINT))

    # --- identity keys ------------------------------------------------------

    async def keys(self, user: str | None = None) -> dict[str, Any]:
        """The account's identity keys (``user``: another's, admins only)."""
        query = f"?user={check_user_name(user)}" if user else ""
        return dict(await self._call("GET", "/v1/keys" + query, hint=KEYS_HINT))

    async def remove_key(self, key: str, user: str | None = None) -> dict[str, Any]:
        """Remove an identity key, named whole or by 8+ hex digits; the
        logins that registered it end at once."""
        query = f"?user={check_user_name(user)}" if user else ""
        full = key.lower()
        if len(full) != 64:
            listed = await self._call("GET", "/v1/keys" + query, hint=KEYS_HINT)
            found = [k["key"] for k in listed["keys"] if k["key"].startswith(full)]
            if len(full) < 8 or len(found) != 1:
                raise UsageError(
                    f"{key!r} names {len(found)} keys; give 8 or more hex digits of one key",
                    hint=KEYS_HINT,
                )
            full = found[0]
        return dict(await self._call("DELETE", f"/v1/keys/{full}{query}", hint=KEYS_HINT))

    # --- agents (admins) ----------------------------------------------------

    async def agents(self) -> list[dict[str, Any]]:
        """Enrolled agents: online, last seen, version, address, busy, queued
        (fetched a page of 1,000 at a time)."""
        rows: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            query = urlencode({"limit": 1000, **({"after": after} if after else {})})
            page = await self.request("GET", "/v1/agents?" + query)
            if isinstance(page, list):  # a hub from before pages: the whole list
                return page
            rows += page["agents"]
            after = page["next"]
            if after is None:
                return rows

    async def agent_token(self, name: str, ttl: float = 24 * 3600.0) -> dict[str, Any]:
        """A one-time enrolment token for an agent to be called ``name``."""
        return dict(await self.request("POST", "/v1/agents/tokens", {"name": name, "ttl": ttl}))

    async def revoke_agent_tokens(self, name: str) -> int:
        """Revoke the unused enrolment tokens made for ``name``; how many."""
        return int((await self.request("DELETE", f"/v1/agents/tokens/{name}"))["revoked"])

    async def disable_agent(self, name: str) -> None:
        await self.request("POST", f"/v1/agents/{name}/disable")

    async def enable_agent(self, name: str) -> None:
        await self.request("POST", f"/v1/agents/{name}/enable")

    async def remove_agent(self, name: str) -> None:
        await self.request("DELETE", f"/v1/agents/{name}")

    async def set_agent_key(self, name: str, key: str) -> dict[str, Any]:
        """Replace an agent's login key; its logins end at once."""
        return dict(await self.request("PUT", f"/v1/agents/{name}/key", {"key": key}))

    async def set_agent_cap(self, name: str, cap: int) -> None:
        """Cap an agent's bandwidth through the hub, bytes/s (0: none)."""
        await self.request("PUT", f"/v1/agents/{name}/cap", {"cap": cap})

    async def agent_command(
        self, name: str, kind: str, args: dict[str, str] | None = None, *, wait: float = 30.0
    ) -> dict[str, Any]:
        """Queue a command for an agent; with ``wait`` > 0, its row once it
        ended (or as it stands when ``wait`` seconds are up)."""
        body = {"kind": kind, "args": args or {}}
        row = dict(await self.request("POST", f"/v1/agents/{name}/commands", body))
        if wait <= 0:
            return row
        return await self.command_result(int(row["id"]), wait=wait)

    async def command_result(self, command_id: int, *, wait: float = 30.0) -> dict[str, Any]:
        """A queued command's row, waiting up to ``wait`` s for it to end."""
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            row = dict(
                await self.request(
                    "GET", f"/v1/agents/commands/{command_id}?wait={min(left, 60):.1f}"
                )
            )
            if row["state"] in TERMINAL_COMMAND_STATES or time.monotonic() >= deadline:
                return row

    async def cancel_command(self, command_id: int) -> dict[str, Any]:
        """Cancel a queued command (not delivered again; a late answer is refused)."""
        return dict(await self.request("POST", f"/v1/agents/commands/{command_id}/cancel"))

    # --- collection (admins) ------------------------------------------------

    async def collect_policies(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/v1/collect/policies"))

    async def set_collect_policy(
        self,
        name: str,
        *,
        agents: str = "*",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        max_size: str | int = "0",
        every: float = 3600.0,
    ) -> dict[str, Any]:
        """Add or replace a collection policy (``every``: seconds between rescans)."""
        body = {
            "agents": agents,
            "include": include or [],
            "exclude": exclude or [],
            "max_size": max_size,
            "every": every,
        }
        return dict(await self.request("PUT", f"/v1/collect/policies/{name}", body))

    async def remove_collect_policy(self, name: str) -> None:
        """Remove a policy (what it collected stays)."""
        await self.request("DELETE", f"/v1/collect/policies/{name}")

    async def collected(self, policy: str | None = None) -> list[dict[str, Any]]:
        """One row per unique content, with the agents and paths holding it."""
        query = f"?policy={policy}" if policy else ""
        return list(await self.request("GET", "/v1/collected" + query))

    async def collected_stats(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/v1/collected/stats"))

    # --- the hub (admins) ---------------------------------------------------

    async def events(
        self,
        *,
        kinds: Sequence[str] = (),
        actor: str | None = None,
        agent: str | None = None,
        address: str | None = None,
        since: str | float | None = None,
        until: str | float | None = None,
        search: str | None = None,
        sort: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of the hub's event log, newest first unless ``sort``
        says (``ts``, ``kind``, ``actor``; ``-`` in front: descending):
        ``{"events": [...], "next": CURSOR or None}``. ``since``/``until``:
        epoch seconds or ISO 8601; ``search``: words that begin words of
        the kind, actor or detail."""
        params: list[tuple[str, str]] = [("limit", str(limit))]
        if kinds:
            params.append(("kind", ",".join(kinds)))
        for name, value in (
            ("actor", actor),
            ("agent", agent),
            ("address", address),
            ("since", since),
            ("until", until),
            ("q", search),
            ("sort", sort),
            ("cursor", cursor),
        ):
            if value is not None:
                params.append((name, str(value)))
        return dict(await self.request("GET", "/v1/admin/events?" + urlencode(params)))

    async def transfers(
        self, *, done: bool = False, mine: bool = False, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """Transfers in flight (yours; an admin's: everyone's unless
        ``mine``), or with ``done`` the finished ones, newest first, with
        their digest verdict: ``{"transfers": [...], "next": CURSOR|None}``."""
        params = [("state", "done" if done else "live"), ("mine", "1" if mine else "0")]
        if done:
            params.append(("limit", str(limit)))
            if cursor:
                params.append(("cursor", cursor))
        return dict(await self.request("GET", "/v1/transfers?" + urlencode(params)))

    async def my_connections(self) -> list[dict[str, Any]]:
        """Your live relayed connections (either end yours)."""
        return list(await self.request("GET", "/v1/connections"))

    async def end_connection(self, cid: str) -> dict[str, Any]:
        """End one of your relayed connections: both ends are told."""
        return dict(
            await self._call(
                "DELETE", f"/v1/connections/{quote(cid, safe='')}", hint="run: freight conns"
            )
        )

    async def overview(self) -> dict[str, Any]:
        """The hub's figures at a glance (admins): version, uptime, who is
        attached, transfers, throughput, disk, bandwidth, security events."""
        return dict(await self.request("GET", "/v1/admin/overview"))

    async def bandwidth(self) -> dict[str, Any]:
        """The hub's bandwidth budget and its rate now."""
        return dict(await self.request("GET", "/v1/bandwidth"))

    async def set_bandwidth(self, budget: str) -> dict[str, Any]:
        """Change the budget at run time: ``"100M"``, ``"off"`` or a timetable."""
        return dict(await self.request("PUT", "/v1/admin/bandwidth", {"budget": budget}))

    async def compression(self) -> dict[str, Any]:
        """The levels the hub asks of pushes: its own, per account, and its load."""
        return dict(await self.request("GET", "/v1/admin/compression"))

    async def set_compression(self, level: str, user: str = "") -> dict[str, Any]:
        """``auto``/``none``/``fast``/``max`` for the hub, or for ``user``."""
        body = {"level": level, "user": user}
        return dict(await self.request("PUT", "/v1/admin/compression", body))

    async def connections(self) -> list[dict[str, Any]]:
        """Live relayed connections."""
        return list(await self.request("GET", "/v1/admin/connections"))

    async def kill_connection(self, cid: str) -> None:
        """End a live connection; both ends are told an admin ended it."""
        await self.request("DELETE", f"/v1/admin/connections/{cid}")

    # --- a cluster's nodes ----------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes (admins): name, address, state (up,
        draining, down), seconds since its heartbeat, clients, pushes."""
        return list((await self.request("GET", "/v1/admin/nodes"))["nodes"])

    async def drain(self, node: str, *, undo: bool = False) -> None:
        """Drain ``node``: it takes no new work and its clients move to the
        other nodes; ``undo`` lets it serve again."""
        await self._call(
            "DELETE" if undo else "POST",
            f"/v1/admin/nodes/{quote(node, safe='')}/drain",
            hint="freight admin nodes lists the nodes",
        )

    async def remove_node(self, node: str) -> None:
        """Forget a node that is down (a node that is up is refused)."""
        await self._call(
            "DELETE",
            f"/v1/admin/nodes/{quote(node, safe='')}",
            hint="freight admin nodes lists the nodes",
        )
