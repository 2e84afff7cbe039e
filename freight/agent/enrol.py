"""Enrolling this machine as an agent: trust the hub's certificate, present
the one-time token with this machine's identity key, and save ``agent.json``
(``freight agent enroll`` asks the questions; this does the work)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..client.config import ClientConfig
from ..client.login import Confirm, normalise_fingerprint
from ..client.relay import identity_key
from ..client.session import HubSession, canonical_url, fetch_fingerprint, parse_node_urls
from ..errors import FingerprintMismatch, RateLimited, UsageError
from ..protocol.e2e import public_of
from ..protocol.tunnel import AllowList
from ..transport.proxy import parse_proxy_url
from .config import AgentConfig


def _ignore(_: str) -> None:
    return None


# A fleet enrolling at once from behind one address: the hub checks a few
# enrolments from an address at a time and tells the rest to try again in a
# second. Waited for up to this long; a lockout (failed tokens) is not.
TURN_WAIT = 60.0


async def _when_its_turn(call: Callable[[], Awaitable[Any]]) -> Any:
    deadline = time.monotonic() + TURN_WAIT
    while True:
        try:
            return await call()
        except RateLimited as exc:
            short = 0 < exc.retry_after <= 2.0
            if not short or time.monotonic() + exc.retry_after > deadline:
                raise
            await asyncio.sleep(exc.retry_after * random.uniform(1.0, 1.5))


async def enrol(
    url: str,
    token: str,
    roots: list[Path],
    *,
    config: ClientConfig | None = None,
    fingerprint: str | None = None,
    ca_file: Path | None = None,
    proxy: str | None = None,
    trust_on_first_use: bool = False,
    confirm: Confirm | None = None,
    notice: Callable[[str], None] = _ignore,
    allow_overwrite: bool = False,
    allow_forward: list[str] | None = None,
) -> AgentConfig:
    """Enrol with ``token`` to serve ``roots``; the saved configuration.

    Trust as for a login: a CA (``ca_file``), or the certificate pinned when
    it matches ``fingerprint``, with ``trust_on_first_use``, or when
    ``confirm(fingerprint)`` says yes. Behind a TLS-inspecting proxy give
    both ``ca_file`` and the hub's own ``fingerprint``, which logins name.
    """
    for r in roots:
        if not r.is_dir():
            raise UsageError(f"--root {r}: not a folder")
    try:
        forwards = AllowList(allow_forward or []).entries()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = config or ClientConfig()
    given = parse_node_urls(url)  # a cluster's nodes, comma-separated
    u = given[0]
    wanted = normalise_fingerprint(fingerprint) if fingerprint else None
    seen = ""
    if ca_file is None:
        seen = await fetch_fingerprint(u, proxy=parse_proxy_url(proxy) if proxy else None)
        if wanted and wanted != seen:
            raise FingerprintMismatch(f"the hub presents {seen}, not the expected {wanted}")
        if not wanted and not trust_on_first_use:
            notice(f"The hub's certificate fingerprint is {seen}")
            if confirm is None:
                raise UsageError(
                    "not enrolled: no terminal to confirm the certificate on",
                    hint=f"give --fingerprint {seen} after checking it, or --trust-on-first-use",
                )
            if not confirm(seen):
                raise UsageError("not enrolled: the certificate was not trusted")
    key = identity_key(config)
    nodes = [canonical_url(n) for n in given]
    async with HubSession(
        canonical_url(u), nodes=nodes, fingerprint=seen, proxy=proxy, ca_file=ca_file
    ) as session:
        body = await _when_its_turn(
            lambda: session.request(
                "POST", "/v1/agents/enroll", {"token": token, "key": public_of(key).hex()}
            )
        )
    if ca_file is not None and wanted:
        # Behind a TLS-inspecting proxy the agent never sees the hub's
        # certificate, so its logins name the one given here (which the
        # hub's answer, through the trusted proxy, confirms).
        if body.get("fingerprint") != wanted:
            raise FingerprintMismatch(
                f"the hub's certificate is {body.get('fingerprint')}, not the expected "
                f"{wanted}; this agent is enrolled but not saved: remove it with "
                "freight agents rm and enrol again",
            )
        seen = wanted
    cfg = AgentConfig(
        hub=canonical_url(u),
        name=body["name"],
        fingerprint=seen,
        ca_file=str(ca_file.resolve()) if ca_file else "",
        proxy=proxy or "",
        roots=[str(r.resolve()) for r in roots],
        allow_overwrite=allow_overwrite,
        allow_forward=forwards,
        nodes=nodes if len(nodes) > 1 else [],
    )
    cfg.save(config)
    return cfg
