"""Ctrl-C during a transfer: the task running the stream is cancelled, and
that cancellation must come out of every await of the sender and receiver,
however the loop turn it lands in lines up with the frame that was being
sent or received (a send that finishes in the same turn as the cancel must
not swallow it: the push would carry on to the end and exit 0)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from freight.engine import streams
from freight.errors import FreightError
from freight.protocol import messages as m
from freight.protocol.stream import StreamSender

TURNS = range(8)  # loop turns before the cancel: covers every step of one await


class InstantPort:
    """A port whose sends and receives finish in one loop turn, as they do
    on a fast connection with room in its buffers."""

    def __init__(self) -> None:
        self.calls = 0

    async def _turn(self) -> None:
        self.calls += 1
        if self.calls > 100:  # long after the cancel: the stream carried on
            raise ConnectionResetError("the test ends the connection")
        await asyncio.sleep(0)

    async def send(self, msg: m.Message, payload: bytes = b"") -> None:
        await self._turn()

    async def recv(self) -> tuple[m.AnyMessage, bytes]:
        await self._turn()
        # The peer's answer: raised by the sender, which then waits again.
        return m.Error(code="internal", message="the peer failed", sid="s1"), b""


async def outcome_of_cancel_after(turns: int, work: Any) -> str:
    task = asyncio.get_running_loop().create_task(work)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done(), "the cancelled task is still running"
    try:
        task.result()
    except asyncio.CancelledError:
        return "cancelled"
    except Exception as exc:
        return f"carried on and raised {type(exc).__name__}"
    return "carried on and returned"


async def send_forever(port: Any) -> None:
    # The sender's loop: one frame after another, as long as nothing stops it.
    while True:
        await streams._send(port, 5.0, m.KeepAlive(sid="s1", offset=0))


async def recv_forever(port: Any) -> None:
    sender = StreamSender("s1", name="f", size=10, mtime=0.0, want_level="none", fresh=True)
    while True:
        with contextlib.suppress(FreightError):
            await streams._next_sender_event(port, sender, 5.0, asyncio.get_running_loop().time)


@pytest.mark.parametrize("turns", TURNS)
async def test_a_cancel_during_a_send_is_never_swallowed(turns: int) -> None:
    assert await outcome_of_cancel_after(turns, send_forever(InstantPort())) == "cancelled"


@pytest.mark.parametrize("turns", TURNS)
async def test_a_cancel_while_an_ack_arrives_is_never_swallowed(turns: int) -> None:
    assert await outcome_of_cancel_after(turns, recv_forever(InstantPort())) == "cancelled"


# The modules a push or a pull runs through: their waits are asyncio.timeout.
TRANSFER_PATH = [
    "freight/engine/streams.py",
    "freight/client/transfer.py",
    "freight/client/session.py",
    "freight/client/probe.py",
    "freight/transport/dataconn.py",
]


def test_the_transfer_path_never_waits_with_wait_for() -> None:
    root = Path(__file__).resolve().parents[2]
    users = [p for p in TRANSFER_PATH if "asyncio.wait_for(" in (root / p).read_text()]
    assert users == [], "use asyncio.timeout: wait_for on 3.11 can swallow a Ctrl-C"
