"""Where messages go: routes asked of the hub (MsgResolve), cached for a
second per (destination, app, type), and the hosts they name, each key
checked against its signature (:func:`verify_host_key`) and kept with the
pair keys for sealing to and opening from that host."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, RemoteError
from ..logs import fields
from ..protocol import messages as m
from ..protocol.msgkeys import BadHostKey, verify_host_key
from ..protocol.msgseal import pair_keys
from ..protocol.msgtables import TRANSIENT
from .relay import RelayClient

log = logging.getLogger("freight.msg")

MAX_ROUTES: Final = 4096
MAX_PEERS: Final = 100_000
ROUTE_TTL: Final = 1.0

Key = tuple[str, str, int]


@dataclass(slots=True)
class Peer:
    """Another host (or this one): its account and the two direction keys."""

    hid: str
    account: str
    send_key: AESGCM
    recv_key: AESGCM


class Routes:
    """The route cache and the hosts met so far (both bounded)."""

    def __init__(
        self,
        relay: RelayClient,
        key: X25519PrivateKey,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay, self._key, self._clock = relay, key, clock
        self._routes: dict[Key, tuple[float, list[Peer], str]] = {}
        self._resolving: dict[Key, asyncio.Future[tuple[list[Peer], str]]] = {}
        self.peers: dict[str, Peer] = {}

    def forget(self, key: Key) -> None:
        self._routes.pop(key, None)

    def clear(self) -> None:
        self._routes.clear()

    def cached(self, dest: str, app: str, type_: int) -> tuple[list[Peer], str] | None:
        """The route kept for (dest, app, type), if it is fresh."""
        hit = self._routes.get((dest, app, type_))
        if hit is not None and self._clock() - hit[0] < ROUTE_TTL:
            return hit[1], hit[2]
        return None

    async def resolve(self, dest: str, app: str, type_: int) -> tuple[list[Peer], str]:
        """(hosts, reason): the hosts that take it, or none and why. One
        question at a time per key; answers kept for :data:`ROUTE_TTL`
        (transient ones are not kept)."""
        key = (dest, app, type_)
        now = self._clock()
        hit = self._routes.get(key)
        if hit is not None and now - hit[0] < ROUTE_TTL:
            return hit[1], hit[2]
        fut = self._resolving.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._resolving[key] = fut
        try:
            reply = await self._ask(dest, app, type_)
            peers = [p for info in reply.hosts if (p := self.peer(info)) is not None]
            reason = reply.reason or ("" if peers else "no_host")
            if reason not in TRANSIENT:
                self._keep(key, (now, peers, reason))
            fut.set_result((peers, reason))
            return peers, reason
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._resolving[key]

    async def _ask(self, dest: str, app: str, type_: int) -> m.MsgRoute:
        rid = secrets.token_hex(6)
        reply = await self.relay.request(m.MsgResolve(rid=rid, dest=dest, app=app, type=type_), rid)
        if not isinstance(reply, m.MsgRoute):
            raise RemoteError(f"the hub answered a resolve with {type(reply).__name__}")
        return reply

    def _keep(self, key: Key, value: tuple[float, list[Peer], str]) -> None:
        if len(self._routes) >= MAX_ROUTES:
            now = value[0]
            self._routes = {k: v for k, v in self._routes.items() if now - v[0] < ROUTE_TTL}
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
        self._routes[key] = value

    async def find(self, hid: str) -> Peer | None:
        """Host ``hid`` (a sender whose key this host has not met yet)."""
        known = self.peers.get(hid)
        if known is not None:
            return known
        reply = await self._ask(f"host:{hid}", "", 0)
        for info in reply.hosts:
            if info.hid == hid:
                return self.peer(info)
        return None

    def peer(self, info: m.MsgHostInfo) -> Peer | None:
        """A host of a route, its key checked (None if it does not check out)."""
        known = self.peers.get(info.hid)
        if known is not None and known.account == info.account:
            return known
        try:
            key = bytes.fromhex(info.key)
            identity, sig = bytes.fromhex(info.identity), bytes.fromhex(info.sig)
            if verify_host_key(identity, key, sig) != info.hid:
                raise BadHostKey("the host id does not match its key")
            send_key, recv_key = pair_keys(self._key, key)
        except (BadHostKey, IntegrityError) as exc:
            log.warning("a host key does not check out", extra=fields(hid=info.hid, error=str(exc)))
            return None
        if len(self.peers) >= MAX_PEERS:
            self.peers.pop(next(iter(self.peers)))
        peer = self.peers[info.hid] = Peer(
            info.hid, info.account, AESGCM(send_key), AESGCM(recv_key)
        )
        return peer
