"""Names people choose: stored file names (relative POSIX paths that cannot
escape a folder), account names and new passwords.

Stored names are shown later on terminals and in logs, so none may hold a
control character (C0, DEL, C1: terminal escape sequences start with ESC or
CSI) or a bidirectional override that makes a name read as another."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from .errors import UsageError

MAX_NAME_BYTES = 1024
SHOWN_CHARS = 40  # of a refused name, in the error message
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def shown(name: str) -> str:
    """A name as an error message quotes it: escaped, and cut if long
    (a hostile name may be a megabyte)."""
    if len(name) <= SHOWN_CHARS:
        return repr(name)
    return repr(name[:SHOWN_CHARS]) + f"… ({len(name)} characters)"


def has_control(name: str) -> bool:
    return any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in name)


def check_name(name: str) -> str:
    """Validate a stored file name (``a/b/c.txt``); return its normal form.

    Names are relative POSIX paths with no empty, ``.`` or ``..`` components
    and no backslash, so no name can escape the user's folder, and no control
    character (NUL included).
    """
    if not name or len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"invalid name {shown(name)}: empty or longer than {MAX_NAME_BYTES} bytes")
    if has_control(name):
        raise UsageError(
            f"invalid name {shown(name)}: a control character or direction override "
            "(rename the file, or give another name with --as)"
        )
    if "\\" in name or name.startswith("/"):
        raise UsageError(f"invalid name {shown(name)}: must be a relative path without '\\'")
    parts = PurePosixPath(name).parts
    if any(p in ("", ".", "..") for p in parts) or name.endswith("/"):
        raise UsageError(f"invalid name {shown(name)}: '.' and '..' components are not allowed")
    return "/".join(parts)


USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_user_name(name: str) -> str:
    """Validate an account name: 1-64 of ``A-Z a-z 0-9 _ . -`` (not ``.``/``..``)."""
    if not USER_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"invalid user name {shown(name)}: use 1-64 characters from A-Z, a-z, 0-9, "
            "'_', '.', '-'"
        )
    return name


def check_new_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsageError(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password
