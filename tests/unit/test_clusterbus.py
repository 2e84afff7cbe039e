"""Notices between a cluster's nodes: only a sealed, fresh notice of a
known topic is taken; anything else (any byte changed, another cluster's
key, a stale or oversized one) is refused with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freight.hub.clusterbus import MAX_NOTICE, NoBus, seal, unseal

KEY = b"k" * 32
NOW = 1_000_000.0


def notice(topic: str = "commands", ts: float = NOW) -> dict[str, object]:
    return {"topic": topic, "from": "a", "ts": ts, "body": {"agent": 7}}


def test_a_sealed_notice_opens_with_its_key_only() -> None:
    data = seal(KEY, notice())
    assert unseal(KEY, data, NOW + 30)["body"] == {"agent": 7}
    with pytest.raises(ValueError, match="bad signature"):
        unseal(b"o" * 32, data, NOW)  # another cluster's
    with pytest.raises(ValueError, match="stale"):
        unseal(KEY, data, NOW + 61)
    with pytest.raises(ValueError, match="unknown topic"):
        unseal(KEY, seal(KEY, notice("shutdown")), NOW)
    with pytest.raises(ValueError, match="too large"):
        unseal(KEY, data + b" " * MAX_NOTICE, NOW)
    with pytest.raises(ValueError, match="not a notice"):
        unseal(KEY, seal(KEY, {"topic": "commands", "body": [1]}), NOW)


@given(st.data())
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    sealed = bytearray(seal(KEY, notice()))
    i = data.draw(st.integers(0, len(sealed) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != sealed[i]))
    sealed[i] = new
    with pytest.raises(ValueError):
        unseal(KEY, bytes(sealed), NOW)


@given(st.binary(max_size=MAX_NOTICE + 10))
def test_random_bytes_never_pass(junk: bytes) -> None:
    with pytest.raises(ValueError):
        unseal(KEY, junk, NOW)


async def test_without_a_bus_nothing_is_sent_and_all_is_well() -> None:
    bus = NoBus()
    bus.on("commands", lambda body: None)  # type: ignore[arg-type,return-value]
    await bus.tell("commands", {"agent": 1})
    assert bus.healthy()
