"""Faults on relayed, end-to-end encrypted connections (``freight send`` /
``receive`` and the SDK's RelayClient/Connection).

Everything is real: hub processes, CLI processes, TLS, sealed lanes and the
end-to-end sealing on loopback. Where the network has to misbehave a proxy
sits in front of the hub's port: tests/faultproxy.py, extended here with a
rate limit (so a kill lands mid-transfer) and a recorder (to check what the
wire carries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freight.client.relay import RECORD_MESSAGE, RelayClient
from freight.errors import FreightError
from freight.protocol import messages as m
from freight.protocol.e2e import DEFAULT_WINDOW, FlowViolation, public_of
from freight.protocol.errors import IntegrityError, ProtocolError
from tests.faultproxy import FaultProxy
from tests.relaysupport import BOB_PASSWORD, FAST_RELAY, accounts, code_pair, exchange, sdk
from tests.support import Client, Hub, random_file, same_bytes, wait_until

MiB = 1024 * 1024
PART = ".freight-part"
MARKER = b"FREIGHT-PLAINTEXT-MARKER"


# --- a proxy that can also be slow and remember what it carried ---------------------


class _Tap:
    """Stands in for the StreamReader of one direction of one proxied
    connection: reads in small pieces, paces them, keeps a copy."""

    def __init__(self, proxy: ShapedProxy, reader: asyncio.StreamReader, up: bool) -> None:
        self.proxy = proxy
        self.reader = reader
        self.up = up
        self.copy: bytearray | None = None
        if proxy.record:
            self.copy = bytearray()
            proxy.recorded.append((up, self.copy))

    async def read(self, n: int) -> bytes:
        data = await self.reader.read(min(n, 64 * 1024))
        if data:
            if self.copy is not None:
                self.copy += data
            await self.proxy.pace(len(data), self.up)
        return data


class ShapedProxy(FaultProxy):
    """FaultProxy plus ``rate`` (bytes/s per direction, all connections
    together: a slow link) and ``record`` (a copy of every byte forwarded,
    per connection and direction)."""

    def __init__(
        self, target_port: int, *, rate: float | None = None, record: bool = False, **kw: Any
    ) -> None:
        super().__init__(target_port, **kw)
        self.rate = rate
        self.record = record
        self.recorded: list[tuple[bool, bytearray]] = []
        self._free_at = {True: 0.0, False: 0.0}

    def set_rate(self, rate: float | None) -> None:
        self._call(lambda: setattr(self, "rate", rate))

    def snapshot(self) -> list[tuple[bool, bytes]]:
        return self._call(lambda: [(up, bytes(b)) for up, b in self.recorded])

    async def pace(self, n: int, up: bool) -> None:
        if not self.rate:
            return
        now = asyncio.get_running_loop().time()
        self._free_at[up] = max(now, self._free_at[up]) + n / self.rate
        if self._free_at[up] > now:
            await asyncio.sleep(self._free_at[up] - now)  # the link's speed, not a sync

    async def _pump(  # type: ignore[override]
        self, conn: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        await super()._pump(conn, _Tap(self, reader, up), writer, up=up)  # type: ignore[arg-type]


# --- fixtures and helpers ----------------------------------------------------------


@pytest.fixture
def proxies() -> Iterator[Callable[..., ShapedProxy]]:
    started: list[ShapedProxy] = []

    def make(hub: Hub, **kw: Any) -> ShapedProxy:
        p = ShapedProxy(hub.port, **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.close()


def read_event(proc: subprocess.Popen[str], timeout: float = 20) -> dict[str, Any]:
    """The next JSON line a CLI process prints (its code, say)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"process exited {proc.wait(10)}: {proc.stderr.read()}")  # type: ignore[union-attr]
    event: dict[str, Any] = json.loads(line)
    return event


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    """Exit code, the final JSON event, stderr."""
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    done = next((e for e in reversed(lines) if e.get("event") == "done"), {})
    return proc.returncode, done, err


