"""Links as methods of :class:`freight.Client` (the work is in
:mod:`.links`, imported by the method that runs: a client that never
shares does not load the reference cipher)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .api import Client

DEFAULT_SHARE = 86400.0
DEFAULT_REFERENCE = 15 * 60.0


class LinkCalls:
    """``share``, ``links``, ``revoke_link``, ``fetch``, ``put_reference``."""

    async def share(
        self,
        name: str,
        to: str | None = None,
        *,
        expires: float | str = DEFAULT_SHARE,
        uses: int = 1,
    ) -> dict[str, Any]:
        """A link to your file ``name`` for ``to`` (a user name; None: for
        whoever holds the link): ``url``, ``token``, ``expires_at`` …"""
        from .links import create_link

        return await create_link(cast("Client", self), name, to=to, expires=expires, uses=uses)

    async def links(self) -> list[dict[str, Any]]:
        """Links you made and links made for you."""
        from .links import list_links

        return await list_links(cast("Client", self))

    async def revoke_link(self, token: str) -> dict[str, Any]:
        """Revoke one of your links (its URL, token or id)."""
        from .links import revoke_link

        return await revoke_link(cast("Client", self), token)

    async def fetch(
        self, link: str, out: Path | str | None = None, *, reporter: Any = None
    ) -> dict[str, Any]:
        """Fetch a link into ``out`` (a file or a folder); resumable."""
        from .links import fetch_link

        client = cast("Client", self)
        target = Path(out) if out is not None else None
        result: dict[str, Any] = await client._guard(
            fetch_link(link, target, config=client.config, reporter=reporter)
        )
        return result

    async def put_reference(
        self, paths: list[Path | str], *, expires: float = DEFAULT_REFERENCE
    ) -> dict[str, Any]:
        """Seal ``paths`` on the hub behind a single-use link (see
        :func:`freight.client.references.put_reference`)."""
        from .references import put_reference

        client = cast("Client", self)
        result: dict[str, Any] = await client._guard(
            put_reference(client, [Path(p) for p in paths], expires=expires)
        )
        return result
