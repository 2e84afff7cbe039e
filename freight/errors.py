"""Freight's one exception tree. Every error knows its exit code, a stable
``code`` that travels in Error frames, and a one-line hint for people.

    FreightError                         exit 1
    ├── ProtocolError                    exit 5   (freight.protocol.errors)
    │   ├── LocalProtocolError
    │   ├── RemoteProtocolError
    │   │   ├── FrameTooLarge
    │   │   └── IntegrityError
    │   └── VersionMismatch
    ├── UsageError                       exit 2   bad arguments or local input
    │   └── SourceChanged
    ├── ConfigError                      exit 2   missing login, unreadable config
    ├── AuthError                        exit 3
    │   ├── BadCredentials
    │   ├── RateLimited
    │   ├── Forbidden
    │   └── NotLoggedIn
    ├── TLSError                         exit 4
    │   └── FingerprintMismatch
    ├── NetworkError                     exit 6   hub unreachable after retries
    │   └── StalledError
    ├── RemoteError                      exit 7   the hub refused or failed a request
    │   ├── NotFound
    │   ├── Conflict
    │   ├── DiskFull
    │   ├── QuotaExceeded
    │   ├── LimitReached
    │   └── Aborted
    └── StorageError                     exit 8   local disk problems

``code_to_error()`` turns a wire code back into the matching class so that a
hub-side failure is raised on the client as the same type.
"""

from __future__ import annotations

from .protocol.errors import (
    FrameTooLarge,
    FreightError,
    IntegrityError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    VersionMismatch,
)

__all__ = [
    "Aborted",
    "AuthError",
    "BadCredentials",
    "ConfigError",
    "Conflict",
    "DiskFull",
    "FingerprintMismatch",
    "Forbidden",
    "FrameTooLarge",
    "FreightError",
    "IntegrityError",
    "LimitReached",
    "LocalProtocolError",
    "NetworkError",
    "NotFound",
    "NotLoggedIn",
    "ProtocolError",
    "QuotaExceeded",
    "RateLimited",
    "RemoteError",
    "RemoteProtocolError",
    "SourceChanged",
    "StalledError",
    "StorageError",
    "TLSError",
    "UsageError",
    "VersionMismatch",
    "code_to_error",
]


class UsageError(FreightError):
    """The command was used wrongly."""

    code = "usage"
    exit_code = 2


class SourceChanged(UsageError):
    """The source changed since the interrupted attempt; starting over."""

    code = "source_changed"


class ConfigError(FreightError):
    """Local configuration is missing or unreadable."""

    code = "config"
    exit_code = 2


class AuthError(FreightError):
    """Authentication failed."""

    code = "auth"
    exit_code = 3


class BadCredentials(AuthError):
    """Wrong user name or password."""

    code = "bad_credentials"
    hint = "check the user name and password"


class AgentRefused(AuthError):
    """The hub does not accept this agent's key."""

    code = "agent_refused"
    hint = "an admin may have removed or disabled it; enrol again: freight agent enroll"


class RateLimited(AuthError):
    """Too many failed logins; wait before trying again. ``retry_after``:
    seconds to wait (the hub's Retry-After), 0 when not known."""

    code = "rate_limited"

    def __init__(
        self, message: str = "", *, hint: str | None = None, retry_after: float = 0.0
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class Forbidden(AuthError):
    """This account may not do that."""

    code = "forbidden"
    hint = "ask an admin"


class NotLoggedIn(AuthError):
    """Not logged in to a hub, or the login expired."""

    code = "not_logged_in"
    hint = "run: freight login URL --user NAME"


class TLSError(FreightError):
    """The TLS connection to the hub could not be verified."""

    code = "tls"
    exit_code = 4


class FingerprintMismatch(TLSError):
    """The hub's certificate does not match the pinned fingerprint."""

    code = "fingerprint_mismatch"


class NetworkError(FreightError):
    """The hub could not be reached."""

    code = "network"
    exit_code = 6
    hint = "check the address and that the hub is running; run the command again to resume"


class StalledError(NetworkError):
    """No progress was acknowledged within the stall timeout."""

    code = "stalled"


class RemoteError(FreightError):
    """The hub refused or failed the request."""

    code = "remote"
    exit_code = 7


class NotFound(RemoteError):
    """No such file on the hub."""

    code = "not_found"
    hint = "run: freight ls"


class Conflict(RemoteError):
    """The request conflicts with the hub's state."""

    code = "conflict"


class DiskFull(RemoteError):
    """The hub has no space left for this file."""

    code = "disk_full"
    hint = "free space on the hub or ask its admin; nothing was published"


class QuotaExceeded(RemoteError):
    """The upload would take the account over its disk quota on the hub."""

    code = "quota_exceeded"
    hint = "delete files on the hub (freight rm NAME) or ask an admin to raise the quota"


class LimitReached(RemoteError):
    """The hub refused: this account is at one of its limits (connections,
    streams, relayed connections, codes)."""

    code = "limit_reached"
    hint = "close or finish some first, or ask the hub's admin to raise the limit"


class Aborted(RemoteError):
    """The other side aborted the transfer."""

    code = "aborted"


class UnknownUser(RemoteError):
    """No such user on the hub."""

    code = "unknown_user"
    hint = "check the user name with whoever runs the other end"


class SelfConnect(UsageError):
    """A connection needs two different accounts."""

    code = "self_connect"


class CodeUnknown(RemoteError):
    """The code has expired or was never issued."""

    code = "code_unknown"
    hint = "ask the sender for a new code"


class CodeBurned(AuthError):
    """Too many failed claims of a code: it no longer works."""

    code = "code_burned"
    hint = "start freight send again for a new code"


class PeerAbsent(RemoteError):
    """The other end did not turn up in time."""

    code = "peer_absent"


class ConnectionEnded(RemoteError):
    """The relayed connection was ended by the peer, the hub or an admin."""

    code = "connection_ended"


class SenderRestarted(ConnectionEnded):
    """The program offering the code started again (claim anew to resume)."""

    code = "sender_restarted"


class StorageError(FreightError):
    """A local file could not be read or written."""

    code = "storage"
    exit_code = 8


def _all_subclasses(cls: type[FreightError]) -> list[type[FreightError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def code_to_error(code: str, message: str) -> FreightError:
    """The exception a wire error ``code`` stands for."""
    for cls in _all_subclasses(FreightError):
        if cls.code == code:
            return cls(message)
    return RemoteError(f"{message} [{code}]")
