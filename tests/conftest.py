"""Shared fixtures: real hub processes and real CLI clients on loopback."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.relaysupport import BOB_PASSWORD, fast
from tests.support import Client, Hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub").start()
    yield h
    h.stop()


@pytest.fixture
def client(tmp_path: Path, hub: Hub) -> Client:
    c = Client(tmp_path / "client", hub)
    c.login()
    return c


@pytest.fixture(scope="module")
def shared_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One hub for a module's tests that do not disturb each other (each
    uses its own file names); saves a hub start per test."""
    h = Hub(tmp_path_factory.mktemp("shared") / "hub").start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub) -> Client:
    c = Client(tmp_path_factory.mktemp("shared-client"), shared_hub)
    c.login()
    return c


@pytest.fixture(scope="module")
def admin(shared_client: Client) -> Client:
    """The shared hub's admin, with quick relay reconnects."""
    return fast(shared_client)


@pytest.fixture(scope="module")
def bob(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    """A second user on the shared hub, logged in on its own device."""
    res = admin.run("users", "add", "bob", "--password-stdin", input=BOB_PASSWORD + "\n")
    assert "Added user bob" in res.stderr
    c = Client(tmp_path_factory.mktemp("client-bob"), shared_hub)
    c.login(user="bob", password=BOB_PASSWORD)
    return fast(c)


@pytest.fixture
def hubs(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Start hubs with extra options; all are stopped at the end."""
    started: list[Hub] = []

    def make(*extra: str, preexec: Callable[[], None] | None = None) -> Hub:
        h = Hub(tmp_path / f"hub{len(started)}", extra=list(extra))
        h.preexec = preexec
        started.append(h)
        return h.start()

    yield make
    for h in started:
        h.stop()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Client.popen, but never leaves a client running after the test."""
    procs: list[subprocess.Popen[str]] = []

    def run(client: Client, *args: str) -> subprocess.Popen[str]:
        p = client.popen(*args)
        procs.append(p)
        return p

    yield run
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.communicate(timeout=10)