def both_exit(
    s: subprocess.Popen[str], r: subprocess.Popen[str], timeout: float, state: Callable[[], str]
) -> None:
    """Wait for sender and receiver to exit; a clear failure if they hang."""
    try:
        wait_until(lambda: s.poll() is not None and r.poll() is not None, timeout, "both ends")
    except AssertionError:
        codes = f"{s.poll()}/{r.poll()}"
        said = []
        for name, proc in (("sender", s), ("receiver", r)):
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                out, err = proc.communicate(timeout=5)
                said.append(f"{name} said: {out[-1500:]}{err[-1500:]}")
        raise AssertionError(
            f"sender/receiver still running after {timeout} s (exit codes {codes}); "
            f"{state()}\n" + "\n".join(said)
        ) from None


def part_size(target: Path) -> int:
    try:
        return target.with_name(target.name + PART).stat().st_size
    except FileNotFoundError:
        return 0


def relay_states(admin: Client) -> list[str]:
    rows = json.loads(admin.run("admin", "connections", "--json").stdout)
    return [str(r["state"]) for r in rows]


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes (no psutil here)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def start_transfer(
    spawn: Callable[..., subprocess.Popen[str]],
    sender: Client,
    receiver: Client,
    src: Path,
    dest: Path,
) -> tuple[subprocess.Popen[str], subprocess.Popen[str], str]:
    s = spawn(sender, "send", str(src), "--json")
    code = str(read_event(s)["code"])
    r = spawn(receiver, "receive", code, "-o", str(dest), "--json")
    return s, r, code


@dataclass
class SlowTransfer:
    """A 32 MiB send/receive at 8 MiB/s through a shaped proxy."""

    hub: Hub
    proxy: ShapedProxy
    sender: Client
    receiver: Client
    src: Path
    dest: Path
    s: subprocess.Popen[str]
    r: subprocess.Popen[str]
    code: str
    size: int = 32 * MiB

    @property
    def target(self) -> Path:
        return self.dest / self.src.name


def slow_transfer(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
    seed: int,
) -> SlowTransfer:
    """Started, and returned once 8 MiB are on the receiver's disk: about
    4 s for the whole file, so a fault injected now lands mid-way."""
    hub = hubs()
    proxy = proxies(hub)
    sender, receiver = accounts(tmp_path, hub, proxy)
    src = random_file(tmp_path / "src.bin", 32 * MiB, seed=seed)
    dest = tmp_path / "dest"
    proxy.set_rate(8 * MiB)
    s, r, code = start_transfer(spawn, sender, receiver, src, dest)
    t = SlowTransfer(hub, proxy, sender, receiver, src, dest, s, r, code)
    wait_until(lambda: part_size(t.target) >= 8 * MiB, 20, "8 MiB at the receiver")
    return t


# --- 1. every connection cut every 3 MiB --------------------------------------------


