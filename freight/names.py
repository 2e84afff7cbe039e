"""Names people choose: stored file names (relative POSIX paths that cannot
escape a folder), account names and new passwords."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from .errors import UsageError

MAX_NAME_BYTES = 1024


def check_name(name: str) -> str:
    """Validate a stored file name (``a/b/c.txt``); return its normal form.

    Names are relative POSIX paths with no empty, ``.`` or ``..`` components,
    no NUL or backslash, so no name can escape the user's folder.
    """
    if not name or len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"invalid name {name!r}: empty or longer than {MAX_NAME_BYTES} bytes")
    if "\x00" in name or "\\" in name or name.startswith("/"):
        raise UsageError(f"invalid name {name!r}: must be a relative path without '\\' or NUL")
    parts = PurePosixPath(name).parts
    if any(p in ("", ".", "..") for p in parts) or name.endswith("/"):
        raise UsageError(f"invalid name {name!r}: '.' and '..' components are not allowed")
    return "/".join(parts)


USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_user_name(name: str) -> str:
    """Validate an account name: 1-64 of ``A-Z a-z 0-9 _ . -`` (not ``.``/``..``)."""
    if not USER_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"invalid user name {name!r}: use 1-64 characters from A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return name


def check_new_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsageError(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password
