"""Clients of the relay: ``listen`` (it serves whatever the rows aimed at
it need: relayed connections, messaging, a tunnel), ``connect`` and
``forward`` (messages echoed back, through a pipe or a tunnel), ``send``
and ``receive`` (files handed over by one-time code)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from .. import messaging, sdk
from ..client.api import Client
from ..errors import FreightError
from ..tasks import Supervisor
from .clients import MAX_OUTSTANDING, RowRun, digest_of, forever, issue, write_file
from .schedule import Pacer, draw_size, interval, loops

ALL_TYPES: Final = 0xFFFFFFFF  # a listening registration takes every message type
ECHO_CHUNK: Final = 65536
# A code stays open (and counts against the account's 64) until its
# transfer finishes or it expires: a short life frees the place of a code
# whose receiver never came.
SEND_TTL: Final = 60.0


# --- listen ------------------------------------------------------------------


async def listen_client(run: RowRun, i: int) -> None:
    """Serve what the rows aimed at this one use, each on its own
    attachment, each started again when it fails."""
    login = run.login(i)
    t = run.transport()["transport"]
    serves = run.serves or {"relay"}
    counted = sorted(serves)[0]  # the one service whose attachment is counted

    def attached(service: str, up: bool) -> None:
        if service == counted:
            run.stats.attach() if up else run.stats.detach()

    async def relay() -> None:
        async with (
            Client(run.gate.url, config_dir=login, transport=t) as client,
            client.listen(run.row.app) as listener,
            Supervisor(f"{run.row.id}-{i}-echoes") as echoes,
        ):
            attached("relay", True)
            try:
                async for conn in listener:
                    echoes.spawn(_echo_messages(run, i, conn), name="echo", detached=True)
            finally:
                attached("relay", False)

    async def msg() -> None:
        async with messaging.connect(run.gate.url, config_dir=login, transport=t) as bus:
            reg = await bus.register(run.row.app, interest=ALL_TYPES)
            attached("msg", True)
            try:
                async for message in reg:
                    run.stats.ops += 1
                    run.stats.bytes += len(message.body)
                    run.ok(i)
                    if message.from_ticket:  # a request: answered with its body
                        await message.reply(message.body)
            finally:
                attached("msg", False)

    async def tunnel() -> None:
        server = await asyncio.start_server(lambda r, w: _echo_stream(run, i, r, w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with sdk.expose(
                run.gate.url,
                name=run.row.app,
                target=f"127.0.0.1:{port}",
                allow=["*"],
                transport=t,
                config_dir=login,
            ):
                attached("tunnel", True)
                try:
                    await asyncio.Event().wait()
                finally:
                    attached("tunnel", False)
        finally:
            server.close()

    services: dict[str, Callable[[], Awaitable[None]]] = {
        "relay": relay,
        "msg": msg,
        "tunnel": tunnel,
    }
    await asyncio.gather(*(forever(run, i, services[s]) for s in sorted(serves)))


async def _echo_messages(run: RowRun, i: int, conn: Any) -> None:
    with contextlib.suppress(FreightError, OSError):
        async for data in conn:
            await conn.send(data)
            run.stats.ops += 1
            run.stats.bytes += len(data)
            run.ok(i)


async def _echo_stream(
    run: RowRun, i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while data := await reader.read(ECHO_CHUNK):
            writer.write(data)
            await writer.drain()
            run.stats.bytes += len(data)
            run.ok(i)
    except (OSError, ConnectionError):
        pass
    finally:
        writer.close()


# --- connect and forward: messages echoed back -----------------------------


class Exchange:
    """Messages on one stream, each answered in order by the echo at the
    other end: the latency of each is measured from its due time."""

    def __init__(self, run: RowRun, i: int, pacer: Pacer | None) -> None:
        self.run, self.i, self.pacer = run, i, pacer
        self.waiting: deque[tuple[float, float, int]] = deque()  # (due, sent, bytes)
        self.window = asyncio.Semaphore(loops(run.row.rate)) if pacer is None else None
        self.seq = itertools.count(1)

    def answered(self) -> int:
        """One answer came: its bytes (the caller may wait for that many)."""
        due, sent, n = self.waiting.popleft()
        self.run.outstanding -= 1
        self.run.stats.record(due, sent, self.run.clock(), n)
        self.run.ok(self.i)
        if self.window is not None:
            self.window.release()
        return n

    async def next(self) -> tuple[bytes, int] | None:
        """The next message to send when it is due (None: the run drains)."""
        run = self.run
        if self.pacer is not None:
            due = self.pacer.next_due()
            await asyncio.sleep(max(0.0, due - run.clock()))
        else:
            assert self.window is not None
            await self.window.acquire()
            due = run.clock()
        if run.draining:
            return None
        if len(self.waiting) >= MAX_OUTSTANDING:
            run.stats.lost += 1  # this far behind, the message is given up
            return b"", 0
        assert run.row.size is not None
        data = run.payload(draw_size(run.row.size, run.rng, run.file_size), next(self.seq))
        self.waiting.append((due, run.clock(), len(data)))
        run.outstanding += 1
        run.stats.sent += 1
        return data, len(data)

    def close(self) -> None:
        self.run.stats.lost += len(self.waiting)
        self.run.outstanding -= len(self.waiting)
        self.waiting.clear()


async def _both(*work: Coroutine[Any, Any, None]) -> None:
    """Run the sender and the receiver of a stream; the first to end or
    fail ends both (a failure is raised)."""
    async with Supervisor("exchange") as pair:
        tasks = [pair.spawn(w, name="half", detached=True) for w in work]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()


def _pacer(run: RowRun) -> Pacer | None:
    every = interval(run.row.rate, run.row.count)
    return Pacer.for_client(run.clock(), every, run.rng) if every else None


async def connect_client(run: RowRun, i: int) -> None:
    account = run.peer_account(i)
    client = Client(run.gate.url, config_dir=run.login(i), **run.transport())
    pacer = _pacer(run)

    async def attempt() -> None:
        ex = Exchange(run, i, pacer)

        async def receive(conn: Any) -> None:
            async for _ in conn:
                ex.answered()

        async def send(conn: Any) -> None:
            while (message := await ex.next()) is not None:
                if message[0]:
                    await conn.send(message[0])
            await asyncio.Event().wait()  # the answers still come in

        async with client.connect(account, run.row.app, timeout=30) as conn:
            run.stats.attach()
            try:
                await _both(receive(conn), send(conn))
            finally:
                run.stats.detach()
                ex.close()

    try:
        await forever(run, i, attempt)
    finally:
        await client.aclose()


async def forward_client(run: RowRun, i: int) -> None:
    """A tunnel to the peer's exposed name (``ACCOUNT:APP``); through it, a
    TCP connection whose bytes the far end echoes."""
    account = run.peer_account(i)
    t = run.transport()["transport"]
    pacer = _pacer(run)

    async def attempt() -> None:
        async with sdk.forward(
            run.gate.url, to=f"{account}:{run.row.app}", transport=t, config_dir=run.login(i)
        ) as fwd:
            host, port = fwd.address
            reader, writer = await asyncio.open_connection(host, port)
            ex = Exchange(run, i, pacer)

            async def receive() -> None:
                owed = 0  # bytes of the oldest message still to come back
                while data := await reader.read(ECHO_CHUNK):
                    got = len(data)
                    while got and ex.waiting:
                        owed = owed or ex.waiting[0][2]
                        take = min(owed, got)
                        owed, got = owed - take, got - take
                        if owed == 0:
                            ex.answered()

            async def send() -> None:
                while (message := await ex.next()) is not None:
                    writer.write(message[0])
                    await writer.drain()
                await asyncio.Event().wait()

            run.stats.attach()
            try:
                await _both(receive(), send())
            finally:
                run.stats.detach()
                ex.close()
                writer.close()

    await forever(run, i, attempt)


# --- send and receive: files handed over by one-time code -------------------


async def send_client(run: RowRun, i: int) -> None:
    """Offer files of the row's size; the code goes to the receive row,
    whose client checks the bytes against the BLAKE3 sent with it."""
    client = Client(run.gate.url, config_dir=run.login(i), **run.transport())
    numbers = itertools.count(1)
    receivers = run.peer_run
    assert receivers is not None and run.row.size is not None
    size = run.row.size

    async def one(due: float) -> None:
        k = next(numbers)
        n = draw_size(size, run.rng, run.file_size)
        folder = run.work / f"send-{i}-{k}"
        folder.mkdir()
        path = folder / "data.bin"
        digest = await asyncio.to_thread(write_file, path, run, n, k)
        start = run.clock()
        try:
            await client.send(
                path,
                ttl=SEND_TTL,
                on_code=lambda offered: receivers.codes.put_nowait(
                    (offered.code, digest, run.stats)
                ),
            )
        finally:
            path.unlink(missing_ok=True)
            folder.rmdir()
        run.stats.record(due, start, run.clock(), n)
        run.ok(i)

    try:
        await issue(run, i, one)
    finally:
        await client.aclose()


async def receive_client(run: RowRun, i: int) -> None:
    client = Client(run.gate.url, config_dir=run.login(i), **run.transport())
    numbers = itertools.count(1)
    run.stats.attach()
    try:
        while True:
            code, digest, sender = await run.codes.get()
            folder = run.work / f"recv-{i}-{next(numbers)}"
            folder.mkdir()
            start = run.clock()
            try:
                summary = await client.receive(code, folder)
                got = await asyncio.to_thread(digest_of, folder / "data.bin")
            except FreightError as exc:
                run.stats.error(exc.code)
                continue
            finally:
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
            run.stats.record(start, start, run.clock(), summary.bytes)
            ok = got == digest
            for stats in (run.stats, sender):
                if ok:
                    stats.verified += 1
                else:
                    stats.mismatched += 1
            run.ok(i)
    finally:
        run.stats.detach()
        await client.aclose()
