"""Set-ups of the collection tests (test_collect.py, test_collect_faults.py):
a hub, its admin and enrolled agents; uploads watched in the hub's events
and ``partial/`` folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.collectsupport import (
    AgentProc,
    catalogue,
    contents,
    enroll_agents,
    hub_events,
    partial_of,
    wait_online,
)
from tests.support import Client, Hub, random_file

KiB = 1024
MiB = 1024 * KiB
RECEIVED = "freight_bytes_received"  # hub metric: stream payload bytes written


@dataclass
class Setup:
    hub: Hub
    admin: Client
    agents: dict[str, AgentProc]


def start_setup(tmp: Path, names: list[str], *hub_args: str) -> Setup:
    hub = Hub(tmp / "hub", extra=list(hub_args)).start()
    try:
        admin = Client(tmp / "admin", hub)
        admin.login()
        agents = enroll_agents(admin, hub, tmp, names)
    except BaseException:
        hub.stop()
        raise
    return Setup(hub, admin, {a.name: a for a in agents})


def stop_setup(s: Setup) -> None:
    for a in s.agents.values():
        a.kill()
    s.hub.stop()
    save_hub_log(s.hub)


def save_hub_log(hub: Hub) -> None:
    """Keep the hub's log (its lines are reset by a restart) for a post-mortem."""
    with open(hub.data.parent / "hub.log", "a") as f:
        f.write(hub.log())


def setups(tmp: Path) -> Iterator[Callable[..., Setup]]:
    """The body of a ``setup_factory`` fixture: make setups in ``tmp``,
    stop each at the end."""
    made: list[Setup] = []

    def make(names: list[str], *hub_args: str) -> Setup:
        s = start_setup(tmp, names, *hub_args)
        made.append(s)
        return s

    yield make
    for s in made:
        stop_setup(s)


def start_agents(s: Setup, *names: str) -> None:
    chosen = [s.agents[n] for n in names] or list(s.agents.values())
    for a in chosen:
        a.start()
    wait_online(s.admin, chosen)


def holders_by_digest(admin: Client) -> dict[str, set[tuple[str, str]]]:
    return {r["digest"]: {(h["agent"], h["path"]) for h in r["holders"]} for r in catalogue(admin)}


def spread_files(
    agents: dict[str, AgentProc], unique_each: int, shared: int, size: int
) -> dict[str, int]:
    """``unique_each`` files of their own per agent plus ``shared`` files
    present on every agent; returns the distinct contents."""
    paths = []
    for n, a in enumerate(agents.values()):
        (a.root / "data").mkdir(exist_ok=True)
        for i in range(unique_each):
            paths.append(random_file(a.root / "data" / f"u{i}.bin", size, seed=n * 100_000 + i))
        for i in range(shared):
            paths.append(random_file(a.root / "data" / f"s{i}.bin", size, seed=900_000 + i))
    return contents(paths)


def mid_stream(hub: Hub, agent: str, low: int, high: int) -> bool:
    """Whether ``agent``'s newest upload is in progress with low..high bytes
    on the hub (so neither just starting nor between its end and its result)."""
    starts = [e for e in hub_events(hub, "stream_start") if e.get("actor") == agent]
    if not starts or starts[-1]["sid"] in {e["sid"] for e in hub_events(hub, "stream_end")}:
        return False
    return low <= partial_of(hub, agent) <= high
