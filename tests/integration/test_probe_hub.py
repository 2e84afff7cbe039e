"""The bandwidth probe against a real hub on loopback: both directions,
both paths (a sealed data connection and frames inside TLS), and a client
that breaks the probe's rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from freight.client.probe import available_bandwidth, probe
from freight.client.session import HubSession
from freight.errors import FreightError
from freight.protocol import messages as m
from freight.transport.dataconn import open_data_connection
from tests.authsupport import token_of
from tests.support import Client, Hub, random_file, same_bytes


def session_of(hub: Hub, client: Client) -> HubSession:
    return HubSession(hub.url, fingerprint=hub.fingerprint, token=token_of(client))


async def test_available_bandwidth_on_loopback(shared_hub: Hub, shared_client: Client) -> None:
    async with session_of(shared_hub, shared_client) as session:
        rate = await asyncio.wait_for(available_bandwidth(session, seconds=0.5), 30)
    # Loopback through the real hub carries well over 20 MB/s.
    assert rate > 20e6, rate


@pytest.mark.parametrize("data_path", ["auto", "tls"])
async def test_probe_both_ways(shared_hub: Hub, shared_client: Client, data_path: str) -> None:
    async with session_of(shared_hub, shared_client) as session:
        result = await asyncio.wait_for(probe(session, seconds=0.5, data_path=data_path), 30)
    assert result.path == ("data" if data_path == "auto" else "tls")
    assert 0 < result.rtt < 0.1
    for est in (result.up, result.down):
        assert est is not None
        assert est.capacity >= est.available > 20e6
        # A train measured over time, not one pair of records (a loaded
        # machine may start the train late and shorten the span it covers).
        assert est.seconds >= 0.1
    doc = result.as_dict()
    assert doc["up"]["available"] > 0 and doc["down"]["bytes"] > 0


async def _hostile_data_connection(session: HubSession) -> object:
    link = await session.open_link()
    try:
        grant = await link.ticket()
        chan = await open_data_connection(
            session.url.host or "",
            session.url.port or 8443,
            ticket_id=bytes.fromhex(grant.ticket),
            secret=bytes.fromhex(grant.secret),
        )
    finally:
        await link.aclose()
    return chan


async def test_out_of_order_records_close_the_connection(
    shared_hub: Hub, shared_client: Client
) -> None:
    async with session_of(shared_hub, shared_client) as session:
        chan = await _hostile_data_connection(session)
        try:
            await chan.send(m.Probe(pid="p1", op="up", size=4096))  # type: ignore[attr-defined]
            ready, _ = await asyncio.wait_for(chan.recv(), 10)  # type: ignore[attr-defined]
            assert isinstance(ready, m.ProbeReport)
            await chan.send(m.ProbeData(pid="p1", seq=5, len=10), b"x" * 10)  # type: ignore[attr-defined]
            answer, _ = await asyncio.wait_for(chan.recv(), 10)  # type: ignore[attr-defined]
            assert isinstance(answer, m.Error)
            assert answer.code == "malformed_probe"
            assert "record 5 where 0 was due" in answer.message
        finally:
            await chan.aclose()  # type: ignore[attr-defined]


async def test_record_larger_than_announced_is_refused(
    shared_hub: Hub, shared_client: Client
) -> None:
    async with session_of(shared_hub, shared_client) as session:
        chan = await _hostile_data_connection(session)
        try:
            await chan.send(m.Probe(pid="p2", op="up", size=1024))  # type: ignore[attr-defined]
            await asyncio.wait_for(chan.recv(), 10)  # type: ignore[attr-defined]
            await chan.send(m.ProbeData(pid="p2", seq=0, len=2048), b"y" * 2048)  # type: ignore[attr-defined]
            answer, _ = await asyncio.wait_for(chan.recv(), 10)  # type: ignore[attr-defined]
            assert isinstance(answer, m.Error) and answer.code == "malformed_probe"
        finally:
            await chan.aclose()  # type: ignore[attr-defined]
        # The hub goes on serving everyone else.
        rate = await asyncio.wait_for(available_bandwidth(session, "down", seconds=0.3), 30)
        assert rate > 0


async def test_unknown_account_cannot_probe(shared_hub: Hub) -> None:
    session = HubSession(shared_hub.url, fingerprint=shared_hub.fingerprint, token="nope")
    async with session:
        with pytest.raises(FreightError):
            await asyncio.wait_for(probe(session, seconds=0.3), 30)


def test_cli_probe_json_and_text(shared_hub: Hub, shared_client: Client) -> None:
    import json

    res = shared_client.run("probe", "--seconds", "0.3", "--json", timeout=60)
    found = json.loads(res.stdout)
    assert found["hub"].startswith("https://127.0.0.1:")
    assert found["path"] == "data"
    assert found["up"]["available"] > 0 and found["down"]["capacity"] > 0
    text = shared_client.run("probe", "--direction", "down", "--seconds", "0.3", timeout=60)
    assert "rtt" in text.stdout and "down available" in text.stdout
    assert "up available" not in text.stdout
    bad = shared_client.run("probe", "--direction", "sideways", check=False)
    assert bad.returncode == 2 and "use up, down or both" in bad.stderr


@pytest.mark.parametrize(
    "how",
    [
        ["--limit", "50%"],
        ["--priority", "background"],
        ["--priority", "background", "--data-path", "tls"],
    ],
)
def test_push_by_share_and_in_background(
    shared_client: Client, tmp_path: Path, how: list[str]
) -> None:
    import json

    src = random_file(tmp_path / "share.bin", 24 * 1024 * 1024, seed=len(how[1]))
    name = f"probe-{'-'.join(how).strip('%-')}.bin"
    res = shared_client.run("push", str(src), "--as", name, *how, "--json", timeout=120)
    (pushed,) = json.loads(res.stdout)["pushed"]
    assert pushed["size"] == src.stat().st_size
    out = tmp_path / "back.bin"
    shared_client.run("pull", name, str(out), "--quiet")
    assert same_bytes(src, out)


def test_pull_by_share(shared_client: Client, tmp_path: Path) -> None:
    src = random_file(tmp_path / "down.bin", 8 * 1024 * 1024, seed=5)
    shared_client.run("push", str(src), "--as", "probe-down.bin", "--quiet")
    out = tmp_path / "back.bin"
    shared_client.run("pull", "probe-down.bin", str(out), "--limit", "50%", "--quiet")
    assert same_bytes(src, out)


def test_bad_priority_is_refused(shared_client: Client) -> None:
    bad = shared_client.run("push", "/etc/hostname", "--priority", "low", check=False)
    assert bad.returncode == 2 and "use normal or background" in bad.stderr


async def test_sdk_probe_and_share_options(shared_client: Client, tmp_path: Path) -> None:
    from freight.client.api import Client as Sdk
    from freight.errors import UsageError

    src = random_file(tmp_path / "sdk.bin", 4 * 1024 * 1024, seed=9)
    async with Sdk(config_dir=shared_client.config) as hub:
        found = await asyncio.wait_for(hub.probe(direction="up", seconds=0.3), 30)
        assert found.up is not None and found.down is None and found.up.available > 0
        opts = hub.options(limit="50%", priority="background")
        assert (opts.percent, opts.priority, opts.limit) == (50.0, "background", 0)
        (pushed,) = await asyncio.wait_for(hub.push(src, as_name="sdk-share.bin", options=opts), 60)
        assert pushed.size == src.stat().st_size
        with pytest.raises(UsageError, match="not a percentage"):
            hub.options(limit="150%")
