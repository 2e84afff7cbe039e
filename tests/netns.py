"""A network namespace of a test's own, joined to this one by a veth pair.

Needs root and iproute2; the caller's test is skipped with the reason when
either is missing or the kernel refuses. The namespace and the pair are
always deleted."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest


def ip(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ip", *args], capture_output=True, timeout=10)


@contextlib.contextmanager
def veth_namespace(prefix: str, octet: int) -> Iterator[tuple[str, str, str]]:
    """(namespace name, our address, the namespace's address) on a free /30
    of 10.<octet>.0.0/16 (other test runs on this machine may hold some)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    tag = secrets.token_hex(3)
    name = f"{prefix}{tag}"
    made = ip("netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"ip netns add is not permitted here: {made.stderr.decode().strip()}")
    used = ip("-4", "-o", "addr").stdout.decode()
    free = [n for n in range(256) if f" 10.{octet}.{n}." not in used]
    net = f"10.{octet}.{random.choice(free)}"
    outside, inside = f"{net}.1", f"{net}.2"
    here, there = f"v{prefix[-2:]}o{tag}", f"v{prefix[-2:]}i{tag}"
    try:
        steps = [
            ("link", "add", here, "type", "veth", "peer", "name", there),
            ("link", "set", there, "netns", name),
            ("addr", "add", f"{outside}/30", "dev", here),
            ("link", "set", here, "up"),
            ("-n", name, "addr", "add", f"{inside}/30", "dev", there),
            ("-n", name, "link", "set", there, "up"),
            ("-n", name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the veth pair: ip {' '.join(step)}: {done.stderr!r}")
        yield name, outside, inside
    finally:
        ip("link", "del", here)
        ip("netns", "del", name)
