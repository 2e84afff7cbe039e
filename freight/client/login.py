"""Logging in to a hub: trust its certificate (a pinned fingerprint, like
SSH's ``known_hosts``, or a CA), prove the password, register this device's
identity key, and save the login for later sessions.

The decisions a person makes (trust an unseen certificate? which password?)
come in as callbacks, so that the CLI asks on a terminal and a program
answers in code.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarl import URL

from ..errors import (
    Conflict,
    FingerprintMismatch,
    NetworkError,
    NotLoggedIn,
    RemoteError,
    TLSError,
    UsageError,
)
from ..transport.proxy import choose_proxy, redact
from .config import ClientConfig
from .session import (
    CA_FILE_ENV,
    MAX_NODES,
    PROXY_ENV,
    HubSession,
    canonical_url,
    fetch_fingerprint,
    hostport,
    mismatch_error,
    parse_hub_url,
    parse_node_urls,
)

# Asked with the fingerprint of a certificate seen for the first time: pin it?
Confirm = Callable[[str], bool]
# One line for the person (what was seen, what was decided).
Notice = Callable[[str], None]


@dataclass(frozen=True)
class LoginInfo:
    """What a login established."""

    hub: str  # https://host:port/
    user: str
    role: str  # "admin" or "user"
    fingerprint: str  # the certificate the hub presented, SHA256:…
    ca_file: str | None  # the CA trusted instead of a pin
    proxy: str | None  # the proxy used, password redacted
    warnings: tuple[str, ...] = ()  # logged in all the same (e.g. the key list is full)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "hub": self.hub,
            "user": self.user,
            "role": self.role,
            "fingerprint": self.fingerprint,
            "ca_file": self.ca_file,
            "proxy": self.proxy,
        }


def normalise_fingerprint(text: str) -> str:
    """``SHA256:AB:CD…`` or ``ab cd…`` → ``SHA256:abcd…`` (as pinned)."""
    hexpart = text.strip().removeprefix("SHA256:").removeprefix("sha256:")
    hexpart = hexpart.replace(":", "").replace(" ", "").lower()
    return "SHA256:" + hexpart


def _ignore(_: str) -> None:
    return None


@dataclass(frozen=True)
class _Trusted:
    url: URL
    route: Any  # the proxy route, or None
    ca: Path | None
    seen: str  # the fingerprint the hub presented
    wanted_proxy: str | None


async def _trust(
    url: str,
    config: ClientConfig,
    fingerprint: str | None,
    trust_on_first_use: bool,
    confirm: Confirm | None,
    ca_file: Path | str | None,
    proxy: str | None,
    notice: Notice,
) -> _Trusted:
    """The hub's certificate, trusted as :func:`login` explains (nothing
    pinned yet), or an error saying why not."""
    u = parse_hub_url(url)
    wanted_proxy = proxy if proxy is not None else os.environ.get(PROXY_ENV)
    route = choose_proxy(u, explicit=wanted_proxy, saved=None)
    ca_text = str(ca_file) if ca_file is not None else os.environ.get(CA_FILE_ENV)
    ca = Path(ca_text).expanduser().resolve() if ca_text else None

    # With a CA the handshake itself verifies the chain and host name.
    seen = await fetch_fingerprint(u, proxy=route, ca_file=ca)
    pinned = config.pinned(hostport(u))
    wanted = normalise_fingerprint(fingerprint) if fingerprint else None
    if wanted and wanted != seen:
        raise FingerprintMismatch(
            f"the hub presents {seen}, not the expected {wanted}",
            hint="check the address and the fingerprint the hub printed at start-up",
        )
    if ca is not None:
        notice(f"The hub's certificate is signed by a CA in {ca}")
    elif pinned and pinned != seen and not wanted:
        raise mismatch_error(u, pinned, seen)
    elif not pinned and not wanted:
        notice(f"The hub's certificate fingerprint is {seen}")
        if trust_on_first_use:
            notice("Pinning it (trust on first use).")
        elif confirm is not None:
            if not confirm(seen):
                raise UsageError("not trusted; nothing saved")
        else:
            raise UsageError(
                "this hub's certificate is not pinned yet and there is no terminal to "
                "confirm it on; nothing saved",
                hint="compare it with the fingerprint the hub printed at start-up and give "
                f"--fingerprint {seen}, or --trust-on-first-use to pin it unchecked",
            )
    return _Trusted(u, route, ca, seen, wanted_proxy)


async def login(
    url: str,
    user: str,
    password: str | Callable[[], str],
    *,
    config: ClientConfig | None = None,
    fingerprint: str | None = None,
    trust_on_first_use: bool = False,
    confirm: Confirm | None = None,
    ca_file: Path | str | None = None,
    proxy: str | None = None,
    notice: Notice = _ignore,
) -> LoginInfo:
    """Log in to the hub at ``url`` as ``user`` and save the login.

    Trust: with ``ca_file`` the certificate's chain and host name are
    checked against that CA; otherwise the certificate is pinned. A pin
    that differs is refused. A certificate seen for the first time is
    pinned when it matches ``fingerprint``, or with ``trust_on_first_use``,
    or when ``confirm(fingerprint)`` says yes; without any of them (a
    script) nothing is saved. ``password`` may be a callable, asked only
    once the certificate is trusted. ``proxy`` (or ``$FREIGHT_PROXY``) and
    ``ca_file`` (or ``$FREIGHT_CA_FILE``) are saved with the login.
    """
    config = config or ClientConfig()
    given = parse_node_urls(url)
    t = await _trust(
        canonical_url(given[0]),
        config,
        fingerprint,
        trust_on_first_use,
        confirm,
        ca_file,
        proxy,
        notice,
    )
    u, route, ca, seen, wanted_proxy = t.url, t.route, t.ca, t.seen, t.wanted_proxy
    await _same_certificate(given[1:], t, notice)
    secret = password() if callable(password) else password
    pin = seen if ca is None else ""  # a CA replaces pinning
    warnings: list[str] = []
    nodes = [canonical_url(n) for n in given]
    async with HubSession(
        canonical_url(u), nodes=nodes, fingerprint=pin, ca_file=ca, proxy=route
    ) as session:
        body = await session.request("POST", "/v1/login", {"user": user, "password": secret})
        # This device's identity key, which connect/listen prove themselves with.
        session.token = body["token"]
        await session.aclose()
        from .relay import register_identity  # the relay's ciphers, only here

        try:
            await register_identity(session, config)
        except Conflict as exc:  # logged in all the same: keys rm works from here
            warnings.append(exc.user_message())
        nodes = await cluster_nodes(session, nodes, t)
    if ca is None:
        for node in nodes:  # one certificate for every node of a cluster
            config.pin(hostport(parse_hub_url(node)), seen)
    config.save_login(
        canonical_url(u),
        user,
        body["token"],
        body["role"],
        proxy=wanted_proxy.strip() if wanted_proxy is not None else None,
        ca_file=str(ca) if ca is not None else None,
        nodes=nodes if len(nodes) > 1 else None,
    )
    return LoginInfo(
        hub=canonical_url(u),
        user=user,
        role=str(body["role"]),
        fingerprint=seen,
        ca_file=str(ca) if ca is not None else None,
        proxy=redact(route) if route is not None else None,
        warnings=tuple(warnings),
    )


async def _same_certificate(others: list[URL], t: _Trusted, notice: Notice) -> None:
    """The other nodes given present the certificate the first one did (or,
    with a CA, one it vouches for); one that cannot be reached now is kept."""
    for u in others:
        try:
            seen = await fetch_fingerprint(u, proxy=t.route, ca_file=t.ca)
        except NetworkError as exc:
            notice(f"{hostport(u)}: not reachable now ({exc.message}); kept in the list")
            continue
        if t.ca is None and seen != t.seen:
            raise FingerprintMismatch(
                f"the node at {hostport(u)} presents {seen}, not {t.seen} as the first one does",
                hint="every node of a cluster serves the same certificate (--cert/--key); "
                "check the addresses",
            )


async def cluster_nodes(session: HubSession, given: list[str], t: _Trusted) -> list[str]:
    """The node addresses to keep: those given, then, when the hub is a
    cluster (it lists more than one node up), those it lists that present
    the certificate trusted here. A hub alone adds nothing: its own address
    may not be the one this client reaches it at (a port forward, a proxy)."""
    try:
        listed = (await session.request("GET", "/v1/nodes")).get("nodes", [])
    except (RemoteError, NetworkError, AttributeError):
        return given
    if not isinstance(listed, list):
        return given
    up = [n for n in listed if isinstance(n, dict) and n.get("state") == "up"]
    if len(up) < 2:
        return given
    known = {parse_hub_url(n) for n in given}
    candidates: list[URL] = []
    for node in up[:MAX_NODES]:
        try:
            u = parse_hub_url(str(node.get("url", "")))
        except UsageError:
            continue  # not an address a client can use: left out
        if u not in known:
            known.add(u)
            candidates.append(u)

    async def same(u: URL) -> bool:
        try:
            seen = await fetch_fingerprint(u, timeout=3.0, proxy=t.route, ca_file=t.ca)
        except (NetworkError, TLSError):
            return False
        return t.ca is not None or seen == t.seen

    checks = await asyncio.gather(*(same(u) for u in candidates))
    out = given + [canonical_url(u) for u, ok in zip(candidates, checks, strict=True) if ok]
    return out[:MAX_NODES]


async def logout(config: ClientConfig | None = None, url: str | None = None) -> tuple[str, bool]:
    """End the login to ``url`` (or the last hub): the hub revokes it, then
    it is forgotten here. Returns (hub, whether the hub had it still). If the
    hub cannot be reached nothing is forgotten (the error says so)."""
    config = config or ClientConfig()
    hub, _ = config.current(url)
    async with HubSession.from_config(config, hub) as session:
        try:
            await session.request("POST", "/v1/logout")
            revoked = True
        except NotLoggedIn:  # expired or revoked already: nothing left to revoke
            revoked = False
    config.forget_login(hub)
    return hub, revoked


async def register(
    url: str,
    user: str,
    password: str | Callable[[], str],
    *,
    config: ClientConfig | None = None,
    fingerprint: str | None = None,
    trust_on_first_use: bool = False,
    confirm: Confirm | None = None,
    ca_file: Path | str | None = None,
    proxy: str | None = None,
    notice: Notice = _ignore,
) -> dict[str, Any]:
    """Register account ``user`` on the hub at ``url`` (``POST
    /v1/register``; the hub must allow it). The certificate is trusted and
    pinned as :func:`login` does it; nothing else is saved (log in once the
    account is active). The hub's answer: ``user``, ``role``, ``state``
    (``active``, or ``pending`` until an admin approves it) and ``hub``."""
    config = config or ClientConfig()
    t = await _trust(url, config, fingerprint, trust_on_first_use, confirm, ca_file, proxy, notice)
    secret = password() if callable(password) else password
    pin = t.seen if t.ca is None else ""
    async with HubSession(
        canonical_url(t.url), fingerprint=pin, ca_file=t.ca, proxy=t.route
    ) as session:
        body = await session.request("POST", "/v1/register", {"user": user, "password": secret})
    if t.ca is None:
        config.pin(hostport(t.url), t.seen)
    return {**body, "hub": canonical_url(t.url), "fingerprint": t.seen}
