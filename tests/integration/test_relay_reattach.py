"""How soon a relay client comes back after losing its attachment: at once
when it had held, after its back-off when it had not; the connections it
carries go on either way."""

from __future__ import annotations

import asyncio

import pytest

from freight.client.backoff import HELD_FOR
from freight.client.relay import RelayClient
from tests.integration.test_relay import pair
from tests.relaysupport import sdk
from tests.support import Client


async def _cut(rc: RelayClient) -> int:
    """Close the client's attachment under it; its reconnect count then."""
    assert rc.chan is not None
    before = rc.reconnects
    await rc.chan.aclose()
    return before


async def _back(rc: RelayClient, before: int) -> None:
    while rc.reconnects == before or not rc.attached.is_set():
        await asyncio.sleep(0.02)


async def test_a_held_attachment_comes_back_at_once_and_a_fresh_one_backs_off(
    admin: Client, bob: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first back-off of 100 s: the policy's first wait is 10-100 s, so a
    # client back within 8 s (time enough on a busy machine) went at once.
    monkeypatch.setenv("FREIGHT_RELAY_BACKOFF", "100")
    monkeypatch.setenv("FREIGHT_RELAY_BACKOFF_MAX", "200")
    now = [1000.0]
    async with sdk(admin, clock=lambda: now[0]) as ca, sdk(bob) as cb:
        a, b = await pair(ca, cb, "reattach")
        now[0] += HELD_FOR  # the attachment has held
        before = await _cut(ca)
        await asyncio.wait_for(_back(ca, before), 8)
        await a.send(b"after the cut")
        assert await asyncio.wait_for(b.recv(), 10) == b"after the cut"
        await b.send(b"and back")
        assert await asyncio.wait_for(a.recv(), 10) == b"and back"

        # Cut again at once: that attachment had not held, so the client
        # waits its back-off (at least 10 s) before it tries.
        before = await _cut(ca)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_back(ca, before), 2)
        assert ca.reconnects == before
