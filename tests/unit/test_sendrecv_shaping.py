"""Limits and compression of relayed transfers: the ``X`` message (a
compressed ``F`` or ``B``), the receiver's choice of level and rate, the
Pacer, and a whole send/receive through an in-memory pipe."""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path
from typing import Any, cast

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freight.client.options import QuietReporter
from freight.client.pacing import Pacer, effective_rate, resolve_limit
from freight.client.receiving import Destination, receive_entries
from freight.client.sendrecv import Shaping, build_manifest, send_entries, shaping_for
from freight.errors import UsageError
from freight.protocol import sendrecv as wire
from freight.protocol.codec import Compressor
from freight.tasks import Supervisor
from freight.units import Limit
from tests.support import assert_same_tree
from tests.unit.test_jobs_client import Pipe, pipe

TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(40_000))


def test_pack_round_trips_chunks_and_batches() -> None:
    fast = Compressor("fast")
    chunk = wire.encode_chunk_head(3, 1 << 33) + TEXT[: 1 << 20]
    packed = wire.pack(chunk, fast)
    assert packed[:1] == b"X" and len(packed) < len(chunk) // 4
    assert wire.unpack(packed) == chunk
    batch = wire.encode_batch_head(1) + wire.encode_small_head(0, 5000, False, b"d" * 32)
    batch += TEXT[:5000]
    assert wire.unpack(wire.pack(batch, Compressor("max"))) == batch


def test_incompressible_data_goes_as_it_is() -> None:
    chunk = wire.encode_chunk_head(0, 0) + os.urandom(300_000)
    assert wire.pack(chunk, Compressor("fast")) == chunk
    assert wire.pack(chunk, Compressor("none")) == chunk


def test_the_receiver_chooses_the_level() -> None:
    assert wire.choose_level("fast", "") == "fast"  # no say: the sender's wish
    assert wire.choose_level("max", "none") == "none"  # its own setting wins
    assert wire.choose_level("", "fast") == "fast"
    assert wire.choose_level("", "") == "none"


def test_older_peers_messages_still_decode() -> None:
    # A receiver that predates levels says none: the sender packs nothing.
    holdings = wire.decode(b'W{"have": [[0, ""]]}', wire.Holdings)
    assert (holdings.level, holdings.rate) == ("", 0)
    # And an older sender's list has no wish.
    assert wire.decode(b'M{"entries": []}', wire.Manifest).want == ""
    # Defaults are left out, so an older peer sees the message it knows.
    assert wire.encode(wire.Holdings(have=[(0, "")])) == b'W{"have":[[0,""]]}'


def _x(raw: int, codec: int, body: bytes) -> bytes:
    return b"X" + raw.to_bytes(4, "big") + bytes([codec]) + body


@pytest.mark.parametrize(
    "data",
    [
        b"X",
        b"X\x00\x00",
        _x(0, 1, b""),
        _x(wire.MAX_PACKED_RAW + 1, 1, zstandard.ZstdCompressor().compress(b"F" * 100)),
        _x(100, 0, b"F" * 100),  # "compressed" with no codec
        _x(100, 9, b"F" * 100),  # an unknown codec
        _x(100, 1, b"garbage that is no zstd frame"),
        _x(100, 2, b"garbage that is no zlib stream"),
        # A bomb: a few bytes that would expand far beyond what they declare.
        _x(100, 2, zlib.compress(b"F" * (64 << 20))),
        _x(100, 1, zstandard.ZstdCompressor(write_content_size=False).compress(b"F" * (1 << 24))),
        _x(100, 1, zstandard.ZstdCompressor().compress(b"F" * 99)),  # shorter than declared
        _x(100, 1, zstandard.ZstdCompressor().compress(b"K" * 100)),  # not F or B inside
        _x(6, 1, zstandard.ZstdCompressor().compress(b"X" + b"\0" * 5)),  # no nesting
    ],
)
def test_hostile_packed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(wire.MalformedTransfer):
        wire.unpack(data)


