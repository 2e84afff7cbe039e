"""Stored file names: relative POSIX paths that cannot escape a folder."""

from __future__ import annotations

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
