"""A cluster's session: its node addresses, which node it uses, and when
it moves on to the next (only for a node that did not take the request)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from yarl import URL

from freight.client.session import MAX_NODES, HubSession, parse_node_urls, unreached
from freight.errors import NetworkError, NodeUnavailable, NotFound, RateLimited, UsageError

PIN = "SHA256:" + "ab" * 32


def test_node_lists_parse_in_order_once_each_with_the_default_port() -> None:
    got = parse_node_urls(" https://a:8443, b ,https://a:8443,https://[::1]:9/x ")
    assert got == [URL("https://a:8443/"), URL("https://b:8443/"), URL("https://[::1]:9/")]
    with pytest.raises(UsageError, match="give the hub's address"):
        parse_node_urls(" , ")
    with pytest.raises(UsageError, match="must look like"):
        parse_node_urls("https://a,ftp://b")
    with pytest.raises(UsageError, match=f"at most {MAX_NODES}"):
        parse_node_urls(",".join(f"n{i}" for i in range(MAX_NODES + 1)))


def test_moving_on_goes_round_the_nodes_once_per_failure() -> None:
    s = HubSession("https://a:1", nodes=["https://b:2", "https://a:1"], fingerprint=PIN)
    assert s.nodes == [URL("https://a:1/"), URL("https://b:2/")]
    assert s.url == s.home == URL("https://a:1/")
    assert s.move_on(URL("https://a:1/")) and s.url == URL("https://b:2/")
    # A second task that saw a fail too does not move the session past b.
    assert s.move_on(URL("https://a:1/")) and s.url == URL("https://b:2/")
    assert s.move_on(URL("https://b:2/")) and s.url == URL("https://a:1/")
    assert s.home == URL("https://a:1/")  # names saved state whichever is used
    alone = HubSession("https://a:1", fingerprint=PIN)
    assert not alone.move_on(URL("https://a:1/"))


def _refused() -> NetworkError:
    err = NetworkError("cannot reach the hub")
    err.unreached = True
    return err


async def test_work_moves_on_only_when_a_node_did_not_take_it() -> None:
    s = HubSession("https://a:1", nodes=["https://b:2", "https://c:3"], fingerprint=PIN)
    s._ranked = float("inf")  # keep the order given (no measuring here)
    seen: list[str] = []

    async def work(node: URL) -> str:
        seen.append(node.host or "")
        if node.host == "a":
            raise _refused()
        if node.host == "b":
            raise NodeUnavailable("node b is being drained")
        return "done on c"

    assert await s.on_nodes(work) == "done on c"
    assert seen == ["a", "b", "c"] and s.url.host == "c"

    # An answer from a node (not found, or cut mid-request) is its answer:
    # doing the work again elsewhere could do it twice.
    async def not_found(node: URL) -> str:
        seen.append(node.host or "")
        raise NotFound("no such file")

    seen.clear()
    with pytest.raises(NotFound):
        await s.on_nodes(not_found)
    assert seen == ["c"]
    assert not unreached(NetworkError("the hub closed the connection"))

    async def all_down(node: URL) -> str:
        raise _refused()

    with pytest.raises(NetworkError):
        await s.on_nodes(all_down)


async def test_the_node_that_connects_first_is_used_and_a_dead_one_comes_last() -> None:
    live = socket.socket()
    live.bind(("127.0.0.1", 0))
    live.listen()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        lp, dp = live.getsockname()[1], dead.getsockname()[1]
        s = HubSession(
            f"https://127.0.0.1:{dp}", nodes=[f"https://127.0.0.1:{lp}"], fingerprint=PIN
        )
        ticks = iter([1000.0, 1001.0, 2000.0])
        await s.rank(clock=lambda: next(ticks))
        assert [u.port for u in s.nodes] == [lp, dp] and s.url.port == lp
        s.move_on(s.url)
        await s.rank(clock=lambda: next(ticks))  # 1 s later: not measured again
        assert s.url.port == dp
        await s.rank(clock=lambda: next(ticks))  # 10 minutes later: measured again
        assert s.url.port == lp
    finally:
        live.close()
        dead.close()
        await asyncio.sleep(0)


def test_a_node_a_hub_sends_us_to_is_used_only_if_it_is_a_hub_address() -> None:
    s = HubSession("https://a:1", fingerprint=PIN)
    assert s.prefer("https://c:3") and s.url == URL("https://c:3/")
    assert s.nodes == [URL("https://a:1/"), URL("https://c:3/")]  # learnt, kept after a
    assert s.prefer("https://a:1/") and s.url == URL("https://a:1/")
    for bad in ("http://evil:80", "ftp://c:3", "", "https://"):
        assert not s.prefer(bad)
        assert s.url == URL("https://a:1/")
    full = HubSession("https://n0:1", nodes=[f"https://n{i}:1" for i in range(MAX_NODES)],
                      fingerprint=PIN)  # fmt: skip
    assert not full.prefer("https://new:1") and full.url == URL("https://n0:1/")


async def test_a_node_too_busy_to_attach_sends_the_client_to_the_next() -> None:
    """After a node's failure its crowd comes back to the survivors: one
    at its attach bound answers 429, and the client tries the next node
    (the attach was not taken) before waiting its turn anywhere."""
    s = HubSession("https://a:1", nodes=["https://b:2"], fingerprint=PIN)
    s._ranked = float("inf")
    seen: list[str] = []

    def busy() -> RateLimited:
        return RateLimited("too many attachments this second", retry_after=1.0, busy_node=True)

    async def attach(node: URL) -> str:
        seen.append(node.host or "")
        if node.host == "a":
            raise busy()
        return "attached to b"

    assert await s.on_nodes(attach) == "attached to b"
    assert seen == ["a", "b"]
    # A lockout of the account is no node's business: it is not tried elsewhere.
    assert not unreached(RateLimited("too many failed logins", retry_after=30.0))
    assert unreached(busy())
