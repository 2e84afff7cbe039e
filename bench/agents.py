"""Benchmarks of agents on loopback, against the targets of the agents issue.
Run both through bench/agents.sh:

    bash bench/agents.sh [--files 10000] [--agents 5000] [--rounds 3] [--markdown FILE]

or one piece at a time (project venv):

    .venv/bin/python bench/agents.py tree [--files 10000] [--file-size 4K] [--dirs 100] [--rounds 3]
    .venv/bin/python bench/agents.py idle [--agents 5000] [--workers 4] [--idle 60]
                                          [--poll-policies 30] [--py-spy DIR]
    .venv/bin/python bench/agents.py report --results DIR [--markdown FILE]

tree  A tree of --files random files of --file-size (default 10,000 x 4 KiB)
      in --dirs folders, copied from the machine it lives on to a fresh
      destination folder, three ways, alternately in --rounds rounds (every
      other round in reverse order):
        freight  `freight cp -r bench-agent:/…/tree DEST/` as the admin, from
                 a real agent (`freight agents token`, `freight agent enroll`,
                 `freight agent run`) attached to a hub on 127.0.0.1;
        scp      `scp -r USER@127.0.0.1:/…/tree DEST/` and
        rsync    `rsync -a -e ssh USER@127.0.0.1:/…/tree DEST/`, both through a
                 private sshd (bench/peers.py SshPeer: own port, host key and
                 authorized key; OpenSSH's default cipher).
      The source is read before every copy (page cache warm for all); every
      copy is checked (file count, bytes and a BLAKE3 over every path and
      content) and deleted. Time = wall clock of the client command (the hub,
      the agent and sshd already running); CPU = the client command plus the
      server side (hub + agent, or sshd and its children) from /proc.
idle  One hub, --agents lightweight agents enrolled through the REST API
      exactly as `freight agent enroll` / `agent run` do it (one-time token
      from the admin, POST /v1/agents/enroll with an Ed25519 key, challenge,
      login signing the challenge and the certificate fingerprint), then each
      attached through `freight.client.session.open_channel` (TLS WebSocket
      to /v1/control, Hello/Welcome, Listen for the file manager's app as the
      daemon does; no lane) from --workers processes. aiohttp's heartbeats
      run both ways (every 25 s) and each client reads its socket, so pings
      are answered. Measured: the time to attach all of them (go → the last
      Listen acknowledged), the hub's VmRSS/VmHWM (/proc) with all attached,
      and the hub's CPU (utime+stime from /proc/PID/stat) over --idle
      seconds of idleness after --settle seconds. Every agent must still be
      attached at the end (client side and GET /v1/agents). A failed attach
      is tried again with the daemon's back-off (8 attempts at most). With
      --poll-policies S each agent also does what an idle `freight agent
      run` does besides (freight/agent/offers.py): GET /v1/collect/policies
      every S seconds (30 in the daemon) on its own session.

Every subcommand prints tables, writes --out JSON (for `report`), and appends
markdown with --markdown. Exit status 1 if a target is missed or a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3
import peers
from peers import FREIGHT, PeerError
from relay import (
    TARGET_HEADERS,
    EventChild,
    Report,
    Sampler,
    Terminated,
    _on_signal,
    append_section,
    kill_group,
    proc_status,
    tail,
    this_command,
    verdict,
)

from bench import fs_type, human, markdown_table, parse_size

REPO_DIR = peers.REPO_DIR
DEFAULT_TMP = REPO_DIR / ".bench-tmp" / "agents"  # gitignored
MiB = 1 << 20
GiB = 1 << 30
AGENT = "bench-agent"
TREE_HEADERS = ["test", "seconds", "seconds range", "files/s", "MB/s", "CPU s (all processes)", "note"]  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[agents] {msg}", file=sys.stderr, flush=True)


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def nearest_rank(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else 0.0


def proc_ticks(pid: int) -> int | None:
    """utime + stime of one process (not its children), in clock ticks."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def proc_io(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = int(value)
    return out


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def freight_cli(cfg: Path, *args: str, timeout: float = 120) -> str:
    res = subprocess.run(
        [str(FREIGHT), *args],
        capture_output=True,
        env=peers._freight_env(cfg),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode(errors="replace").strip()[-800:]
        raise PeerError(f"freight {' '.join(args[:2])} exited {res.returncode}: {err}")
    return res.stdout.decode(errors="replace")


# ---------------------------------------------------------------- (1) the tree


def make_tree(base: Path, files: int, size: int, dirs: int) -> Path:
    """``base/tree/dNNN/fNNNNN.bin``, random content; kept between runs
    (``base/.complete`` marks a finished one)."""
    tree = base / "tree"
    marker = base / ".complete"
    want = f"{files} {size} {dirs}\n"
    if marker.exists() and marker.read_text() == want:
        return tree
    shutil.rmtree(base, ignore_errors=True)
    tree.mkdir(parents=True)
    per_dir = -(-files // dirs)
    log(f"writing {files} files of {human(size)} into {dirs} folders under {tree}")
    for i in range(files):
        d = tree / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(size))
    os.sync()
    marker.write_text(want)
    return tree


def tree_digest(root: Path) -> tuple[int, int, str]:
    """(files, bytes, BLAKE3 over every relative path and its content's
    BLAKE3, in sorted order). Reading everything also warms the page cache."""
    h = blake3.blake3()
    count = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            data = (Path(dirpath) / name).read_bytes()
            h.update(f"{rel}/{name}\0{blake3.blake3(data).hexdigest()}\n".encode())
            count += 1
            total += len(data)
    return count, total, h.hexdigest()


class TreeAgent:
    """A hub (admin logged in) and one real agent serving ``root``."""

    def __init__(self, work: Path, root: Path) -> None:
        self.hub = peers.FreightHub(work)
        self.root = root
        self.cfg = self.hub.dir / "agent"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TreeAgent:
        hub = self.hub.start()
        token = json.loads(freight_cli(hub.cfg, "agents", "token", "--name", AGENT, "--json"))
        self.cfg.mkdir()
        freight_cli(
            self.cfg, "agent", "enroll", hub.url, token["token"], "--root", str(self.root),
            "--fingerprint", peers.freight_fingerprint(hub.data),
        )  # fmt: skip
        self.proc = peers.start_server(
            [str(FREIGHT), "agent", "run"], hub.dir / "agent.log", env=peers._freight_env(self.cfg)
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerError(f"freight agent run exited:\n{tail(hub.dir / 'agent.log')}")
            rows = json.loads(freight_cli(hub.cfg, "agents", "ls", "--json"))
            if any(r["name"] == AGENT and r["online"] for r in rows):
                return self
            time.sleep(0.3)
        raise PeerError(f"the agent is not online after 60 s:\n{tail(hub.dir / 'agent.log')}")

    def stop(self) -> None:
        peers.stop_server(self.proc)
        self.hub.stop()

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None and self.hub.proc is not None
        return [self.hub.proc.pid, self.proc.pid]


def _timed(cmd: list[str], servers: list[int], env: dict[str, str] | None = None,
           forking: bool = False, timeout: float = 3600) -> tuple[float, float, str]:  # fmt: skip
    """(wall seconds, CPU of the command + the server trees, stdout)."""
    before = sum(peers.tree_cpu(p) for p in servers)
    secs, cpu, out = peers.run_client(cmd, env=env, timeout=timeout)
    if forking:
        for p in servers:
            peers.wait_no_children(p)
    return secs, cpu + sum(peers.tree_cpu(p) for p in servers) - before, out


def tree_cmd(args: argparse.Namespace) -> Report:
    push = args.direction == "push"
    pull = args.direction == "pull"
    size = parse_size(args.file_size)
    base = args.tmp / f"tree-{args.files}x{size}-{args.dirs}"
    src = make_tree(base, args.files, size, args.dirs)
    want = tree_digest(src)
    log(f"source: {want[0]} files, {want[1]} bytes, digest {want[2][:16]}…")
    work = Path(tempfile.mkdtemp(prefix="tree-", dir=args.tmp))
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    times: dict[str, list[float]] = {t: [] for t in tools}
    cpus: dict[str, list[float]] = {t: [] for t in tools}
    inner: list[float] = []
    versions: dict[str, str] = {}
    try:
        with peers.running(TreeAgent(work, base)) as agent, \
                peers.running(peers.SshPeer(work)) as ssh:  # fmt: skip
            log(f"hub pid {agent.pids[0]} on {agent.hub.url}, agent pid {agent.pids[1]}; "
                f"sshd pid {ssh.proc.pid if ssh.proc else '?'} on port {ssh.port}")  # fmt: skip
            ssh_cmd = " ".join(["ssh", "-p", str(ssh.port), *ssh.ssh_opts()])
            commands = {
                "freight": [str(FREIGHT), "cp", "-r", f"{AGENT}:{src}", "DEST/", "--json", "--quiet"],
                "scp": ["scp", "-r", "-q", *ssh.ssh_opts(), "-P", str(ssh.port), ssh.remote(src), "DEST/"],
                "rsync": ["rsync", "-a", "-e", ssh_cmd, ssh.remote(src), "DEST/"],
            }  # fmt: skip
            if pull:  # the tree on the hub (pushed once, untimed), pulled back each round
                freight_cli(agent.hub.cfg, "push", str(src), "--quiet")
                commands["freight"] = [str(FREIGHT), "pull", f"{src.name}/", "DEST/", "--json", "--quiet"]  # fmt: skip
            if push:  # the other way: from here to the hub, or to the sshd
                commands = {
                    "freight": [str(FREIGHT), "push", str(src), "--as", "AS", "--json", "--quiet"],
                    "scp": ["scp", "-r", "-q", *ssh.ssh_opts(), "-P", str(ssh.port), str(src), "RDEST/"],
                    "rsync": ["rsync", "-a", "-e", ssh_cmd, str(src), "RDEST/"],
                }  # fmt: skip
            for rnd in range(args.rounds):
                order = tools if rnd % 2 == 0 else list(reversed(tools))
                for tool in order:
                    dest = work / f"dest-{tool}-{rnd}"
                    dest.mkdir()
                    tree_digest(src)  # page cache warm, the same for every tool
                    # No dirty pages left by the tool before (or the rmtree of
                    # its copy): a tool that syncs must not flush another's.
                    os.sync()
                    fill = {"DEST/": f"{dest}/", "RDEST/": ssh.remote(dest) + "/", "AS": f"r{rnd}"}
                    cmd = [fill.get(c, c) for c in commands[tool]]
                    if tool == "freight":
                        if args.py_spy is not None:
                            # The copying command under py-spy too (raw, 200 Hz).
                            out_file = args.py_spy / f"cp-{rnd + 1}.txt"
                            cmd = [str(peers.VENV / "bin" / "py-spy"), "record", "-r", "200",
                                   "-f", "raw", "-o", str(out_file), "--", *cmd]  # fmt: skip
                        with spy(args.py_spy, f"agent-{rnd + 1}", agent.pids[1]), \
                                spy(args.py_spy, f"hub-{rnd + 1}", agent.pids[0]):  # fmt: skip
                            secs, cpu, out = _timed(
                                cmd, agent.pids, env=peers._freight_env(agent.hub.cfg)
                            )
                        if push:  # the hub's copy of the tree, as the hub stored it
                            (stored,) = (agent.hub.data / "files").glob(f"*/r{rnd}")
                            stored.rename(dest / src.name)
                        elif not pull:
                            # The last JSON line: under --py-spy, py-spy's own lines follow it.
                            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
                            summary = json.loads(lines[-1])
                            inner.append(float(summary["seconds"]))
                    else:
                        assert ssh.proc is not None
                        secs, cpu, out = _timed(cmd, [ssh.proc.pid], forking=True)
                    got = tree_digest(dest / src.name)
                    extra = sorted(p.name for p in dest.iterdir() if p.name != src.name)
                    if got != want or extra:
                        raise PeerError(f"{tool}: the copy differs: {got} (+{extra}) vs {want}")
                    # Kept until the end: deleting 10,000 files now would
                    # have the filesystem (mounted with discard, here) busy
                    # freeing them during the next tool's run.
                    times[tool].append(secs)
                    cpus[tool].append(cpu)
                    log(f"round {rnd + 1}/{args.rounds}: {tool} {secs:.2f} s "
                        f"({want[0] / secs:.0f} files/s), CPU {cpu:.2f} s; copy verified")  # fmt: skip
            versions = {
                "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
                "rsync": subprocess.run(["rsync", "--version"], capture_output=True, text=True)
                .stdout.splitlines()[0].strip(),
            }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    files, nbytes = want[0], want[1]
    med = {t: statistics.median(v) for t, v in times.items()}
    what = {
        "push": "`freight push DIR` to the hub",
        "pull": "`freight pull DIR/` from the hub",
    }.get(args.direction, "`freight cp -r` from an agent")
    rep = Report(
        f"{what} vs `scp -r` and `rsync -a`: {files:,} files of "
        f"{human(size)} in {args.dirs} folders, {args.rounds} round(s)",
        TREE_HEADERS,
    )
    notes = {
        "freight": f"`freight cp -r {AGENT}:/…/tree DEST/` (admin; agent and hub on 127.0.0.1, "
        f"e2e encrypted, relayed by the hub); its own `--json` seconds "
        f"{statistics.median(inner) if inner else 0:.2f} s",
        "scp": "`scp -r` from a private sshd on 127.0.0.1 (SFTP protocol, the default of "
        "OpenSSH 9)",
        "rsync": "`rsync -a -e ssh` from the same sshd",
    }
    if pull:
        notes["freight"] = (
            "`freight pull tree/ DEST/` (admin; hub on 127.0.0.1; the tree pushed once before, "
            "untimed; every file checked against the hub's BLAKE3 and made durable before it "
            "takes its place)"
        )
    if push:
        notes = {
            "freight": "`freight push DIR --as rN` (admin; hub on 127.0.0.1, each file durable "
            "and digest-checked before it is acknowledged; the hub's stored copy is checked)",
            "scp": "`scp -r DIR` to a private sshd on 127.0.0.1 (SFTP protocol)",
            "rsync": "`rsync -a -e ssh DIR` to the same sshd",
        }
    for t in tools:
        rep.rows.append(
            [
                t,
                f"{med[t]:.2f}",
                f"{min(times[t]):.2f}-{max(times[t]):.2f}",
                f"{files / med[t]:.0f}",
                f"{nbytes / med[t] / 1e6:.1f}",
                f"{statistics.median(cpus[t]):.2f}",
                f"n={len(times[t])}; {notes[t]}",
            ]
        )
    rep.notes.append(
        "Time = wall clock of the client command, median over rounds (every other round in "
        "reverse order); a fresh, empty destination each time, the source read and sync(2) "
        "called just before (page cache warm, nothing left dirty by the tool before). Every copy "
        "is verified (file count, bytes, BLAKE3 of every path and content) and deleted after "
        "the last round. CPU = client command + server side (hub + agent "
        "for freight; sshd and its per-connection children for scp/rsync), from /proc."
    )
    rep.notes.append(
        f"Scratch filesystem: {fs_type(args.tmp)}; {versions.get('openssh', '?')}; "
        f"{versions.get('rsync', '?')}."
    )
    factors = (
        (("scp", 2.0), ("rsync", 1.0))
        if args.direction == "get"
        else (("scp", 1.0), ("rsync", 1.0))
    )
    for peer, factor in factors:
        if "freight" not in med or peer not in med:
            continue
        ratio = med[peer] / med["freight"]
        ok = ratio >= factor
        rep.failed |= not ok
        rep.targets.append(
            [
                f"{what}, "
                f"{files:,} x {human(size)} files: "
                f"≥ {factor:g}x `{'scp -r' if peer == 'scp' else 'rsync -a'}` (ssh, loopback)",
                f"{med['freight']:.2f} s vs {med[peer]:.2f} s "
                f"({files / med['freight']:.0f} vs {files / med[peer]:.0f} files/s)",
                f"**{ratio:.2f}x**",
                verdict(ok),
            ]
        )
    rep.data = {"files": files, "bytes": nbytes, "size": size, "dirs": args.dirs,
                "rounds": args.rounds, "seconds": times, "cpu": cpus, "inner": inner}  # fmt: skip
    return rep


# ------------------------------------------------------------ (2) idle agents


def _emit(event: str, **kw: Any) -> None:
    print(json.dumps({"event": event, **kw}), flush=True)


async def _worker(a: argparse.Namespace) -> None:
    """Enrol and log in ``a.count`` agents, attach them on "attach", report
    on "status", leave on "stop" (lines on stdin; JSON events on stdout)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from freight import __version__
    from freight.agent.files import APP
    from freight.client.config import ClientConfig
    from freight.client.session import HubSession, open_channel
    from freight.hub.agents import login_message
    from freight.protocol import messages as m
    from freight.transport.channel import ChannelClosed

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    pending = b""

    def on_stdin() -> None:  # unbuffered: every line reaches the queue at once
        nonlocal pending
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:  # the driver is gone: leave
            loop.remove_reader(sys.stdin.fileno())
            lines.put_nowait("stop")
            return
        *done, pending = (pending + data).split(b"\n")
        for line in done:
            lines.put_nowait(line.decode().strip())

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    admin = HubSession.from_config(ClientConfig(Path(a.admin_config)))
    url, fingerprint = str(admin.url), admin.fingerprint
    anon = HubSession(url, fingerprint=fingerprint)
    names = [f"{a.prefix}{i:05d}" for i in range(a.count)]
    tokens: dict[str, str] = {}
    errors: list[str] = []

    async def enrol(name: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                t = await admin.request("POST", "/v1/agents/tokens", {"name": name, "ttl": 3600})
                key = Ed25519PrivateKey.generate()
                pub = key.public_key().public_bytes_raw().hex()
                await anon.request("POST", "/v1/agents/enroll", {"token": t["token"], "key": pub})
                nonce = (await anon.request("POST", "/v1/agents/challenge", {"name": name}))[
                    "challenge"
                ]
                sig = key.sign(login_message(name, nonce, fingerprint)).hex()
                body = await anon.request(
                    "POST", "/v1/agents/login", {"name": name, "challenge": nonce, "signature": sig}
                )
                tokens[name] = str(body["token"])
            except Exception as exc:
                errors.append(f"{name}: {exc!r}")

    t0 = time.perf_counter()
    gate = asyncio.Semaphore(a.concurrency)
    await asyncio.gather(*(enrol(n, gate) for n in names))
    await admin.aclose()
    await anon.aclose()
    _emit("enrolled", n=len(tokens), failed=len(errors), errors=errors[:5],
          seconds=time.perf_counter() - t0)  # fmt: skip

    if await lines.get() != "attach":
        _emit("stopped")
        return
    held: dict[str, tuple[Any, Any]] = {}  # name -> (session, channel)
    latencies: list[float] = []
    frames = 0
    drops: list[str] = []
    readers: set[asyncio.Task[None]] = set()
    polls = poll_errors = 0

    async def poll(session: Any) -> None:
        """What an idle `freight agent run` does beside its attachment: the
        collection offerer asks for its policies every 3600 s (no policy: no
        scan), over REST on the agent's own session."""
        nonlocal polls, poll_errors
        await asyncio.sleep(random.uniform(0, a.poll_policies))
        while True:
            try:
                await session.request("GET", "/v1/collect/policies")
                polls += 1
            except Exception:
                poll_errors += 1
            await asyncio.sleep(a.poll_policies)

    async def read(name: str, chan: Any) -> None:
        nonlocal frames
        try:
            while True:
                await chan.recv()  # aiohttp answers the hub's pings in here
                frames += 1
        except ChannelClosed as exc:
            drops.append(f"{name} at {time.time():.1f}: {exc}")
        except Exception as exc:
            drops.append(f"{name} at {time.time():.1f}: {exc!r}")

    retries: list[str] = []

    async def attach_once(name: str, gate: asyncio.Semaphore) -> tuple[Any, Any, float]:
        async with gate:
            t = time.perf_counter()
            session = HubSession(url, fingerprint=fingerprint, token=tokens[name])
            try:
                chan, _ = await open_channel(session, "ws", hello=f"freight-agent/{__version__}")
                rid = secrets.token_hex(8)
                await chan.send(m.Listen(rid=rid, app=APP))
                msg, _ = await asyncio.wait_for(chan.recv(), 60)
                if not (isinstance(msg, m.Done) and msg.rid == rid):
                    raise RuntimeError(f"listen answered with {msg!r}")
            except BaseException:
                await session.aclose()
                raise
            return session, chan, time.perf_counter() - t

    async def attach(name: str, gate: asyncio.Semaphore) -> None:
        """Attach; on failure try again with the agent daemon's back-off
        (random between half and all of 1, 2, 4 … 60 s), at most 8 times."""
        delay = 1.0
        for attempt in range(8):
            try:
                session, chan, took = await attach_once(name, gate)
                break
            except Exception as exc:
                retries.append(f"{name} (attempt {attempt + 1}): {exc!r}")
                await asyncio.sleep(random.uniform(0.5 * delay, delay))
                delay = min(60.0, delay * 2)
        else:
            errors.append(f"{name}: gave up after 8 attempts")
            return
        latencies.append(took)
        held[name] = (session, chan)
        readers.add(asyncio.create_task(read(name, chan)))
        if a.poll_policies > 0:
            readers.add(asyncio.create_task(poll(session)))

    errors.clear()
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(a.attach_concurrency)
    await asyncio.gather(*(attach(n, gate) for n in tokens))
    _emit("attached", n=len(held), failed=len(errors), errors=errors[:5],
          retries=len(retries), retry_detail=retries[:5],
          seconds=time.perf_counter() - t0, latencies=latencies)  # fmt: skip

    while True:
        line = await lines.get()
        if line == "status":
            alive = sum(1 for _, c in held.values() if not c.ws.closed)
            _emit("status", alive=alive, drops=len(drops), drop_detail=drops[:5], frames=frames,
                  polls=polls, poll_errors=poll_errors)  # fmt: skip
        elif line == "stop":
            break
    for task in readers:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*(c.aclose() for _, c in held.values()), return_exceptions=True)
            await asyncio.gather(*(s.aclose() for s, _ in held.values()), return_exceptions=True)
    _emit("stopped")


def worker_cmd(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_worker(args))
    except Exception as exc:
        _emit("error", error=repr(exc))
        return 1
    return 0


class Worker(EventChild):
    """An `agents.py _worker` child (a share of the simulated agents)."""

    def __init__(self, index: int, hub: peers.FreightHub, count: int, work: Path,
                 args: argparse.Namespace) -> None:  # fmt: skip
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "_worker",
            "--admin-config", str(hub.cfg), "--prefix", f"sim{index}-", "--count", str(count),
            "--concurrency", str(args.concurrency),
            "--attach-concurrency", str(args.attach_concurrency),
            "--poll-policies", str(args.poll_policies),
        ]  # fmt: skip
        super().__init__(cmd, work / f"worker-{index}.err", peers._freight_env(hub.cfg),
                         f"worker {index}")  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.say("stop")
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            kill_group(self.proc, signal.SIGKILL)


