"""The SDK's socket connection against a host that takes requests and never
answers them: each call gives up at its own deadline, and frames written in
one loop tick arrive whole and in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path

from freight.client.msgcalls import EXPIRY_TICK
from freight.errors import FreightError
from freight.messaging import ANSWER_GRACE, SocketBus
from freight.protocol import msglocal as p


async def _silent_host(path: Path, seen: list[p.AnyLocal]) -> asyncio.Server:
    """Welcomes an application, records its frames, answers nothing else."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = p.LocalDecoder()
        while data := await reader.read(65536):
            decoder.feed(data)
            for msg, _ in decoder:
                seen.append(msg)
                if isinstance(msg, p.LHello):
                    writer.write(p.encode_local(p.LWelcome(version=p.LOCAL_VERSION)))
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


async def test_a_send_the_host_never_answers_times_out_at_its_deadline(tmp_path: Path) -> None:
    seen: list[p.AnyLocal] = []
    server = await _silent_host(tmp_path / "msg.sock", seen)
    async with server:
        bus = await SocketBus.open(tmp_path / "msg.sock")
        try:
            start = time.monotonic()

            async def timed(call: Awaitable[object]) -> tuple[object, float]:
                """What the call ended with, and when (seconds from the start)."""
                try:
                    result: object = await call
                except Exception as exc:
                    result = exc
                return result, time.monotonic() - start

            short = timed(bus.send("bob", "app", type=1, body=b"x", timeout=0.2))
            longer = timed(bus.send("bob", "app", type=1, body=b"y", timeout=1.0))
            with_reply = timed(bus.request("bob", "app", type=1, body=b"z", timeout=0.3))
            ended = await asyncio.wait_for(asyncio.gather(short, longer, with_reply), 10)
            results = [r for r, _ in ended]
            assert isinstance(results[0], FreightError)
            assert isinstance(results[1], FreightError)
            assert "no answer within 0.2 s" in str(results[0])
            assert "no answer within 1 s" in str(results[1])
            assert isinstance(results[2], TimeoutError)
            assert "no reply within 0.3 s" in str(results[2])
            # Each at its own deadline plus the grace, no sooner, and no
            # later than one look at the deadlines after it (a second's
            # slack for a busy machine): not all at the last one's.
            for (_, took), timeout in zip(ended, (0.2, 1.0, 0.3), strict=True):
                assert timeout + ANSWER_GRACE <= took < timeout + ANSWER_GRACE + EXPIRY_TICK + 1.0
            assert ended[0][1] < ended[1][1] and ended[2][1] < ended[1][1]
            assert not bus.end.waiting and not bus.end.deadlines
            # The three requests arrived in the order they were made.
            sends = [m for m in seen if isinstance(m, p.LSend | p.LRequest)]
            assert [m.rid for m in sends] == ["r1", "r2", "r3"]
        finally:
            await bus.aclose()