def test_send_receive_through_cuts_every_3_mib(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    hub = hubs()
    proxy = proxies(hub)
    sender, receiver = accounts(tmp_path, hub, proxy)
    size = 32 * MiB
    src = random_file(tmp_path / "src.bin", size, seed=1)
    dest = tmp_path / "dest"
    proxy.set_cut_every(3 * MiB)  # from here on: the logins above went through whole
    started = time.monotonic()
    s, r, _ = start_transfer(spawn, sender, receiver, src, dest)

    rc_r, done_r, err_r = finish(r, 90)
    rc_s, done_s, err_s = finish(s, 30)
    took = time.monotonic() - started
    assert rc_r == 0, err_r + hub.log()[-3000:]
    assert rc_s == 0, err_s
    print(f"send/receive, cut every 3 MiB: {proxy.cuts} cuts, {took:.1f} s")
    # Each direction of each lane carries at most 3 MiB: the records had to
    # cross many attachments, sent again after every relink.
    assert proxy.cuts >= size // (3 * MiB)
    assert done_r["bytes"] == done_s["bytes"] == size
    assert same_bytes(src, dest / "src.bin")
    assert not (dest / ("src.bin" + PART)).exists()


# --- 2. the hub is killed mid-transfer -------------------------------------------------


def test_send_receive_survive_hub_sigkill(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    t = slow_transfer(tmp_path, hubs, proxies, spawn, seed=2)
    hub, s, r, src, target, size = t.hub, t.s, t.r, t.src, t.target, t.size
    hub.kill()
    at_kill = part_size(target)
    assert at_kill < size
    assert s.poll() is None and r.poll() is None, "the ends must wait for the hub"
    hub.start()  # same data folder, same port: the proxy reaches it again

    # Still at 8 MiB/s: up to 16 MiB sent again and 23 MiB new, about 5 s.
    both_exit(
        s, r, 10, lambda: f"receiver holds {part_size(target)} bytes; hub log: {hub.log()[-4000:]}"
    )
    rc_r, done_r, err_r = finish(r, 10)
    rc_s, _, err_s = finish(s, 10)
    assert rc_r == 0, err_r + hub.log()[-3000:]
    assert rc_s == 0, err_s
    print(f"hub SIGKILL at {at_kill / MiB:.1f} MiB received; completed")
    assert done_r["bytes"] == size
    assert same_bytes(src, target)
    # The same processes finished: nothing was started again at this layer.
    assert done_r["resumed"] == 0


# --- 3. an end is killed and started again -----------------------------------------------


def test_receiver_killed_and_run_again_resumes(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    t = slow_transfer(tmp_path, hubs, proxies, spawn, seed=3)
    hub, proxy, sender, receiver = t.hub, t.proxy, t.sender, t.receiver
    s, r, code, src, dest, target, size = t.s, t.r, t.code, t.src, t.dest, t.target, t.size
    r.kill()
    r.wait(10)
    held = part_size(target)
    # The hub has noticed the receiver is gone (so the new claim is no
    # "someone else is receiving" conflict).
    wait_until(lambda: relay_states(sender) == ["waiting"], 20, "the receiver detached")
    proxy.set_rate(None)

    r2 = spawn(receiver, "receive", code, "-o", str(dest), "--json")
    rc_r, done_r, err_r = finish(r2, 60)
    rc_s, done_s, err_s = finish(s, 30)
    assert rc_r == 0, err_r + hub.log()[-3000:]
    assert rc_s == 0, err_s
    print(f"receiver SIGKILL with {held} bytes on disk: resumed from {done_r['resumed']}")
    assert 0 < done_r["resumed"] <= held
    assert done_s["resumed"] == done_r["resumed"]
    assert done_r["sent"] == size - done_r["resumed"]
    assert same_bytes(src, target)


def test_receiver_interrupted_and_run_again_resumes(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    """Ctrl-C is no finished transfer: the code still works afterwards."""
    t = slow_transfer(tmp_path, hubs, proxies, spawn, seed=4)
    t.r.send_signal(signal.SIGINT)
    _, err = t.r.communicate(timeout=30)
    assert t.r.returncode == 130, err
    # The hub has ended the receiver's side; the sender waits on for it.
    wait_until(lambda: "connected" not in relay_states(t.sender), 20, "the receiver's end gone")
    assert t.s.poll() is None, t.s.communicate(timeout=5)
    t.proxy.set_rate(None)
    r2 = spawn(t.receiver, "receive", t.code, "-o", str(t.dest), "--json")
    rc_r, done_r, err_r = finish(r2, 60)
    rc_s, _, err_s = finish(t.s, 30)
    assert rc_r == 0, err_r
    assert rc_s == 0, err_s
    assert done_r["resumed"] > 0
    assert same_bytes(t.src, t.target)


def test_sender_killed_and_run_again_resumes(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    t = slow_transfer(tmp_path, hubs, proxies, spawn, seed=4)
    hub, proxy, sender, r, code = t.hub, t.proxy, t.sender, t.r, t.code
    s, src, target = t.s, t.src, t.target
    s.kill()
    s.wait(10)
    wait_until(lambda: relay_states(sender) == ["waiting"], 20, "the sender detached")
    assert r.poll() is None, "the receiver waits for the sender to come back"
    proxy.set_rate(None)

    s2 = spawn(sender, "send", "--code", code, str(src), "--json")
    rc_r, done_r, err_r = finish(r, 60)
    rc_s, done_s, err_s = finish(s2, 30)
    assert rc_r == 0, err_r + hub.log()[-3000:]
    assert rc_s == 0, err_s
    print(f"sender SIGKILL: the receiver resumed from {done_r['resumed']}")
    assert done_r["resumed"] > 0
    assert done_s["resumed"] == done_r["resumed"]
    assert same_bytes(src, target)


# --- SDK helpers ---------------------------------------------------------------------


@pytest.fixture
def relay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST_RELAY.items():
        monkeypatch.setenv(k, v)


# --- 4. a slow receiver: the hub's memory stays bounded ------------------------------


@pytest.mark.parametrize("slow", ["consumer", "link"])
async def test_slow_receiver_keeps_hub_memory_bounded(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    relay_env: None,
    slow: str,
) -> None:
    """64 MiB in 1 MiB messages to a receiver that takes them slowly: the
    application sleeps between recv() calls ("consumer"), or in addition its
    network is slow ("link", 16 MiB/s through a proxy, which fills the hub's
    queue towards it and must make the hub Pause the sender)."""
    hub = hubs()
    proxy = proxies(hub, rate=16 * MiB) if slow == "link" else None
    admin, bob = accounts(tmp_path, hub)
    if proxy is not None:
        bob.login(proxy.url, user="bob", password=BOB_PASSWORD)
    assert hub.proc is not None
    pid = hub.proc.pid
    count = 64
    body = os.urandom(MiB - 4)

    async with sdk(admin) as a, sdk(bob) as b:
        out, inc = await code_pair(a, b)
        pauses: list[bool] = []
        dispatch = a._dispatch

        async def spy(msg: m.AnyMessage, payload: bytes) -> None:
            if isinstance(msg, m.Pause | m.Resume) and msg.cid == out.cid:
                pauses.append(isinstance(msg, m.Pause))
            await dispatch(msg, payload)

        a._dispatch = spy  # type: ignore[method-assign]
        baseline = rss(pid)
        peak = baseline
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss(pid))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)

        async def send_all() -> None:
            for i in range(count):
                await out.send(struct.pack(">I", i) + body)
            await out.shutdown()
            await out.flush(60)

        got: list[int] = []

        async def receive_all() -> None:
            while data := await inc.recv():
                got.append(struct.unpack_from(">I", data)[0])
                assert data[4:] == body
                await asyncio.sleep(0.08 if slow == "consumer" else 0.02)  # a slow application

        started = time.monotonic()
        sampler = asyncio.create_task(sample())
        try:
            await asyncio.wait_for(asyncio.gather(send_all(), receive_all()), 25)
        finally:
            stop.set()
            await sampler
        took = time.monotonic() - started

    grew = peak - baseline
    print(
        f"slow {slow}: {count} MiB in {took:.1f} s; hub RSS {baseline / MiB:.0f} MiB -> peak "
        f"{peak / MiB:.0f} MiB (+{grew / MiB:.1f}); Pause/Resume seen: {pauses.count(True)}/"
        f"{pauses.count(False)}"
    )
    assert got == list(range(count))
    # The hub holds at most its window per direction (4 MiB, a little more
    # in flight); the end-to-end window caps what the sender has out at
    # 16 MiB. Measured: +13 MiB. Holding the whole transfer would be +64.
    assert grew < 32 * MiB
    if slow == "link":
        # The hub's queue towards the receiver filled: it told the sender to
        # pause, and to resume once it had drained. (With only a slow
        # application the SDK's reader takes whatever arrives, so the hub
        # may or may not fill up: not asserted.)
        assert any(pauses), "the hub never paused the sender"
        assert pauses[-1] is False, "the last Pause was never followed by Resume"


# --- 5. tampered records and garbage handshakes ------------------------------------------


async def test_tampered_record_is_refused_and_hub_keeps_serving(
    tmp_path: Path, hubs: Callable[..., Hub], relay_env: None
) -> None:
    hub = hubs()
    admin, bob = accounts(tmp_path, hub)
    async with sdk(admin) as a, sdk(bob) as b:
        victim_out, victim_in = await code_pair(a, b, "alpha-bravo")
        other_out, other_in = await code_pair(a, b, "charlie-delta")
        await exchange(victim_out, victim_in, b"before")

        # A record sealed properly, then altered in flight (one bit).
        assert victim_out.session is not None
        seq, sealed = victim_out.session.seal(RECORD_MESSAGE + b"transfer 100 to mallory")
        tampered = bytearray(sealed)
        tampered[len(tampered) // 2] ^= 0x01
        await a.send_frame(
            m.Relay(cid=victim_out.cid, kind="d", seq=seq, len=len(tampered)), bytes(tampered)
        )
        with pytest.raises(IntegrityError, match="failed authentication"):
            await asyncio.wait_for(victim_in.recv(), 10)
        # The receiving end hung up; the sending end hears of it.
        with pytest.raises(FreightError):
            await asyncio.wait_for(victim_out.recv(), 10)

        # The other connection on the same attachments, and a new one, work.
        await exchange(other_out, other_in, b"after")
        fresh_out, fresh_in = await code_pair(a, b, "echo-foxtrot")
        await exchange(fresh_out, fresh_in, b"fresh")
    assert hub.proc is not None and hub.proc.poll() is None


def _garble_handshakes(client: RelayClient, garbage: Callable[[], bytes]) -> list[int]:
    """Make ``client`` send ``garbage()`` instead of each handshake message."""
    sent: list[int] = []
    real = client.send_frame

    async def send_frame(msg: m.Message, payload: bytes = b"") -> None:
        if isinstance(msg, m.Relay) and msg.kind == "h":
            payload = garbage()
            msg = m.Relay(cid=msg.cid, kind="h", seq=msg.seq, len=len(payload))
            sent.append(len(payload))
        await real(msg, payload)

    client.send_frame = send_frame  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize(
    ("kind", "garbage"),
    [
        ("code", lambda: b"\x00not a handshake"),
        ("code", lambda: os.urandom(65)),  # the right length, random content
        ("identity", lambda: b"\xff" * 7),
    ],
    ids=["code-short", "code-random65", "identity-short"],
)
async def test_garbage_handshake_is_a_protocol_error_not_a_hang(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    relay_env: None,
    kind: str,
    garbage: Callable[[], bytes],
) -> None:
    hub = hubs()
    admin, bob = accounts(tmp_path, hub)
    async with sdk(admin) as honest, sdk(bob) as evil:
        sent = _garble_handshakes(evil, garbage)
        if kind == "code":
            offer = await honest.offer("golf-hotel")
            dial = asyncio.create_task(evil.claim(offer.code, timeout=20))
            accepted = await asyncio.wait_for(offer.accept(), 20)
        else:
            listener = await honest.listen("shell")
            dial = asyncio.create_task(evil.connect("admin", "shell", timeout=20))
            accepted = await asyncio.wait_for(listener.accept(), 20)
        try:
            with pytest.raises(ProtocolError) as caught:
                await accepted.wait_established(10)  # TimeoutError would be the hang
            print(f"{kind}: {type(caught.value).__name__}: {caught.value.message}")
            assert caught.value.message
            assert sent, "the garbage really went out"
            # The misbehaving end is told too, rather than waiting for ever.
            with pytest.raises(FreightError):
                await asyncio.wait_for(dial, 15)
        finally:
            dial.cancel()
            with contextlib.suppress(BaseException):
                await dial

    # The hub is unharmed: a fresh pair of honest clients connects.
    async with sdk(admin) as a, sdk(bob) as b:
        out, inc = await code_pair(a, b, "india-juliet")
        await exchange(out, inc, b"after garbage")


# --- 6. the hub never sees plaintext -----------------------------------------------------


def _marker_file(path: Path, size: int) -> Path:
    # The marker at every offset modulo its length would be too easy to hit
    # by accident elsewhere; whole repetitions are what a leak would show.
    reps = size // len(MARKER)
    path.write_bytes(MARKER * reps)
    return path


def _files_with(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and needle in p.read_bytes():
            hits.append(p)
    return hits


def test_cli_transfer_shows_no_plaintext_on_the_wire_or_at_the_hub(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    hub = hubs()
    proxy = proxies(hub, record=True)
    sender, receiver = accounts(tmp_path, hub, proxy)
    size = 4 * MiB
    src = _marker_file(tmp_path / "marked.bin", size)
    dest = tmp_path / "dest"
    s, r, _ = start_transfer(spawn, sender, receiver, src, dest)
    rc_r, _, err_r = finish(r, 60)
    rc_s, _, err_s = finish(s, 30)
    assert rc_r == 0, err_r
    assert rc_s == 0, err_s
    assert same_bytes(src, dest / "marked.bin")

    streams = proxy.snapshot()
    up = sum(len(b) for u, b in streams if u)
    down = sum(len(b) for u, b in streams if not u)
    # The file went up from the sender and down to the receiver, in full.
    assert up >= len(src.read_bytes()) and down >= src.stat().st_size
    leaks = [(u, len(b)) for u, b in streams if MARKER in b]
    assert leaks == [], "the marker crossed the wire in the clear"

    hub.stop()  # everything it would write is written
    assert _files_with(hub.data, MARKER) == []
    assert MARKER.decode() not in hub.log()
    assert MARKER.decode()[:12] not in hub.log()


async def test_sdk_relay_payloads_never_carry_plaintext(
    tmp_path: Path, hubs: Callable[..., Hub], relay_env: None
) -> None:
    """What each end hands the hub (every frame, payloads included) is
    sealed: the marker is in what the applications exchange, never in what
    the hub is given."""
    hub = hubs()
    admin, bob = accounts(tmp_path, hub)
    frames: list[tuple[m.Message, bytes]] = []

    def record(client: RelayClient) -> None:
        real = client.send_frame

        async def send_frame(msg: m.Message, payload: bytes = b"") -> None:
            frames.append((msg, payload))
            await real(msg, payload)

        client.send_frame = send_frame  # type: ignore[method-assign]

    message = MARKER * 40_000  # about 1 MiB
    async with sdk(admin) as a, sdk(bob) as b:
        record(a)
        record(b)
        out, inc = await code_pair(a, b, "kilo-lima")
        for i in range(8):
            await out.send(message + bytes([i]))
        await inc.send(b"reply " + MARKER)
        await out.shutdown()
        for i in range(8):
            assert await asyncio.wait_for(inc.recv(), 20) == message + bytes([i])
        assert await asyncio.wait_for(inc.recv(), 20) == b""
        assert await asyncio.wait_for(out.recv(), 20) == b"reply " + MARKER
        await inc.close()
        await out.close()

    data = [p for msg, p in frames if isinstance(msg, m.Relay) and msg.kind == "d"]
    assert len(data) >= 9, f"the records were not seen: {[f for f, _ in frames][:5]}"
    assert sum(len(p) for p in data) >= 8 * len(message)
    assert [f for f, p in frames if MARKER in p or MARKER.decode() in repr(f)] == []
    hub.stop()
    assert _files_with(hub.data, MARKER) == []


async def test_handshake_records_never_cross_a_lane_in_the_clear(
    tmp_path: Path,
    hubs: Callable[..., Hub],
    proxies: Callable[..., ShapedProxy],
    relay_env: None,
) -> None:
    """Identity keys, SPAKE2 and X25519 messages travel as relay records of
    kind h; on a lane (a data connection) they are sealed per hop like any
    other payload, so the bytes on the wire never show them."""
    hub = hubs()
    proxy = proxies(hub, record=True)
    admin, bob = accounts(tmp_path, hub, proxy)
    sent: list[bytes] = []

    def record(client: RelayClient) -> None:
        real = client.send_frame

        async def send_frame(msg: m.Message, payload: bytes = b"") -> None:
            if isinstance(msg, m.Relay) and msg.kind == "h":
                sent.append(payload)
            await real(msg, payload)

        client.send_frame = send_frame  # type: ignore[method-assign]

    async with sdk(admin) as a, sdk(bob) as b:
        assert a.lane is not None and b.lane is not None, "no lane: nothing to check"
        record(a)
        record(b)
        out, inc = await code_pair(a, b, "kilo-lima-mike")
        await exchange(out, inc, b"code")
        listener = await b.listen("lane-check")
        dial = asyncio.create_task(a.connect("bob", "lane-check", timeout=20))
        accepted = await asyncio.wait_for(listener.accept(), 20)
        await accepted.wait_established(20)
        await exchange(await dial, accepted, b"identity")
        identities = [public_of(a.identity), public_of(b.identity)]

    # Code: two SPAKE2 messages and two confirmations; identity: three messages.
    assert sorted(len(p) for p in sent) == [32, 32, 64, 64, 65, 65, 128]
    secrets_seen = [*sent, *identities]
    wire = b"".join(data for _, data in proxy.snapshot())
    assert len(wire) > 10_000
    leaks = [p.hex()[:16] for p in secrets_seen if p in wire or p[:16] in wire]
    assert leaks == [], "handshake material crossed the wire in the clear"


async def test_a_peer_ignoring_the_window_is_cut_off_and_the_victim_stays_bounded(
    tmp_path: Path, hubs: Callable[..., Hub], relay_env: None
) -> None:
    """Anyone may dial a listener (an agent's file manager, say). A peer that
    sends without waiting for acknowledgements to a listener whose
    application is not reading: the listener ends the connection
    (flow_violation) once the window it granted is full, and never holds
    more than that. The listener's client reads its network promptly (each
    record is sent once the previous one arrived), so the hub's queue stays
    short and the hub, whose own memory is safe, has no reason to step in."""
    hub = hubs()
    admin, bob = accounts(tmp_path, hub)
    held: list[int] = []
    async with sdk(admin) as hostile, sdk(bob) as victim:
        listener = await victim.listen("inbox")
        dial = asyncio.create_task(hostile.connect("bob", "inbox", timeout=20))
        accepted = await asyncio.wait_for(listener.accept(), 20)
        await accepted.wait_established(20)
        out = await dial
        assert out.session is not None
        out.session.can_send = lambda size: True  # type: ignore[method-assign]
        real = accepted.on_relay

        arrived = asyncio.Event()

        async def measure(msg: m.Relay, payload: bytes) -> None:
            await real(msg, payload)
            if msg.kind == "d":
                held.append(sum(len(x) for x in accepted.inbox))
                arrived.set()

        accepted.on_relay = measure  # type: ignore[method-assign]
        message = os.urandom(MiB)
        with contextlib.suppress(FreightError):
            for _ in range(64):
                arrived.clear()
                await out.send(message)
                await asyncio.wait_for(arrived.wait(), 20)
                if accepted.closed:
                    break
        assert accepted.closed, f"the listener took it all: {max(held) / MiB:.0f} MiB held"
        assert isinstance(accepted.error, FlowViolation), accepted.error
        with pytest.raises(FlowViolation):
            await accepted.recv()
        with pytest.raises(FreightError):  # the hostile end is told it was cut off
            await asyncio.wait_for(out.recv(), 20)
    print(f"victim held at most {max(held) / MiB:.1f} MiB before cutting the peer off")
    assert 15 * MiB <= max(held) <= DEFAULT_WINDOW
