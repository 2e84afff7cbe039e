"""HTTP CONNECT tunnels through a corporate proxy.

aiohttp tunnels the REST calls and the control WebSocket itself; this module
does the same for the connections it does not make: the sealed data
connection and the certificate probe at login. It also holds the one rule
for which proxy a client uses, so every connection agrees on it.

A tunnel is opened on a plain socket and nothing beyond the proxy's answer is
read from it, so the caller can hand the socket to whatever protocol comes
next (a TLS handshake, a data-connection preamble) as if it were a direct
TCP connection to the hub.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import urllib.request

from yarl import URL

from ..errors import NetworkError, UsageError
from .closing import closing_on_failure

# Proxies answer CONNECT with a status line and a few headers; anything much
# larger is not a proxy we understand, and must not make us buffer forever.
MAX_ANSWER_BYTES = 16 * 1024
DEFAULT_TIMEOUT = 10.0
# Values of --proxy / FREIGHT_PROXY that mean "connect directly", so one
# command can ignore a saved proxy or HTTPS_PROXY.
DIRECT = ("none", "direct")

PROXY_HINT = "check the proxy address (--proxy, the one saved at login, or HTTPS_PROXY)"


class ProxyError(NetworkError):
    """The HTTP proxy could not be reached or would not open a tunnel."""

    code = "proxy"
    hint = PROXY_HINT


class ProxyRefused(ProxyError):
    """The proxy answered and said no (credentials, a forbidden port):
    trying again cannot help."""

    code = "proxy_refused"


def parse_proxy_url(text: str) -> URL:
    """``http://[user:pass@]host[:port]`` (``host:port`` alone means http).

    Only plain-HTTP proxies are supported: the tunnel carries TLS (or sealed
    records) end to end, so the hop to the proxy needs no encryption of its own.
    """
    u = URL(text if "://" in text else f"http://{text}")
    if u.scheme != "http" or not u.host:
        raise UsageError(
            f"a proxy must look like http://[user:pass@]HOST:PORT, not {redact(u)!r}",
            hint="HTTPS and SOCKS proxies are not supported",
        )
    return u.with_path("").with_query(None).with_fragment(None)


def redact(proxy: URL) -> str:
    """The proxy URL fit to print: a password never appears in a message."""
    shown = proxy.with_password("***") if proxy.password is not None else proxy
    return str(shown)


def proxy_authorization(proxy: URL) -> str | None:
    """The ``Proxy-Authorization`` value for credentials in the URL, if any.

    yarl has already percent-decoded them, so ``p%40ss`` is sent as ``p@ss``.
    """
    if proxy.user is None:
        return None
    raw = f"{proxy.user}:{proxy.password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def choose_proxy(hub: URL, *, explicit: str | None, saved: str | None) -> URL | None:
    """The proxy for connections to ``hub``, or None to connect directly.

    An explicit choice for this command wins over the one saved at login for
    this hub, which wins over ``HTTPS_PROXY``/``https_proxy``; ``NO_PROXY``
    applies only to that last one, because the other two were asked for by
    name. ``none`` (or an empty value) as an explicit or saved choice means
    direct.
    """
    for choice in (explicit, saved):
        if choice is None:
            continue
        if choice.strip().lower() in (*DIRECT, ""):
            return None
        return parse_proxy_url(choice.strip())
    from_env = urllib.request.getproxies_environment().get("https")
    if not from_env:
        return None
    # Not in typeshed, but public in CPython and exactly NO_PROXY's semantics
    # (host, host:port, domain suffixes, "*").
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(f"{hub.host}:{hub.port}"):
        return None
    return parse_proxy_url(from_env)


def refusal(proxy: URL, target: str, status: int, reason: str) -> ProxyError:
    """The error for a proxy that answered CONNECT with something but 2xx."""
    where = f"the proxy at {proxy.host}:{proxy.port}"
    # 407 is the standard answer; some proxies (tinyproxy) answer wrong
    # credentials with 401, which on CONNECT can only be about the proxy too.
    if status in (401, 407):
        if proxy.user is None:
            return ProxyRefused(
                f"{where} wants credentials ({status})",
                hint="put them in the proxy URL http://user:pass@proxy:port",
            )
        return ProxyRefused(
            f"{where} rejected the credentials for {proxy.user!r} ({status})",
            hint="check the user name and password in the proxy URL http://user:pass@proxy:port",
        )
    message = f"{where} refused a tunnel to {target} ({status} {reason.strip()})".replace(" )", ")")
    if status == 403:
        port = target.rpartition(":")[2]
        return ProxyRefused(
            message,
            hint=(
                f"many proxies allow only port 443: ask its admin to allow port {port}, "
                "or run the hub on port 443"
            ),
        )
    if 400 <= status < 500:
        return ProxyRefused(message, hint="check the hub address and the proxy's rules")
    return ProxyError(message, hint="check the hub address and that the proxy can reach it")


def _connect_request(proxy: URL, target: str) -> bytes:
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if (auth := proxy_authorization(proxy)) is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_answer(proxy: URL, target: str, head: bytes) -> None:
    """Raise unless ``head`` (status line and headers) says the tunnel is open."""
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProxyError(
            f"the proxy at {proxy.host}:{proxy.port} answered CONNECT with "
            f"{status_line[:80]!r}, not HTTP",
        )
    status = int(parts[1])
    if not 200 <= status < 300:
        raise refusal(proxy, target, status, parts[2] if len(parts) > 2 else "")


async def _dial(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first address that answers."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            with closing_on_failure(sock):
                await loop.sock_connect(sock, addr)
        except OSError as exc:
            last = exc
            continue
        return sock
    raise last


async def open_tunnel(
    proxy: URL, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT
) -> socket.socket:
    """A socket tunnelled through ``proxy`` to ``host:port``, ready for the
    caller's first byte. Raises ProxyError, with what to do, on any failure."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    where = f"{proxy.host}:{proxy.port}"
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            sock = await _dial(proxy.host or "", proxy.port or 80)
    except (OSError, TimeoutError) as exc:
        raise ProxyError(f"cannot reach the proxy at {where}: {exc or 'timed out'}") from None
    try:
        with closing_on_failure(sock):
            async with asyncio.timeout(timeout):
                await loop.sock_sendall(sock, _connect_request(proxy, target))
                head = bytearray()
                while b"\r\n\r\n" not in head:
                    # Small reads: the proxy sends nothing after its answer until
                    # we speak, but a short read keeps the bound honest anyway.
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        raise ProxyError(
                            f"the proxy at {where} closed the connection during CONNECT"
                        )
                    head += chunk
                    if len(head) > MAX_ANSWER_BYTES:
                        raise ProxyError(
                            f"the proxy at {where} sent an oversized answer to CONNECT"
                        )
            answer, _, extra = bytes(head).partition(b"\r\n\r\n")
            _parse_answer(proxy, target, answer)
            if extra:
                # The hub never speaks first, so these bytes came from the proxy
                # and would corrupt whatever runs over the tunnel.
                raise ProxyError(f"the proxy at {where} sent data before the tunnel was used")
    except TimeoutError:
        raise ProxyError(
            f"the proxy at {where} did not answer CONNECT within {timeout:g} s"
        ) from None
    except OSError as exc:
        raise ProxyError(f"the connection to the proxy at {where} failed: {exc}") from None
    return sock
