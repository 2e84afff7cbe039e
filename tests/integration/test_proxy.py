"""Corporate networks: a real HTTP CONNECT proxy (tinyproxy) between the
client and the hub, and hubs whose certificate a CA signed (``--ca-file``).

The hub sits behind tests/httpproxy.py's Firewall, which forwards only
connections that come from the proxy: a transfer that succeeds proves that
every connection the client made (REST, control WebSocket, data connection)
went through the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from yarl import URL

from freight.transport.dataconn import DataPathUnavailable, open_data_connection
from tests.certs import make_ca, make_leaf, write_ca
from tests.httpproxy import Firewall, TinyProxy
from tests.support import ADMIN_PASSWORD, Client, Hub, random_file, same_bytes

MiB = 1024 * 1024


@pytest.fixture
def firewall(shared_hub: Hub) -> Iterator[Firewall]:
    with Firewall(shared_hub.port) as fw:
        yield fw


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path / "proxy") as p:
        yield p


def login(client: Client, url: str, *extra: str, check: bool = True) -> object:
    return client.run(
        "login",
        url,
        "--user",
        "admin",
        "--password-stdin",
        *extra,
        input=ADMIN_PASSWORD + "\n",
        check=check,
    )


def round_trip(tmp_path: Path, client: Client, name: str, size: int, *args: str) -> None:
    """Push ``size`` random bytes as ``name``, pull them back, compare."""
    src = random_file(tmp_path / f"{name}.src", size, seed=size)
    row = json.loads(client.run("push", str(src), "--as", name, "--json", *args).stdout)
    assert row["pushed"][0]["size"] == size
    back = tmp_path / f"{name}.back"
    client.run("pull", name, str(back), "--json", *args)
    assert same_bytes(src, back)


def test_push_pull_through_proxy(
    tmp_path: Path, shared_hub: Hub, firewall: Firewall, proxy: TinyProxy
) -> None:
    client = Client(tmp_path / "client", shared_hub)
    res = login(client, firewall.url, "--proxy", proxy.url, "--fingerprint", shared_hub.fingerprint)
    assert json.loads(client.run("ls", "--json").stdout) is not None
    saved = json.loads((client.config / "config.json").read_text())
    assert saved["hubs"][f"{firewall.url}/"]["proxy"] == proxy.url, res
    # --data-path direct: the sealed data connection must open, through the proxy.
    round_trip(tmp_path, client, "via-proxy.bin", 3 * MiB, "--data-path", "direct")
    assert firewall.direct == 0
    assert firewall.accepted >= 5  # probe, login, ls, and per transfer: control + data
    assert proxy.connects_to(firewall.port) == firewall.accepted


def test_proxy_choice_order(
    tmp_path: Path, shared_hub: Hub, firewall: Firewall, proxy: TinyProxy
) -> None:
    """HTTPS_PROXY is used when nothing else is said; NO_PROXY exempts the
    hub from it; an explicit --proxy (here 'none') wins over everything."""
    client = Client(tmp_path / "client", shared_hub)
    client.env.update(HTTPS_PROXY=proxy.url, NO_PROXY="")
    login(client, firewall.url, "--fingerprint", shared_hub.fingerprint)
    assert (
        "proxy"
        not in json.loads((client.config / "config.json").read_text())["hubs"][f"{firewall.url}/"]
    )
    client.run("ls")
    assert firewall.direct == 0

    res = client.run("--proxy", "none", "ls", check=False)
    assert res.returncode == 6, res.stderr
    assert firewall.direct == 1

    client.env.update(NO_PROXY="127.0.0.1")
    assert client.run("ls", check=False).returncode == 6
    assert firewall.direct == 2
    client.run("--proxy", proxy.url, "ls")  # explicit wins over NO_PROXY
    assert firewall.direct == 2


def test_proxy_credentials(tmp_path: Path, shared_hub: Hub, firewall: Firewall) -> None:
    with TinyProxy(tmp_path / "proxy", auth=("alice", "s3cret")) as proxy:
        fp = ("--fingerprint", shared_hub.fingerprint)
        anonymous = Client(tmp_path / "anonymous", shared_hub)
        res = login(anonymous, firewall.url, "--proxy", proxy.bare_url, *fp, check=False)
        assert res.returncode == 6
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "wants credentials (407)" in lines[0], res.stderr
        assert "http://user:pass@proxy:port" in lines[0]

        wrong = Client(tmp_path / "wrong", shared_hub)
        bad_url = proxy.url_with("alice", "wrong")
        res = login(wrong, firewall.url, "--proxy", bad_url, *fp, check=False)
        assert res.returncode == 6
        lines = res.stderr.strip().splitlines()
        # tinyproxy answers wrong credentials with 401, missing ones with 407.
        assert len(lines) == 1 and "rejected the credentials for 'alice' (40" in lines[0]
        assert "http://user:pass@proxy:port" in lines[0]
        assert "wrong" not in lines[0]  # the password is never printed
        assert not (tmp_path / "wrong" / "config.json").exists()

        good = Client(tmp_path / "good", shared_hub)
        login(good, firewall.url, "--proxy", proxy.url, *fp)
        round_trip(tmp_path, good, "with-creds.bin", 256 * 1024, "--data-path", "direct")
        assert firewall.direct == 0

        # A saved good proxy, overridden for one command by a bad one.
        res = good.run("--proxy", bad_url, "ls", check=False)
        assert res.returncode == 6
        assert "rejected the credentials" in res.stderr


async def test_proxy_allowing_only_443_refuses_the_data_connection(
    tmp_path: Path, shared_hub: Hub
) -> None:
    """A proxy that tunnels only to port 443 refuses a data connection to the
    hub's port: the data path is unavailable (so a link falls back), and the
    message says why."""
    with TinyProxy(tmp_path / "proxy", connect_ports=[443]) as proxy:
        with pytest.raises(DataPathUnavailable) as info:
            await open_data_connection(
                "127.0.0.1",
                shared_hub.port,
                ticket_id=bytes(16),
                secret=bytes(32),
                proxy=URL(proxy.url),
            )
        assert "(403" in str(info.value) and "port 443" in str(info.value)
        assert proxy.connects_to(shared_hub.port) == 1


def test_proxy_allowing_only_443_fails_login_clearly(tmp_path: Path, shared_hub: Hub) -> None:
    """The same proxy refuses the control connection too (the data connection
    uses the hub's one port): login says so in one line, exit code 6."""
    with TinyProxy(tmp_path / "proxy", connect_ports=[443]) as proxy:
        client = Client(tmp_path / "client", shared_hub)
        res = login(client, shared_hub.url, "--proxy", proxy.url, check=False)
        assert res.returncode == 6
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert f"refused a tunnel to 127.0.0.1:{shared_hub.port} (403" in lines[0]
        assert f"allow port {shared_hub.port}" in lines[0]


def test_refused_data_connection_falls_back_through_proxy(
    tmp_path: Path, shared_hub: Hub, proxy: TinyProxy
) -> None:
    """A path that carries only TLS through the proxy cuts the sealed data
    connection; with --data-path auto the transfer falls back to frames in
    the TLS WebSocket and still delivers identical bytes."""
    with Firewall(shared_hub.port, tls_only=True) as fw:
        client = Client(tmp_path / "client", shared_hub)
        login(client, fw.url, "--proxy", proxy.url, "--fingerprint", shared_hub.fingerprint)
        round_trip(tmp_path, client, "fallback.bin", 3 * MiB, "--data-path", "auto")
        assert fw.non_tls >= 1  # a data connection was tried and cut
        assert fw.direct == 0


# --- trusting a CA instead of pinning -------------------------------------------------


def ca_signed_hub(tmp_path: Path) -> tuple[Hub, Path]:
    """A hub whose certificate a CA of the test's signed, and that CA's PEM."""
    ca_key, ca = make_ca("freight test CA")
    cert_path, key_path = make_leaf(ca_key, ca, tmp_path / "tls")
    ca_pem = write_ca(ca, tmp_path / "ca.pem")
    hub = Hub(tmp_path / "hub", extra=["--cert", str(cert_path), "--key", str(key_path)])
    return hub.start(), ca_pem


def test_ca_file_instead_of_pinning(tmp_path: Path) -> None:
    hub, ca_pem = ca_signed_hub(tmp_path)
    _, other = make_ca("some other CA")
    other_pem = write_ca(other, tmp_path / "other-ca.pem")
    try:
        assert "self-signed" not in hub.log()
        client = Client(tmp_path / "client", hub)
        res = login(client, hub.url, "--ca-file", str(ca_pem), "--json")
        assert "fingerprint is" not in res.stderr and "Pinning" not in res.stderr
        info = json.loads(res.stdout)
        assert info["ca_file"] == str(ca_pem.resolve())
        assert info["fingerprint"] == hub.fingerprint
        assert not (client.config / "known_hubs.json").exists()  # nothing pinned
        # Later commands verify with the saved CA.
        src = random_file(tmp_path / "a.bin", 100_000)
        client.run("push", str(src), "--quiet")
        client.run("pull", "a.bin", str(tmp_path / "b.bin"), "--quiet")
        assert same_bytes(src, tmp_path / "b.bin")

        # A CA that did not sign the hub's certificate: exit 4, one clear line.
        stranger = Client(tmp_path / "stranger", hub)
        res = login(stranger, hub.url, "--ca-file", str(other_pem), check=False)
        assert res.returncode == 4
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert f"the CA in {other_pem.resolve()} does not vouch for" in lines[0]
        assert not (tmp_path / "stranger" / "config.json").exists()
        # The same wrong CA for one command of the logged-in client.
        res = client.run("--ca-file", str(other_pem), "ls", check=False)
        assert res.returncode == 4 and "does not vouch for" in res.stderr
    finally:
        hub.stop()


def test_a_link_to_a_hub_the_system_trusts_needs_no_fingerprint(tmp_path: Path) -> None:
    """A link without ``#SHA256:…`` is checked against the machine's own CA
    store (here: SSL_CERT_FILE naming the CA that signed the hub's
    certificate), the way a browser would check it."""
    hub, ca_pem = ca_signed_hub(tmp_path)
    try:
        owner = Client(tmp_path / "owner", hub)
        login(owner, hub.url, "--ca-file", str(ca_pem))
        src = random_file(tmp_path / "public.bin", 300_000, seed=41)
        owner.run("push", str(src), "--as", "public.bin", "--quiet")
        link = json.loads(owner.run("share", "public.bin", "--json").stdout)["url"].split("#")[0]

        stranger = Client(tmp_path / "stranger", hub)  # no login, nothing pinned
        out = tmp_path / "fetched.bin"
        res = stranger.run("fetch", link, "-o", str(out), check=False)
        assert res.returncode == 4 and "is not one this machine trusts" in res.stderr
        stranger.env["SSL_CERT_FILE"] = str(ca_pem)
        stranger.run("fetch", link, "-o", str(out))
        assert same_bytes(src, out)
    finally:
        hub.stop()
