"""The root of Freight's exception tree and the protocol's own errors.

The whole tree is drawn in :mod:`freight.errors`; this module holds the part
the sans-I/O core needs so that ``freight.protocol`` imports nothing else from
the package.
"""

from __future__ import annotations


class FreightError(Exception):
    """Base of every error Freight raises on purpose.

    ``code`` is a stable machine-readable name (it travels in Error frames),
    ``exit_code`` is what the CLI exits with, and ``hint`` is one line telling
    the user what to do about it.
    """

    code: str = "error"
    exit_code: int = 1
    hint: str = ""

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


class ProtocolError(FreightError):
    """The bytes on the wire broke the Freight protocol."""

    code = "protocol_error"
    exit_code = 5


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
