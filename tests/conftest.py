"""Shared fixtures: real hub processes and real CLI clients on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
