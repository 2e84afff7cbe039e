"""The root of Freight's exception tree and the protocol's own errors.

The whole tree is drawn in :mod:`freight.errors`; this module holds the part
the sans-I/O core needs so that ``freight.protocol`` imports nothing else from
the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

# The documented exit codes (README "Errors are one line..."); every class's
# ``exit_code`` is one of them.
EXIT_CODES: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "other failure",
        2: "usage",
        3: "authentication",
        4: "certificate",
        5: "protocol",
        6: "network",
        7: "refused by the hub",
        8: "local disk",
        9: "no recipient",
        130: "interrupted",
    }
)

# The error-code registry: each wire ``code`` and the one class that stands
# for it, filled as classes are defined (FreightError.__init_subclass__).
_REGISTRY: dict[str, type[FreightError]] = {}
# (code, first class, second class) for a code claimed twice; a test fails on it.
_CLAIMED_TWICE: list[tuple[str, type[FreightError], type[FreightError]]] = []


def registered() -> Mapping[str, type[FreightError]]:
    """Every error code defined so far and its class (read-only)."""
    return MappingProxyType(_REGISTRY)


def claimed_twice() -> list[tuple[str, type[FreightError], type[FreightError]]]:
    """Codes two different classes claimed (the first one keeps the code)."""
    return list(_CLAIMED_TWICE)


def _register(cls: type[FreightError]) -> None:
    code = cls.__dict__.get("code")
    if not isinstance(code, str):  # no code of its own: it carries one per instance
        return
    first = _REGISTRY.setdefault(code, cls)
    if first is cls:
        return
    if (first.__module__, first.__qualname__) == (cls.__module__, cls.__qualname__):
        _REGISTRY[code] = cls  # the same class defined again (a reloaded module)
    else:
        _CLAIMED_TWICE.append((code, first, cls))


class FreightError(Exception):
    """Base of every error Freight raises on purpose.

    ``code`` is a stable machine-readable name (it travels in Error frames),
    ``exit_code`` is what the CLI exits with, and ``hint`` is one line telling
    the user what to do about it.
    """

    code: str = "error"
    exit_code: int = 1
    hint: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    def user_message(self) -> str:
        """One line for a person: what happened and, if known, what to do."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


_register(FreightError)


class ProtocolError(FreightError):
    """The bytes on the wire broke the Freight protocol."""

    code = "protocol_error"
    exit_code = 5
    hint = "run the command again; if it happens again, report it with the hub's log"


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow (our bug)."""

    code = "local_protocol_error"


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of order (the peer's fault)."""

    code = "remote_protocol_error"


class FrameTooLarge(RemoteProtocolError):
    """A frame exceeded the negotiated size limits."""

    code = "frame_too_large"


class IntegrityError(RemoteProtocolError):
    """Data failed a checksum or an authentication tag."""

    code = "integrity_error"


class VersionMismatch(ProtocolError):
    """The peer speaks an incompatible protocol version."""

    code = "version_mismatch"
    exit_code = 5
    hint = "upgrade the older side so both run the same major version"
