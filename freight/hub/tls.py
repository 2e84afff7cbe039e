"""The hub's TLS certificate: self-signed on first start and pinned by
clients, or one given with ``freight hub --cert/--key`` (e.g. signed by a CA
the clients trust with ``--ca-file``)."""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import ConfigError

# Mozilla's "intermediate" profile: in TLS 1.2 only ECDHE with AES-GCM or
# ChaCha20-Poly1305 (no CBC, no static RSA); TLS 1.3's suites are all AEAD.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
# Key-exchange groups offered (OpenSSL's default adds X448, P-521 and the
# FFDHE groups, which a scanner flags).
GROUPS = b"X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is this macro


def fingerprint_der(der: bytes) -> str:
    """``SHA256:<hex>`` of a DER certificate, as clients pin it."""
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def ensure_certificate(cert_path: Path, key_path: Path) -> bool:
    """Create a self-signed certificate unless one exists. True if created."""
    if cert_path.exists() and key_path.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"freight hub {host}")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(host),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The listener's TLS context. A certificate that cannot be served (a
    missing file, bad PEM, a key that does not match) is a ConfigError
    naming the files, not a traceback at start-up."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    if not set_groups(ctx, GROUPS):
        ctx.set_ecdh_curve("prime256v1")  # one usual group rather than OpenSSL's list
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigError(
            f"cannot serve the certificate {cert_path} with the key {key_path}: "
            f"{getattr(exc, 'strerror', None) or exc}",
            hint="give a PEM certificate (chain) and its matching PEM private key",
        ) from None
    return ctx


def set_groups(ctx: ssl.SSLContext, groups: bytes) -> bool:
    """Restrict the key-exchange groups of ``ctx``. Python's ssl module can
    only set a single ECDH curve, so this calls OpenSSL's
    ``SSL_CTX_set1_groups_list`` on the ``SSL_CTX`` the context wraps (the
    first field after the object header). The pointer is used only once
    ``SSL_CTX_get_options`` through it agrees with ``ctx.options``; False
    if anything does not fit (another interpreter or OpenSSL)."""
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        get_options = lib.SSL_CTX_get_options
        get_options.restype = ctypes.c_uint64
        get_options.argtypes = [ctypes.c_void_p]
        ctrl = lib.SSL_CTX_ctrl
        ctrl.restype = ctypes.c_long
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr or get_options(ptr) != int(ctx.options):
            return False
        return bool(ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, groups) == 1)
    except (AttributeError, OSError, TypeError, ValueError):
        return False