@contextlib.contextmanager
def keep_log(hub: peers.FreightHub, dest: Path) -> Any:
    """Copy the hub's log out of its folder (deleted with the hub) at the end."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            shutil.copyfile(hub.dir / "hub.log", dest)
            log(f"hub log kept in {dest}")


@contextlib.contextmanager
def spy(where: Path | None, name: str, pid: int) -> Any:
    """With --py-spy DIR: py-spy record (raw, 200 Hz) of ``pid`` for the
    duration of the block, into DIR/NAME.txt (py-spy runs on a spare core,
    so the figures measured meanwhile include its sampling overhead)."""
    if where is None:
        yield
        return
    where.mkdir(parents=True, exist_ok=True)
    exe = peers.VENV / "bin" / "py-spy"
    cmd = [str(exe), "record", "-r", "200", "-f", "raw", "--nonblocking",
           "-o", str(where / f"{name}.txt"), "-p", str(pid)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log(f"py-spy profile of {name}: {where / f'{name}.txt'}")


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
        except (ValueError, OSError):
            raise PeerError(
                f"need {need} open files, the hard limit is {hard} (ulimit -Hn)"
            ) from None
    if soft != resource.RLIM_INFINITY and soft < need:
        new = hard if hard != resource.RLIM_INFINITY else need
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


def _online_agents(cfg: Path) -> tuple[int, int]:
    rows = json.loads(freight_cli(cfg, "agents", "ls", "--json", timeout=300))
    return sum(1 for r in rows if r["online"]), len(rows)


def idle_cmd(args: argparse.Namespace) -> Report:
    n = args.agents
    limit = raise_fd_limit(n + 1024)
    workers_n = max(1, min(args.workers, n))
    shares = [n // workers_n + (1 if i < n % workers_n else 0) for i in range(workers_n)]
    work = Path(tempfile.mkdtemp(prefix="idle-", dir=args.tmp))
    poll = args.poll_policies
    what = (
        f"+ `GET /v1/collect/policies` every {poll:g} s per agent, as `freight agent run` does"
        if poll > 0
        else "heartbeats only"
    )
    rep = Report(f"One hub, {n:,} idle attached agents (WebSocket, heartbeats every 25 s; {what})",
                 ["measure", "value"])  # fmt: skip
    workers: list[Worker] = []
    d: dict[str, Any] = {"agents": n, "workers": workers_n, "idle": args.idle, "fd_limit": limit}
    try:
        # Every agent comes from 127.0.0.1 here, with a control channel and a
        # lane each: lift the per-address and global socket caps to fit.
        sockets = str(4 * n + 1000)
        caps = ["--max-connections", sockets, "--max-connections-per-address", sockets]
        hub_ = peers.FreightHub(work, caps)
        with peers.running(hub_) as hub, keep_log(hub, args.tmp / "idle-hub.log"):
            assert hub.proc is not None
            pid = hub.proc.pid
            d["rss_start"] = proc_status(pid)
            log(f"hub pid {pid} on {hub.url}; open-file limit {limit}; "
                f"{n} agents in {workers_n} worker process(es): {shares}")  # fmt: skip
            cpu0 = proc_ticks(pid) or 0
            t0 = time.perf_counter()
            workers = [Worker(i, hub, c, work, args) for i, c in enumerate(shares)]
            enrolled = [w.expect("enrolled", args.timeout) for w in workers]
            d["enrol_seconds"] = time.perf_counter() - t0
            d["enrol_cpu"] = ((proc_ticks(pid) or 0) - cpu0) / CLK_TCK
            got = sum(e["n"] for e in enrolled)
            log(f"enrolled and logged in {got}/{n} agents in {d['enrol_seconds']:.1f} s "
                f"(hub CPU {d['enrol_cpu']:.1f} s)")  # fmt: skip
            if got != n:
                raise PeerError(f"enrolment failed: {[e['errors'] for e in enrolled]}")
            time.sleep(2)
            d["rss_before"] = proc_status(pid)
            d["fds_before"] = fd_count(pid)

            cpu0 = proc_ticks(pid) or 0
            with Sampler(lambda: proc_status(pid).get("VmRSS", 0), 0.2) as rss_during, \
                    spy(args.py_spy, "hub-attach", pid):  # fmt: skip
                t0 = time.perf_counter()
                for w in workers:
                    w.say("attach")
                attached = [w.expect("attached", args.timeout) for w in workers]
                d["attach_seconds"] = time.perf_counter() - t0
            d["attach_cpu"] = ((proc_ticks(pid) or 0) - cpu0) / CLK_TCK
            d["attach_rss_peak"] = max((v for _, v in rss_during.samples), default=0)
            lat = sorted(x for e in attached for x in e["latencies"])
            d["attached"] = sum(e["n"] for e in attached)
            d["attach_p50"], d["attach_p99"], d["attach_max"] = (
                statistics.median(lat) if lat else 0, nearest_rank(lat, 0.99),
                max(lat, default=0),
            )  # fmt: skip
            d["worker_seconds"] = [e["seconds"] for e in attached]
            d["retries"] = sum(e["retries"] for e in attached)
            d["retry_detail"] = [x for e in attached for x in e["retry_detail"]][:5]
            log(f"attached {d['attached']}/{n} in {d['attach_seconds']:.1f} s (hub CPU "
                f"{d['attach_cpu']:.1f} s); per attach p50 {d['attach_p50'] * 1e3:.0f} ms, "
                f"p99 {d['attach_p99'] * 1e3:.0f} ms; {d['retries']} attempt(s) failed and "
                "were retried")  # fmt: skip
            if d["retry_detail"]:
                log(f"first failed attempts: {d['retry_detail']}")
            if d["attached"] != n:
                raise PeerError(f"attach failed: {[e['errors'] for e in attached]}")

            time.sleep(args.settle)
            d["rss_attached"] = proc_status(pid)
            d["fds_attached"] = fd_count(pid)
            log(f"hub with all attached: VmRSS {mib(d['rss_attached']['VmRSS'])}, "
                f"VmHWM {mib(d['rss_attached']['VmHWM'])}, {d['fds_attached']} fds; "
                f"idle for {args.idle:g} s")  # fmt: skip

            for w in workers:
                w.say("status")
            polls0 = sum(w.expect("status", 60)["polls"] for w in workers)
            wpids = [w.proc.pid for w in workers]
            io0 = proc_io(pid)
            c0 = proc_ticks(pid) or 0
            wc0 = sum(proc_ticks(p) or 0 for p in wpids)
            with Sampler(lambda: (proc_ticks(pid), proc_status(pid).get("VmRSS", 0)), 1.0) as s, \
                    spy(args.py_spy, "hub-idle", pid):  # fmt: skip
                t0 = time.monotonic()
                time.sleep(args.idle)
                c1 = proc_ticks(pid) or 0
                elapsed = time.monotonic() - t0
            wc1 = sum(proc_ticks(p) or 0 for p in wpids)
            io1 = proc_io(pid)
            d["idle_elapsed"] = elapsed
            d["idle_cpu_s"] = (c1 - c0) / CLK_TCK
            d["idle_cpu_pct"] = 100 * d["idle_cpu_s"] / elapsed
            d["workers_cpu_pct"] = 100 * (wc1 - wc0) / CLK_TCK / elapsed
            ticks = [(t, v[0]) for t, v in s.samples if v[0] is not None]
            per_s = [
                100 * (b[1] - a[1]) / CLK_TCK / (b[0] - a[0])
                for a, b in itertools.pairwise(ticks)
                if b[0] > a[0]
            ]
            d["idle_cpu_max_1s"] = max(per_s, default=0.0)
            d["idle_cpu_per_second"] = [round(x, 1) for x in per_s]
            d["idle_rss_max"] = max((v[1] for _, v in s.samples), default=0)
            d["io"] = {
                k: io1.get(k, 0) - io0.get(k, 0) for k in ("syscr", "syscw", "rchar", "wchar")
            }
            d["rss_end"] = proc_status(pid)
            log(f"idle {elapsed:.1f} s: hub CPU {d['idle_cpu_s']:.2f} s = "
                f"{d['idle_cpu_pct']:.2f} % of one core (max 1 s: {d['idle_cpu_max_1s']:.1f} %); "
                f"read/write syscalls {d['io']['syscr']}/{d['io']['syscw']}")  # fmt: skip

            for w in workers:
                w.say("status")
            status = [w.expect("status", 60) for w in workers]
            d["alive"] = sum(x["alive"] for x in status)
            d["drops"] = sum(x["drops"] for x in status)
            d["drop_detail"] = [y for x in status for y in x["drop_detail"]][:5]
            d["frames"] = sum(x["frames"] for x in status)
            d["polls"] = sum(x["polls"] for x in status) - polls0
            d["poll_errors"] = sum(x["poll_errors"] for x in status)
            d["online"], d["enrolled_rows"] = _online_agents(hub.cfg)
            log(f"after idle: {d['alive']} attached client-side, {d['drops']} dropped, "
                f"{d['online']}/{d['enrolled_rows']} online in `freight agents ls`")  # fmt: skip
            for w in workers:
                w.stop()
            workers = []
    finally:
        for w in workers:
            kill_group(w.proc, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    rss, hwm = d["rss_attached"]["VmRSS"], d["rss_attached"]["VmHWM"]
    rss_target = parse_size(args.rss_target)
    all_there = d["alive"] == n and d["drops"] == 0 and d["online"] == n
    rep.rows = [
        ["agents enrolled + logged in (REST: token, enroll, challenge, login)",
         f"{n:,} in {d['enrol_seconds']:.1f} s ({n / d['enrol_seconds']:.0f}/s); hub CPU "
         f"{d['enrol_cpu']:.1f} s"],
        ["attach all (TLS WebSocket, Hello/Welcome, Listen acknowledged)",
         f"{d['attached']:,}/{n:,} in **{d['attach_seconds']:.1f} s** "
         f"({n / d['attach_seconds']:.0f}/s), {args.attach_concurrency} at a time per worker"],
        ["one attach (connect → Listen acknowledged): median / p99 / max", f"{d['attach_p50'] * 1e3:.0f} / "
         f"{d['attach_p99'] * 1e3:.0f} / {d['attach_max'] * 1e3:.0f} ms"],
        ["attach attempts that failed and were retried (daemon's back-off)",
         f"{d['retries']}" + (f": e.g. {d['retry_detail'][0]}" if d["retry_detail"] else "")],
        ["hub CPU while attaching", f"{d['attach_cpu']:.1f} s "
         f"({d['attach_cpu'] / n * 1e3:.2f} ms per agent)"],
        ["hub VmRSS / VmHWM at start-up (after admin login)",
         f"{mib(d['rss_start'].get('VmRSS', 0))} / {mib(d['rss_start'].get('VmHWM', 0))}"],
        ["hub VmRSS / VmHWM after enrolment, before attaching",
         f"{mib(d['rss_before']['VmRSS'])} / {mib(d['rss_before']['VmHWM'])}"],
        ["hub peak VmRSS while attaching (every 0.2 s)", mib(d["attach_rss_peak"])],
        [f"hub VmRSS / VmHWM, all attached, {args.settle:g} s after",
         f"**{mib(rss)}** / {mib(hwm)} ({(rss - d['rss_before']['VmRSS']) / n / 1024:.1f} KiB "
         "per agent over the pre-attach figure)"],
        ["hub open file descriptors before / all attached", f"{d['fds_before']} / {d['fds_attached']}"],
        [f"hub CPU over {d['idle_elapsed']:.1f} s idle (utime+stime)",
         f"{d['idle_cpu_s']:.2f} s = **{d['idle_cpu_pct']:.2f} %** of one core "
         f"(busiest 1 s: {d['idle_cpu_max_1s']:.1f} %)"],
        ["hub read / write syscalls during the idle window",
         f"{d['io']['syscr']:,} / {d['io']['syscw']:,} (heartbeats: ~{n * args.idle / 25:,.0f} "
         "ping/pong exchanges expected: aiohttp restarts each side's 25 s timer on every frame "
         "it receives, so on a quiet connection one side pings and the other answers)"],
        ["hub peak VmRSS during idle, VmRSS / VmHWM at the end",
         f"{mib(d['idle_rss_max'])}, {mib(d['rss_end'].get('VmRSS', 0))} / "
         f"{mib(d['rss_end'].get('VmHWM', 0))}"],
        ["client processes' CPU during idle (all workers)", f"{d['workers_cpu_pct']:.1f} % of one core"],
        ["still attached after idle: client side / dropped / online in `agents ls`",
         f"{d['alive']:,} / {d['drops']} / {d['online']:,} of {d['enrolled_rows']:,}"],
    ]  # fmt: skip
    if poll > 0:
        rep.rows.insert(-1, [
            f"`GET /v1/collect/policies` answered during the idle window (every {poll:g} s per "
            "agent)", f"{d['polls']:,} ({d['polls'] / d['idle_elapsed']:.0f}/s); "
            f"{d['poll_errors']} failed since attaching"])  # fmt: skip
    if d["drop_detail"]:
        rep.notes.append(f"Drops: {d['drop_detail']}")
    rep.notes.append(
        f"{workers_n} client process(es) ({', '.join(map(str, shares))} agents), each agent its "
        'own `HubSession` (own token, pinned certificate) and `open_channel(session, "ws", '
        'hello="freight-agent/…")`, then `Listen(app="freight.files")` as `freight agent run` '
        "does; no lane (data connection), no identity-key upload. Each channel is read "
        "continuously, so aiohttp answers the hub's pings (and sends its own every 25 s). "
        f"Idle window starts {args.settle:g} s after the last attach; open-file limit {limit}."
    )
    if poll > 0:
        rep.notes.append(
            f'Policy poll: each agent\'s own `HubSession.request("GET", '
            f'"/v1/collect/policies")` every {poll:g} s (first one at a random point of the '
            "first period), as `Offerer.run` in freight/agent/offers.py does when no policy "
            "selects the agent; the session's aiohttp connector keeps an idle connection 15 s "
            "(its default), so each poll opens a new TLS connection."
        )
    cpu_ok = d["idle_cpu_pct"] < args.cpu_target
    rss_ok = rss < rss_target
    rep.failed = not (cpu_ok and rss_ok and all_there)
    rep.targets = [
        [f"one hub holding {n:,} idle attached agents ({what}): resident memory < "
         f"{human(rss_target)}",
         f"VmRSS {mib(rss)} (VmHWM {mib(hwm)}) with all attached; all {n:,} attached in "
         f"{d['attach_seconds']:.1f} s",
         f"**{rss / rss_target:.2f}x** of the limit", verdict(rss_ok)],
        [f"same hub: CPU < {args.cpu_target:g} % of one core over {args.idle:g} s idle "
         f"({what})",
         f"{d['idle_cpu_pct']:.2f} % ({d['idle_cpu_s']:.2f} s CPU in {d['idle_elapsed']:.1f} s); "
         f"{d['alive']:,}/{n:,} still attached, {d['drops']} dropped",
         f"**{d['idle_cpu_pct'] / args.cpu_target:.2f}x** of the limit",
         verdict(cpu_ok and all_there)],
    ]  # fmt: skip
    rep.data = d
    return rep


# ------------------------------------------------------------------- report


def source_env() -> dict[str, str]:
    """Which freight the CLI imports (PYTHONPATH may point at another tree)
    and the repository's commit, for the markdown's environment lines."""
    res = subprocess.run(
        [str(FREIGHT.parent / "python"), "-c", "import freight; print(freight.__file__)"],
        capture_output=True, text=True, cwd="/", env=peers._freight_env(),
    )  # fmt: skip
    path = res.stdout.strip() or "?"
    git = ["git", "-C", str(REPO_DIR)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "freight"], capture_output=True, text=True
    )
    rev = head.stdout.strip() or "?"
    if dirty.stdout.strip():
        rev += " (freight/ has uncommitted changes in the work tree)"
    return {"freight imported from": str(Path(path).parent), "repository HEAD": rev}


def report_cmd(args: argparse.Namespace) -> Report:
    targets: list[list[str]] = []
    body: list[str] = []
    failed = False
    for name in [x.strip() for x in args.parts.split(",") if x.strip()]:
        path = args.results / f"{name}.json"
        if not path.exists():
            targets.append([name, "did not run (see the log)", "", "missed"])
            failed = True
            continue
        r = Report.load(path)
        targets += r.targets
        failed |= r.failed
        body.append(r.text())
    rep = Report("Agent targets", TARGET_HEADERS, rows=targets, failed=failed)
    print("\n" + markdown_table(TARGET_HEADERS, targets) + "\n", flush=True)
    if args.markdown:
        append_section(
            args.markdown,
            "Agents: `freight cp -r` of many small files vs scp/rsync, one hub with many idle agents",
            args.command or this_command(),
            [markdown_table(TARGET_HEADERS, targets) + "\n", *body],
            source_env(),
        )
    return rep


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/agents.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tmp", type=Path, default=DEFAULT_TMP, help="scratch folder")
        sp.add_argument("--out", type=Path, help="write the results as JSON (for `report`)")
        sp.add_argument("--markdown", type=Path, help="append a section to this file")

    tr = sub.add_parser("tree", help="(1) freight cp -r vs scp -r vs rsync -a, many small files")
    common(tr)
    tr.add_argument("--files", type=int, default=10_000)
    tr.add_argument("--file-size", default="4K")
    tr.add_argument("--dirs", type=int, default=100)
    tr.add_argument("--rounds", type=int, default=3)
    tr.add_argument("--tools", default="freight,scp,rsync")
    tr.add_argument("--direction", choices=("get", "push", "pull"), default="get",
                    help="get: `cp -r AGENT:…` from an agent; push: `push DIR` to the hub; "
                         "pull: `pull DIR/` from the hub")  # fmt: skip
    tr.add_argument("--py-spy", type=Path, metavar="DIR",
                    help="profile freight cp, the agent and the hub (raw py-spy files; "
                    "slows freight down)")  # fmt: skip

    il = sub.add_parser("idle", help="(2) one hub, many idle attached agents")
    common(il)
    il.add_argument("--agents", type=int, default=5000)
    il.add_argument("--workers", type=int, default=4, help="client processes")
    # The hub locks an address out after 5 enrolments that have not succeeded
    # (ENROL_ADDRESS in freight/hub/limiter.py; one in flight counts until it
    # succeeds), and every worker enrols from 127.0.0.1: 4 workers x 1 stays under.
    il.add_argument("--concurrency", type=int, default=1, help="enrolments at once per worker")
    il.add_argument(
        "--attach-concurrency", type=int, default=64, help="attaches at once per worker"
    )
    il.add_argument("--idle", type=float, default=60.0, help="seconds of idleness measured")
    il.add_argument("--settle", type=float, default=5.0, help="seconds between attach and idle")
    il.add_argument("--rss-target", default="1G")
    il.add_argument("--cpu-target", type=float, default=10.0, help="percent of one core")
    il.add_argument("--timeout", type=float, default=1800.0, help="per phase, seconds")
    il.add_argument("--poll-policies", type=float, default=0.0, metavar="SECONDS",
                    help="each agent also GETs /v1/collect/policies every SECONDS, as the "
                    "agent daemon's collection offerer does (every 3600 s); 0: off")  # fmt: skip
    il.add_argument("--py-spy", type=Path, metavar="DIR",
                    help="profile the hub while attaching and while idle (raw py-spy files)")  # fmt: skip

    rp = sub.add_parser("report", help="combine the results of bench/agents.sh")
    rp.add_argument("--results", type=Path, required=True)
    rp.add_argument("--markdown", type=Path)
    rp.add_argument("--command", help="the command line to quote in the markdown")
    rp.add_argument("--parts", default="tree,idle,idle-poll", help="result files to combine")

    wk = sub.add_parser("_worker", help=argparse.SUPPRESS)
    wk.add_argument("--admin-config", required=True)
    wk.add_argument("--prefix", required=True)
    wk.add_argument("--count", type=int, required=True)
    wk.add_argument("--concurrency", type=int, default=16)
    wk.add_argument("--attach-concurrency", type=int, default=64)
    wk.add_argument("--poll-policies", type=float, default=0.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "_worker":
        return worker_cmd(args)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if args.cmd == "report":
        return 1 if report_cmd(args).failed else 0
    args.tmp = args.tmp.resolve()
    args.tmp.mkdir(parents=True, exist_ok=True)
    commands = {"tree": tree_cmd, "idle": idle_cmd}
    try:
        rep = commands[args.cmd](args)
    except (PeerError, OSError, subprocess.SubprocessError, RuntimeError, TimeoutError,
            Terminated) as e:  # fmt: skip
        log(f"{args.cmd}: FAILED: {e}")
        return 1
    rep.print()
    rep.save(args.out)
    if args.markdown:
        append_section(args.markdown, rep.title, this_command(),
                       [rep.text(), markdown_table(TARGET_HEADERS, rep.targets) + "\n"],
                       source_env())  # fmt: skip
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
