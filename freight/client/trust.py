"""How a client decides to trust a hub's certificate: a pinned fingerprint
read from the first handshake, or a CA file that vouches for it."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from yarl import URL

from ..errors import ConfigError, FingerprintMismatch, NetworkError, TLSError
from ..transport.closing import closing_on_failure
from ..transport.proxy import open_tunnel

__all__ = [
    "ca_context",
    "fetch_fingerprint",
    "hostport",
    "import_web_client",
    "mismatch_error",
    "untrusted_error",
]


def hostport(u: URL) -> str:
    return f"{u.host}:{u.port}"


def ca_context(ca_file: Path) -> ssl.SSLContext:
    """TLS that trusts only the CAs in ``ca_file`` and checks the host name:
    for a hub whose certificate a CA signed (or a TLS-inspecting proxy's CA),
    where a pinned fingerprint would break at every renewal."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except OSError as exc:  # ssl.SSLError included (bad PEM)
        raise ConfigError(
            f"cannot load CA certificates from {ca_file}: {getattr(exc, 'strerror', None) or exc}",
            hint="give a PEM file with --ca-file, or log in without it to pin the fingerprint",
        ) from None


def import_web_client() -> None:
    """Import aiohttp without the system CA store it would read at import.

    aiohttp builds two default TLS contexts when it is imported, each
    reading the system's CA bundle (together ~45 ms here, a fifth of
    ``freight ls``). Freight never uses them to trust anyone: a hub is checked by
    its pinned fingerprint (aiohttp then picks its unverified context, where
    CAs change nothing) or by an explicit CA file, and a link to a hub with
    a public certificate gets a context of its own (``links.trust_for``).
    So the ``freight`` command imports aiohttp with the store left out:
    its verified default then trusts no one, and anything that relied on it
    by mistake would fail closed. Not done by the SDK, whose host program
    may use aiohttp's defaults itself; a no-op once aiohttp is imported."""
    if "aiohttp.connector" in sys.modules:
        return
    with _no_default_store():
        import aiohttp.connector  # noqa: F401


@contextmanager
def _no_default_store() -> Iterator[None]:
    cls = ssl.SSLContext
    cls.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del cls.set_default_verify_paths  # the C method shows through again


def untrusted_error(u: URL, ca_file: Path, exc: ssl.SSLError) -> TLSError:
    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    return TLSError(
        f"the hub at {hostport(u)} presents a certificate that the CA in {ca_file} "
        f"does not vouch for ({detail})",
        hint="check the hub address and --ca-file, or log in without it to pin the fingerprint",
    )


async def fetch_fingerprint(
    u: URL,
    timeout: float = 10.0,
    *,
    proxy: URL | None = None,
    ca_file: Path | None = None,
) -> str:
    """The SHA-256 fingerprint of the certificate the hub presents.

    Through ``proxy`` if given. With ``ca_file`` the handshake also verifies
    the chain and host name against that CA, so a wrong certificate fails
    here, before any password is sent."""
    if ca_file is not None:
        ctx = ca_context(ca_file)
    else:
        # Nothing is verified, only the certificate read: no CA store to
        # load (ssl.create_default_context would read the system's).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                _, writer = await asyncio.open_connection(
                    u.host, u.port, ssl=ctx, server_hostname=u.host
                )
            else:
                sock = await open_tunnel(proxy, u.host or "", u.port or 8443, timeout=timeout)
                with closing_on_failure(sock):
                    _, writer = await asyncio.open_connection(
                        sock=sock, ssl=ctx, server_hostname=u.host
                    )
    except ssl.SSLCertVerificationError as exc:
        assert ca_file is not None  # nothing is verified without one
        raise untrusted_error(u, ca_file, exc) from None
    except ssl.SSLError as exc:  # before OSError, its base class
        raise TLSError(f"TLS handshake with {u.host}:{u.port} failed: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise NetworkError(f"cannot reach {u.host}:{u.port}: {exc or 'timed out'}") from None
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def mismatch_error(u: URL, pinned: str, seen: str) -> FingerprintMismatch:
    return FingerprintMismatch(
        f"the hub at {hostport(u)} presents certificate {seen}, but {pinned} is pinned",
        hint=(
            "this may be an attack; if the hub's certificate was replaced on purpose, confirm "
            f"the new fingerprint with its admin and run: freight login {u} --fingerprint {seen}"
        ),
    )
