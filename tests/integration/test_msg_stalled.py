"""A registration whose application never reads, offered more 1 MiB
messages than a host keeps unanswered, through a real hub: every send is
answered (busy, or a timeout) within its timeout, the hub's memory stays
bounded, and the host's other registrations keep taking messages."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from freight import messaging
from freight.client.config import ClientConfig
from freight.client.msghost import MessageHost
from freight.client.msglocal import MAX_UNANSWERED, MessageSocket
from freight.client.relay import RelayClient
from freight.client.session import HubSession
from freight.errors import Busy, PeerAbsent
from freight.messaging import ANSWER_GRACE
from freight.protocol import msglocal as p
from tests.msgsupport import metric
from tests.relaysupport import FAST_RELAY, accounts
from tests.support import Client, Hub

MiB = 1024 * 1024
TIMEOUT = 4.0  # each send's own timeout
SLACK = 3.0  # what a loaded machine may add to it
BUSY = "freight_msg_messages_total"


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAST_RELAY.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def hub_and_people(tmp_path: Path) -> Iterator[tuple[Hub, Client, Client]]:
    hub = Hub(tmp_path / "hub", extra=["--msg-warmup", "0"]).start()
    try:
        admin, bob = accounts(tmp_path, hub)
        yield hub, admin, bob
    finally:
        hub.stop()


@contextlib.asynccontextmanager
async def socket_host(client: Client) -> AsyncIterator[Path]:
    """A messaging host on ``client``'s login serving its socket in a short
    folder (a Unix socket's path has at most 107 bytes); yields the folder."""
    config = ClientConfig(client.config)
    with tempfile.TemporaryDirectory(prefix="fm-", dir="/tmp") as folder:
        async with RelayClient(HubSession.from_config(config), config) as rc:
            await asyncio.wait_for(rc.start(), 30)
            host = MessageHost(rc, config)
            try:
                await asyncio.wait_for(host.start(), 30)
                async with MessageSocket(host, Path(folder)):
                    yield Path(folder)
            finally:
                await host.aclose()


async def stalled_registration(folder: Path, app: str) -> asyncio.StreamWriter:
    """Register ``app`` and never read again (the socket stays open)."""
    reader, writer = await asyncio.open_unix_connection(str(folder / "msg.sock"))
    decoder = p.LocalDecoder()

    async def frame() -> p.AnyLocal:
        async with asyncio.timeout(20):
            while (got := decoder.next_frame()) is None:
                data = await reader.read(65536)
                assert data, "the host closed the connection"
                decoder.feed(data)
        return got[0]

    writer.write(p.encode_local(p.LHello(version=p.LOCAL_VERSION, client="stalled")))
    assert isinstance(await frame(), p.LWelcome)
    writer.write(p.encode_local(p.LRegister(rid="r1", app=app, interest=1, peer="*")))
    assert isinstance(await frame(), p.LRegistered)
    return writer


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_stalled_registration_answers_every_send_within_its_timeout(
    hub_and_people: tuple[Hub, Client, Client],
) -> None:
    hub, admin, bob = hub_and_people
    assert hub.proc is not None
    async with socket_host(admin) as here, socket_host(bob) as there:
        stalled = await stalled_registration(there, "stall")
        other = await messaging.SocketBus.open(there / "msg.sock", "other")
        sender = await messaging.SocketBus.open(here / "msg.sock", "sender")
        talker = await messaging.SocketBus.open(here / "msg.sock", "talker")
        try:
            flowing = await other.register("other", interest=1)
            body = bytes(MiB)
            before = rss(hub.proc.pid)

            async def one() -> tuple[str, float]:
                start = time.monotonic()
                try:
                    n = await sender.send("bob", "stall", type=1, body=body, timeout=TIMEOUT)
                    outcome = f"count {n}"
                except (Busy, PeerAbsent) as exc:
                    outcome = type(exc).__name__
                return outcome, time.monotonic() - start

            sends = [asyncio.create_task(one()) for _ in range(MAX_UNANSWERED + 44)]
            # Meanwhile the host's other registration takes its messages
            # (a send is answered once its recipient took it).
            for i in range(3):
                taking = asyncio.create_task(flowing.get())
                n = await asyncio.wait_for(
                    talker.send("bob", "other", type=1, body=b"%d" % i, timeout=TIMEOUT),
                    TIMEOUT + SLACK,
                )
                assert n == 1
                got = await asyncio.wait_for(taking, TIMEOUT)
                assert got.body == b"%d" % i
            done, pending = await asyncio.wait(sends, timeout=TIMEOUT + ANSWER_GRACE + SLACK)
            for t in pending:
                t.cancel()
            assert not pending, f"{len(pending)} of {len(sends)} sends not answered in time"
            results = [t.result() for t in done]
            assert {outcome for outcome, _ in results} <= {"Busy", "PeerAbsent"}
            slowest = max(took for _, took in results)
            print(f"slowest answer {slowest:.1f} s for a timeout of {TIMEOUT} s")
            assert slowest < TIMEOUT + ANSWER_GRACE + SLACK
            # What crossed the wire to be refused: about one message per
            # back-off once the registration was found full, not each of
            # the 300 again and again until its timeout.
            refused = await asyncio.to_thread(metric, hub, BUSY, 'outcome="busy"')
            print(f"refused busy: {refused:.0f}")
            assert refused < 50
            grown = rss(hub.proc.pid) - before
            print(f"hub memory grew {grown / MiB:.0f} MiB")
            assert grown < 64 * MiB  # the messages offered: 300 MiB
        finally:
            await sender.aclose()
            await talker.aclose()
            await other.aclose()
            stalled.close()
