"""The host's own IP addresses, as a direct listener advertises them.

IPv4 addresses come from the ``SIOCGIFCONF`` ioctl (every address of every
interface that is up, aliases included), IPv6 ones from
``/proc/net/if_inet6``; elsewhere than on Linux, from resolving the host's
own name. Loopback, link-local, multicast and unspecified addresses are left
out: a link-local address needs an interface scope the other host cannot
know, and loopback is added by the caller, last.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SIOCGIFCONF: Final = 0x8912
IFREQ_BYTES: Final = 40  # struct ifreq on 64-bit Linux
MAX_INTERFACES: Final = 256
IF_INET6: Final = Path("/proc/net/if_inet6")


def usable(addr: IPAddress) -> bool:
    """An address another host may be able to reach."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified)


def ipv4_addresses() -> list[ipaddress.IPv4Address]:
    """Every IPv4 address of an interface that is up (Linux ioctl)."""
    size = IFREQ_BYTES * MAX_INTERFACES
    names = array.array("B", bytes(size))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifconf = struct.pack("iL", size, names.buffer_info()[0])
        got = struct.unpack("iL", fcntl.ioctl(s.fileno(), SIOCGIFCONF, ifconf))[0]
    raw = names.tobytes()
    out = []
    for offset in range(0, got - IFREQ_BYTES + 1, IFREQ_BYTES):
        # ifr_name[16], then a sockaddr_in: family, port, address.
        family = struct.unpack_from("H", raw, offset + 16)[0]
        if family == socket.AF_INET:
            out.append(ipaddress.IPv4Address(raw[offset + 20 : offset + 24]))
    return out


def ipv6_addresses(text: str) -> list[ipaddress.IPv6Address]:
    """The addresses in ``/proc/net/if_inet6`` text (32 hex digits first)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or len(fields[0]) != 32:
            continue
        with contextlib.suppress(ValueError):
            out.append(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return out


def _by_name() -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    out: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:
        with contextlib.suppress(ValueError):
            out.append(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]))
    return out


def host_addresses(*, ipv6: bool = True) -> list[IPAddress]:
    """This host's usable addresses, IPv4 first, without duplicates."""
    found: list[IPAddress] = []
    try:
        found.extend(ipv4_addresses())
    except OSError:
        found.extend(a for a in _by_name() if a.version == 4)
    if ipv6:
        try:
            found.extend(ipv6_addresses(IF_INET6.read_text()))
        except OSError:
            found.extend(a for a in _by_name() if a.version == 6)
    return list(dict.fromkeys(a for a in found if usable(a)))
