"""``freight.Client``: everything the ``freight`` command does, for programs.

    import freight

    async with freight.Client() as hub:            # the hub logged in to last
        await hub.push("report.pdf", "photos/")
        for f in await hub.ls():
            print(f["name"], f["size"])
        await hub.pull("photos/", "restore/")

Log in once (this saves the login and pins the hub's certificate, as
``freight login`` does; both share ``$FREIGHT_CONFIG_DIR``)::

    hub = await freight.Client.login("https://hub:8443", "alice", password,
                                     fingerprint="SHA256:9c1e…")

Every method raises :mod:`freight.errors` types only (``from_exception``
translates the libraries' own). Transfers resume: call the same method
again after an interruption. Progress goes to a ``reporter`` (see
``freight.client.options.Reporter``); none by default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..errors import FreightError, UsageError, from_exception
from ..protocol.messages import LEVELS
from ..units import Limit, parse_limit
from .admin import AdminCalls
from .config import ClientConfig
from .linkcalls import LinkCalls
from .login import Confirm, LoginInfo, Notice, login, logout
from .options import (
    QuietReporter,
    Reporter,
    TransferOptions,
    TransferResult,
    retry_policy_from_env,
    stall_timeout_from_env,
)
from .session import (
    DATA_PATHS,
    HubSession,
    canonical_url,
    check_transport,
    parse_node_urls,
)

# The relay, agents, transfers and their ciphers are imported by the method
# that uses them: ``ls`` or an admin call does not load them.
if TYPE_CHECKING:
    from .codes import Offered
    from .listener import Listener
    from .probe import ProbeResult
    from .receiving import Consent
    from .relay import Connection, RelayClient
    from .sendrecv import Summary

__all__ = [
    "Client",
    "Connection",
    "Listener",
    "LoginInfo",
    "Offered",
    "Pulled",
    "Summary",
    "TransferResult",
]


def __getattr__(name: str) -> Any:
    # The public names that live in the modules loaded on first use (PEP 562).
    if name == "Connection":
        from .connection import Connection

        return Connection
    if name == "Listener":
        from .listener import Listener

        return Listener
    if name == "Offered":
        from .codes import Offered

        return Offered
    if name == "Summary":
        from .sendrecv import Summary

        return Summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Pulled:
    """What a pull brought: ``folder`` if the name was a folder on the hub,
    ``root`` the local file or the folder that received the copy."""

    folder: bool
    root: Path
    files: list[TransferResult]


async def _accept(paths: list[str]) -> None:
    """Consent to replacing files (``overwrite=True``)."""


def _quiet(reporter: Any) -> Any:
    return QuietReporter() if reporter is None else reporter


class Client(AdminCalls, LinkCalls):
    """An account on one hub, as logged in to by :meth:`login` (or ``freight
    login``). Cheap to make; the connection opens on first use and
    :meth:`aclose` (or ``async with``) closes it.

    ``hub`` is the hub's URL (default: the last one logged in to);
    ``config_dir`` where logins, pins and transfer state live (default
    ``$FREIGHT_CONFIG_DIR`` or ``~/.config/freight``); ``transport`` how to
    attach (``auto``: WebSocket, falling back to plain HTTP; ``ws``;
    ``http``); ``data_path`` how bulk data goes (``auto``, ``direct``, ``tls``);
    ``proxy`` and ``ca_file`` override what was saved at login.
    """

    def __init__(
        self,
        hub: str | None = None,
        *,
        config_dir: Path | str | None = None,
        transport: str = "auto",
        data_path: str = "auto",
        proxy: str | None = None,
        ca_file: Path | str | None = None,
    ) -> None:
        check_transport(transport)
        if data_path not in DATA_PATHS:
            raise UsageError(f"data_path must be one of {', '.join(DATA_PATHS)}")
        self.config = ClientConfig(Path(config_dir).expanduser() if config_dir else None)
        # As logins are saved: https://host:port/ with the port written.
        # A cluster's nodes (comma-separated): its first one names the login.
        self.hub = canonical_url(parse_node_urls(hub)[0]) if hub else None
        self.transport = transport
        self.data_path = data_path
        self.proxy = proxy
        self.ca_file = str(ca_file) if ca_file is not None else None
        self._session: HubSession | None = None

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "idle"
        return f"<freight.Client hub={self.hub or '(last)'} transport={self.transport} {state}>"

    # --- lifecycle ----------------------------------------------------------

    @classmethod
    async def login(
        cls,
        url: str,
        user: str,
        password: str | Callable[[], str],
        *,
        fingerprint: str | None = None,
        trust_on_first_use: bool = False,
        confirm: Confirm | None = None,
        ca_file: Path | str | None = None,
        proxy: str | None = None,
        config_dir: Path | str | None = None,
        notice: Notice | None = None,
        transport: str = "auto",
    ) -> Client:
        """Log in (see :func:`freight.client.login.login` for how the hub's
        certificate is trusted) and return a client for that hub."""
        client = cls(url, config_dir=config_dir, transport=transport)
        info = await client._guard(
            login(
                url,
                user,
                password,
                config=client.config,
                fingerprint=fingerprint,
                trust_on_first_use=trust_on_first_use,
                confirm=confirm,
                ca_file=ca_file,
                proxy=proxy,
                notice=notice or (lambda _: None),
            )
        )
        client.hub = info.hub
        client.last_login = info
        return client

    last_login: LoginInfo | None = None

    async def logout(self) -> bool:
        """End this login: revoked at the hub, forgotten here. False if the
        hub no longer had it (expired or revoked already)."""
        await self.aclose()
        hub, revoked = await self._guard(logout(self.config, self.hub))
        self.hub = str(hub)
        return bool(revoked)

    def _new_session(self, transport: str | None = None) -> HubSession:
        return HubSession.from_config(
            self.config,
            self.hub,
            proxy=self.proxy,
            ca_file=self.ca_file,
            transport=transport or self.transport,
        )

    @property
    def session(self) -> HubSession:
        """The session REST calls and transfers share (made on first use)."""
        if self._session is None:
            self._session = self._new_session()
        return self._session

    def _relay(self) -> RelayClient:
        from .relay import RelayClient

        # A relay client owns (and closes) its own session.
        return RelayClient(
            self._new_session(),
            self.config,
            transport=self.transport,
            data_path=self.data_path,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _guard(self, work: Any) -> Any:
        """Await ``work``; a library's exception comes out as a FreightError."""
        try:
            return await work
        except FreightError:
            raise
        except Exception as exc:
            mapped = from_exception(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def probe(self, *, direction: str = "both", seconds: float | None = None) -> ProbeResult:
        """Measure the path to the hub: round-trip time, and capacity and
        available bandwidth ``up``, ``down`` or ``both`` (see
        :func:`freight.client.probe.probe`)."""
        from .probe import probe

        return await self._guard(  # type: ignore[no-any-return]
            probe(self.session, direction=direction, seconds=seconds, data_path=self.data_path)  # type: ignore[arg-type]
        )

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call to the hub (``/v1/...``); its JSON answer."""
        return await self._guard(self.session.request(method, path, body))

    # --- files on the hub ---------------------------------------------------

    def options(
        self,
        *,
        limit: int | str = 0,
        compress: str = "none",
        parallel: int = 1,
        priority: str = "normal",
    ) -> TransferOptions:
        """Transfer options: ``limit`` bytes/s (or ``"20M"``, or ``"50%"`` of
        the path's measured available bandwidth; 0: none), ``compress``
        none/fast/max, files moved at once, ``priority`` normal or
        background (push: yields to other traffic); retries and stall
        timeout as ``$FREIGHT_RETRY_*`` / ``$FREIGHT_STALL_TIMEOUT`` say."""
        if compress not in LEVELS:
            raise UsageError(f"compress must be one of {', '.join(LEVELS)}")
        if priority not in ("normal", "background"):
            raise UsageError("priority must be normal or background")
        wanted = parse_limit(limit) if isinstance(limit, str) else Limit(rate=limit or None)
        return TransferOptions(
            limit=wanted.rate or 0,
            percent=wanted.percent,
            priority=priority,
            compress=compress,
            data_path=self.data_path,
            parallel=max(1, parallel),
            stall_timeout=stall_timeout_from_env(),
            retry=retry_policy_from_env(),
        )

    async def push(
        self,
        *paths: Path | str,
        as_name: str | None = None,
        options: TransferOptions | None = None,
        reporter: Reporter | None = None,
    ) -> list[TransferResult]:
        """Upload files and folders (recursively, each file named by its path
        under the folder's name). ``as_name`` names a single path on the hub."""
        from .transfer import expand_sources, push_many

        items = expand_sources([Path(p) for p in paths], as_name)
        opts = options or self.options()
        return list(
            await self._guard(push_many(self.session, self.config, items, opts, _quiet(reporter)))
        )

    async def pull(
        self,
        name: str,
        dest: Path | str | None = None,
        *,
        options: TransferOptions | None = None,
        reporter: Reporter | None = None,
        notices: Reporter | None = None,
        on_plan: Callable[[int, int], object] | None = None,
    ) -> Pulled:
        """Download a file, or a folder (``NAME/`` or a name with files
        under it) placed as ``cp -r`` places it; files already in place are
        not fetched again. ``on_plan(bytes, files)`` is told the totals
        before the first byte moves; ``notices`` hears about the plan."""
        from .pulltree import plan_pull, pull_many

        opts = options or self.options()

        async def go() -> Pulled:
            target = Path(dest) if dest is not None else None
            plan = await plan_pull(self.session, self.config, name, target, opts, _quiet(notices))
            if on_plan is not None:
                on_plan(sum(i.size for i in plan.items), len(plan.items))
            files = await pull_many(self.session, self.config, plan, opts, _quiet(reporter))
            return Pulled(plan.folder, plan.root, list(files))

        result: Pulled = await self._guard(go())
        return result

    async def ls(self, target: str | None = None) -> list[dict[str, Any]]:
        """Your files on the hub (name, size, digest, created), or with
        ``AGENT:/path`` the entries of a folder on an agent."""
        if target is None:
            return list(await self.request("GET", "/v1/files"))
        from .remote import list_remote, split_remote

        remote = split_remote(target)
        if remote is None:
            raise UsageError(f"{target!r} is not AGENT:/path")
        entries = await self._guard(list_remote(self._relay, *remote))
        return [msgspec.to_builtins(e) for e in entries]

    async def rm(self, *names: str) -> None:
        """Delete files from the hub."""
        for name in names:
            await self.request("DELETE", f"/v1/files/{name}")

    # --- end-to-end encrypted transfers and pipes ---------------------------

    async def send(
        self,
        *paths: Path | str,
        code: str | None = None,
        ttl: float = 3600.0,
        on_code: Callable[[Offered], object] | None = None,
        reporter: Reporter | None = None,
        limit: Limit | int | str = 0,
        compress: str = "",
    ) -> Summary:
        """Send files and folders to whoever has the code. ``on_code`` is
        told the code as soon as the hub grants it; the call returns once a
        receiver has everything. ``code`` resumes an earlier send.
        ``limit``: bytes/s, ``"20M"`` or a :class:`~freight.units.Limit`
        (0: none); ``compress``: the level you would like (none/fast/max;
        the receiver chooses, "" leaves it to it)."""
        from .codes import send_with_code
        from .sendrecv import build_manifest, shaping_for

        entries = build_manifest([Path(p) for p in paths])

        async def go() -> Summary:
            shaping = await shaping_for(limit, compress, self.session)
            async with self._relay() as relay:
                await relay.start(identity=False)
                return await send_with_code(
                    relay,
                    entries,
                    _quiet(reporter),
                    code=code,
                    ttl=ttl,
                    on_code=on_code,
                    shaping=shaping,
                )

        summary: Summary = await self._guard(go())
        return summary

    async def receive(
        self,
        code: str,
        dest: Path | str = ".",
        *,
        overwrite: bool = False,
        consent: Consent | None = None,
        reporter: Reporter | None = None,
        limit: Limit | int | str = 0,
        compress: str = "",
    ) -> Summary:
        """Receive what the sender of ``code`` offers into the folder
        ``dest``. A file already there (not this transfer's own) is replaced
        only with ``overwrite``, or when ``consent(paths)`` returns (it
        raises to refuse). ``limit`` caps the rate (the sender is told);
        ``compress`` chooses the level ("": the sender's wish)."""
        from .codes import receive_with_code
        from .receiving import Destination, refuse_to_replace
        from .sendrecv import shaping_for

        decide = _accept if overwrite else consent or refuse_to_replace

        async def go() -> Summary:
            shaping = await shaping_for(limit, compress, self.session, "down")
            async with self._relay() as relay:
                await relay.start(identity=False)
                return await receive_with_code(
                    relay,
                    code,
                    Destination.folder(Path(dest)),
                    _quiet(reporter),
                    consent=decide,
                    shaping=shaping,
                )

        summary: Summary = await self._guard(go())
        return summary

    @asynccontextmanager
    async def connect(
        self, peer: str, app: str, *, timeout: float | None = None
    ) -> AsyncIterator[Connection]:
        """An end-to-end encrypted message pipe to ``peer``'s ``app``
        (``send(bytes)``, ``recv()``, ``async for``); closed after what was
        sent is acknowledged when the block ends."""
        async with self._relay() as relay:
            await self._guard(relay.start())
            conn = await self._guard(relay.connect(peer, app, timeout=timeout))
            async with conn:
                yield conn

    @asynccontextmanager
    async def listen(self, app: str, *, peer: str = "*") -> AsyncIterator[Listener]:
        """Accept connections for ``app`` (from ``peer`` only, unless ``*``):
        ``async for conn in listener``."""
        async with self._relay() as relay:
            await self._guard(relay.start())
            listener = await self._guard(relay.listen(app, peer))
            try:
                yield listener
            finally:
                await listener.aclose()

    # --- files on agents ----------------------------------------------------

    async def cp(
        self,
        *sources: str | Path,
        dest: str | Path,
        recursive: bool = False,
        overwrite: bool = False,
        consent: Consent | None = None,
        reporter: Reporter | None = None,
        limit: Limit | int | str = 0,
        compress: str = "",
    ) -> Summary:
        """Copy to or from an agent as ``cp``/``scp`` do; one side is
        ``AGENT:/path``. Uploads take several sources; a download one.
        ``limit`` caps the rate; ``compress`` is the level asked for (of a
        download: chosen; of an upload: wished, the agent chooses)."""
        from .receiving import refuse_to_replace
        from .remote import cp_plan, download, upload
        from .sendrecv import shaping_for

        direction, (remote, local) = cp_plan([str(s) for s in sources], str(dest), recursive)
        rep = _quiet(reporter)
        way: Literal["up", "down"] = "up" if direction == "up" else "down"
        shaping = await self._guard(shaping_for(limit, compress, self.session, way))
        if direction == "up":
            work = upload(self._relay, remote, local, rep, overwrite=overwrite, shaping=shaping)
        else:
            decide = _accept if overwrite else consent or refuse_to_replace
            work = download(
                self._relay,
                remote,
                local,
                rep,
                recursive=recursive,
                consent=decide,
                shaping=shaping,
            )
        summary: Summary = await self._guard(work)
        return summary

    # --- collection -----------------------------------------------------------

    async def get_collected(self, what: str, out: Path | str) -> tuple[str, int, Path]:
        """Fetch collected content from the hub (a digest or ``AGENT:/path``
        as offered) into ``out``; (digest, size, file written)."""
        from .collected import fetch_collected  # here: it brings the partial-file engine

        result: tuple[str, int, Path] = await self._guard(
            fetch_collected(self.session, what, Path(out))
        )
        return result
