"""The hub's TLS configuration against Mozilla's "intermediate" profile:
AEAD suites only (no CBC in TLS 1.2), the usual curves only."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.support import Hub


def handshake(
    hub: Hub,
    *,
    ciphers: str | None = None,
    curve: str | None = None,
    version: ssl.TLSVersion | None = None,
) -> tuple[str, str]:
    """Complete a handshake as a client restricted to ``ciphers`` (TLS 1.2
    suites) and/or one ``curve``; return the version and suite chosen."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)  # the only group the client offers
    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0]


TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"]
)
def test_cbc_suites_are_refused_in_tls12(shared_hub: Hub, suite: str) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(shared_hub, ciphers=suite, version=TLS12)


@pytest.mark.parametrize(
    "suite",
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
)
def test_aead_suites_are_accepted_in_tls12(shared_hub: Hub, suite: str) -> None:
    assert handshake(shared_hub, ciphers=suite, version=TLS12) == ("TLSv1.2", suite)


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls12", "tls13"])
@pytest.mark.parametrize("curve", ["X448", "secp521r1"])
def test_uncommon_curves_are_not_offered(
    shared_hub: Hub, curve: str, version: ssl.TLSVersion
) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(shared_hub, curve=curve, version=version)


# In TLS 1.2 the client's curves also bound the certificate's (ECDSA
# P-256 here), so only TLS 1.3 can show each key-exchange group alone.
@pytest.mark.parametrize(
    ("curve", "version"),
    [("X25519", TLS13), ("prime256v1", TLS13), ("secp384r1", TLS13), ("prime256v1", TLS12)],
)
def test_the_usual_curves_are_accepted(
    shared_hub: Hub, curve: str, version: ssl.TLSVersion
) -> None:
    expected = "TLSv1.3" if version is TLS13 else "TLSv1.2"
    assert handshake(shared_hub, curve=curve, version=version)[0] == expected


def test_a_default_client_gets_tls13(shared_hub: Hub) -> None:
    assert handshake(shared_hub)[0] == "TLSv1.3"
