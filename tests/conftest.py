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