@pytest.mark.parametrize(
    "data",
    [
        b'W{"have": [], "level": "ultra"}',
        b'W{"have": [], "level": 1}',
        b'W{"have": [], "rate": -5}',
        b'W{"have": [], "rate": "20M"}',
        b'W{"have": [], "rate": 1e30}',
    ],
)
def test_hostile_levels_and_rates_from_a_receiver_are_refused(data: bytes) -> None:
    with pytest.raises(wire.MalformedTransfer):
        wire.decode(data, wire.Holdings)
    with pytest.raises(wire.MalformedTransfer):
        wire.decode(b'M{"entries": [], "want": "zip"}', wire.Manifest)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_unpack_raises_only_malformed_transfer(data: bytes) -> None:
    try:
        inner = wire.unpack(b"X" + data)
    except wire.MalformedTransfer:
        return
    assert inner[:1] in (b"F", b"B")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_the_pacer_keeps_to_the_smaller_rate() -> None:
    t = FakeTime()
    pacer = Pacer(2 << 20, clock=t.clock, sleep=t.sleep)
    for _ in range(20):
        await pacer.pace(1 << 20)  # 20 MiB at 2 MiB/s
    assert 9.5 <= t.now <= 10.0
    pacer.assign(1 << 20)  # the other end allows less
    start = t.now
    for _ in range(10):
        await pacer.pace(1 << 20)
    assert 9.5 <= t.now - start <= 10.0
    pacer.assign(0)  # the other end lifts its limit: ours stands
    assert pacer.rate == 2 << 20
    unlimited = Pacer(clock=t.clock, sleep=t.sleep)
    start = t.now
    await unlimited.pace(1 << 30)
    assert t.now == start
    assert effective_rate(0, 5) == 5 and effective_rate(7, 5) == 5 and effective_rate(0, 0) == 0


async def test_limits_resolve_and_a_percentage_needs_a_hub() -> None:
    assert await resolve_limit(Limit(rate=1000), None) == 1000
    assert await resolve_limit(Limit(), None) == 0
    assert (await shaping_for("20M", "fast", None)) == Shaping(rate=20 << 20, compress="fast")
    assert (await shaping_for(0, "", None)) == Shaping()
    with pytest.raises(UsageError, match=r"--limit 50% needs a hub"):
        await shaping_for("50%", "", None)
    with pytest.raises(UsageError, match="--compress must be one of"):
        await shaping_for("off", "ultra", None)
    with pytest.raises(UsageError, match="not a size"):
        await shaping_for("fast", "", None)


class Counted(Pipe):
    """A pipe end that counts what goes out, by message kind."""

    def __init__(self, end: Pipe) -> None:
        super().__init__(end.inbox, end.outbox)
        self.kinds: dict[bytes, int] = {}

    async def send(self, data: bytes) -> None:
        self.kinds[data[:1]] = self.kinds.get(data[:1], 0) + len(data)
        await super().send(data)


async def move(
    src: Path, out: Path, sender: Shaping, receiver: Shaping
) -> tuple[Any, Any, Counted]:
    here, there = pipe()
    counted = Counted(here)
    async with Supervisor("test-shaping") as tasks:
        sending = tasks.spawn(
            send_entries(cast(Any, counted), build_manifest([src]), QuietReporter(), shaping=sender)
        )
        got = await receive_entries(
            cast(Any, there), Destination.folder(out), QuietReporter(), shaping=receiver
        )
        sent = await asyncio.wait_for(sending, 20)
    return sent, got, counted


async def test_compressed_transfer_is_identical_and_smaller(tmp_path: Path) -> None:
    src = tmp_path / "logs"
    src.mkdir()
    (src / "big.log").write_bytes(TEXT * 2)  # chunks
    for i in range(30):
        (src / f"small-{i}.txt").write_bytes(TEXT[: 1000 + 997 * i])  # a batch
    (src / "noise.bin").write_bytes(os.urandom(200_000))  # goes as it is
    sent, got, counted = await move(src, tmp_path / "out", Shaping(compress="fast"), Shaping())
    assert_same_tree(src, tmp_path / "out" / "logs")
    assert sent.level == got.level == "fast"
    assert counted.kinds.get(b"X", 0) > 0
    assert sent.wire == got.wire < sent.sent // 3
    # The receiver's say wins over the sender's wish.
    sent, got, counted = await move(
        src, tmp_path / "out2", Shaping(compress="max"), Shaping(compress="none")
    )
    assert_same_tree(src, tmp_path / "out2" / "logs")
    assert sent.level == "none" and b"X" not in counted.kinds
    assert sent.wire >= sent.sent


async def test_a_sender_that_packs_unasked_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "a.log"
    src.write_bytes(TEXT)
    here, there = pipe()

    async def rogue() -> bytes:
        await here.send(wire.encode(wire.Manifest(entries=[build_manifest([src])[0].to_wire()])))
        await here.recv()  # W: no compression asked for
        await here.send(wire.pack(wire.encode_chunk_head(0, 0) + TEXT, Compressor("fast")))
        return await here.recv()

    async with Supervisor("test-rogue") as tasks:
        answer = tasks.spawn(rogue())
        with pytest.raises(Exception, match="did not ask for"):
            await receive_entries(
                cast(Any, there), Destination.folder(tmp_path / "o"), QuietReporter()
            )
        verdict = wire.decode(await asyncio.wait_for(answer, 10), wire.Verdict)
    assert not verdict.ok and "did not ask for" in verdict.error
