"""Freight's one exception tree. Every error knows its exit code, a stable
``code`` (it travels in Error frames and in the hub's JSON answers) and a
one-line hint for people.

The tree as the code defines it (``exit N`` where a class changes its
parent's exit code; the module where it is not this one).
``tests/unit/test_errors.py`` fails when this drawing and the code differ:

    FreightError                         exit 1   protocol.errors
    ├── ProtocolError                    exit 5   protocol.errors
    │   ├── LocalProtocolError                    protocol.errors
    │   │   ├── InvalidTransition                 protocol.commands
    │   │   └── JobTransitionError                protocol.jobs
    │   ├── RemoteProtocolError                   protocol.errors
    │   │   ├── FrameTooLarge                     protocol.errors
    │   │   ├── IntegrityError                    protocol.errors
    │   │   ├── FlowViolation                     protocol.e2e
    │   │   ├── MalformedTransfer                 protocol.sendrecv
    │   │   ├── MalformedFileMessage              protocol.files
    │   │   ├── AttachError                       protocol.numbered
    │   │   ├── BadHostKey                        protocol.msgkeys
    │   │   ├── MalformedJobMessage               protocol.jobs
    │   │   ├── MalformedProbe                    protocol.probe
    │   │   ├── MalformedTunnelMessage            protocol.tunnel
    │   │   ├── MalformedDatagram                 protocol.datagrams
    │   │   │   └── DatagramTooLarge              protocol.datagrams
    │   │   └── WorkerFailed                      loadtest.workers
    │   ├── VersionMismatch                       protocol.errors
    │   ├── WrongCode                    exit 3   protocol.e2e
    │   └── PeerKeyRejected              exit 3   protocol.e2e
    ├── UsageError                       exit 2
    │   ├── SourceChanged
    │   ├── SelfConnect
    │   ├── UnsafePath                            client.safefs
    │   ├── FileExists                            client.safefs
    │   └── ScenarioError                         loadtest.scenario
    ├── ConfigError                      exit 2
    ├── AuthError                        exit 3
    │   ├── BadCredentials
    │   ├── AgentRefused
    │   ├── RateLimited
    │   ├── Forbidden
    │   │   ├── OutsideRoots                      agent.roots
    │   │   └── AwaitingApproval
    │   ├── NotLoggedIn
    │   └── CodeBurned
    ├── TLSError                         exit 4
    │   └── FingerprintMismatch
    ├── NetworkError                     exit 6
    │   ├── StalledError
    │   ├── NodeUnavailable
    │   ├── HeldElsewhere
    │   ├── ChannelClosed                         transport.channel
    │   │   └── WireDamaged                       transport.dataconn
    │   ├── ProxyError                            transport.proxy
    │   │   └── ProxyRefused                      transport.proxy
    │   ├── DataPathUnavailable                   transport.dataconn
    │   └── HTTPAttachRefused                     transport.httpchan
    ├── RemoteError                      exit 7
    │   ├── Elsewhere
    │   ├── NotFound
    │   ├── Gone
    │   ├── Conflict
    │   ├── DiskFull
    │   ├── QuotaExceeded
    │   ├── LimitReached
    │   ├── Aborted
    │   ├── UnknownUser
    │   ├── CodeUnknown
    │   ├── PeerAbsent
    │   ├── ConnectionEnded
    │   │   ├── SenderRestarted
    │   │   └── TunnelRefused                     client.tunnels
    │   ├── RelayRefused                          hub.relayconn
    │   ├── TransferRefused                       client.sendrecv
    │   ├── Busy
    │   ├── NoRecipient                  exit 9
    │   └── JobFailed
    │       └── JobMismatch
    ├── StorageError                     exit 8
    └── RegistrationRefused              exit 2   protocol.msgtables

The error-code registry is ``registered()`` (from ``freight.protocol.errors``):
each class with a ``code`` of its own registers it when it is defined, and a
code claimed by two classes fails the tests. ``code_to_error()`` turns a wire
code back into its class, so a hub-side failure is raised on the client as
the same type; ``from_exception()`` maps the exceptions of the libraries
underneath (OS, TLS, aiohttp, msgspec) into the tree at the CLI's and the
SDK's boundary. ``RelayRefused`` carries the code of each refusal it stands
for and registers none.
"""

from __future__ import annotations

import errno
import sys
from types import ModuleType

from .protocol.errors import (
    EXIT_CODES,
    FrameTooLarge,
    FreightError,
    IntegrityError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    VersionMismatch,
    claimed_twice,
    registered,
)

__all__ = [
    "EXIT_CODES",
    "Aborted",
    "AuthError",
    "AwaitingApproval",
    "BadCredentials",
    "Busy",
    "ConfigError",
    "Conflict",
    "DiskFull",
    "Elsewhere",
    "FingerprintMismatch",
    "Forbidden",
    "FrameTooLarge",
    "FreightError",
    "Gone",
    "HeldElsewhere",
    "IntegrityError",
    "LimitReached",
    "LocalProtocolError",
    "NetworkError",
    "NoRecipient",
    "NodeUnavailable",
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
    "claimed_twice",
    "code_to_error",
    "from_exception",
    "registered",
]


class UsageError(FreightError):
    """The command was used wrongly."""

    code = "usage"
    exit_code = 2
    hint = "see: freight COMMAND --help"


class SourceChanged(UsageError):
    """The source changed since the interrupted attempt; starting over."""

    code = "source_changed"
    hint = "the transfer starts over from the beginning"


class ConfigError(FreightError):
    """Local configuration is missing or unreadable."""

    code = "config"
    exit_code = 2
    hint = "check $FREIGHT_CONFIG_DIR, or log in again: freight login URL --user NAME"


class AuthError(FreightError):
    """Authentication failed."""

    code = "auth"
    exit_code = 3
    hint = "log in again: freight login URL --user NAME"


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
    hint = "wait a little (the lockout doubles with each failure) and try again"

    def __init__(
        self,
        message: str = "",
        *,
        hint: str | None = None,
        retry_after: float = 0.0,
        busy_node: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
        # A node of a cluster at its attach bound: it took nothing, and
        # another node may take the attachment instead.
        self.busy_node = busy_node


def retry_after_seconds(header: str) -> float:
    """A Retry-After header in seconds (0 when absent or a date)."""
    try:
        return max(0.0, float(header))
    except ValueError:
        return 0.0


def busy_node(message: str, retry_after_header: str) -> RateLimited:
    """A node's 429 to an attachment: at its attach bound, it took nothing
    (another node may take it instead); wait as its Retry-After says."""
    return RateLimited(
        message,
        hint="try again in a moment",
        retry_after=retry_after_seconds(retry_after_header),
        busy_node=True,
    )


class Forbidden(AuthError):
    """This account may not do that."""

    code = "forbidden"
    hint = "ask an admin"


class AwaitingApproval(Forbidden):
    """The password is right, but the account (or application) waits for an
    administrator's approval."""

    code = "awaiting_approval"
    hint = "ask an admin to approve it (freight users approve NAME)"


class NotLoggedIn(AuthError):
    """Not logged in to a hub, or the login expired."""

    code = "not_logged_in"
    hint = "run: freight login URL --user NAME"


class TLSError(FreightError):
    """The TLS connection to the hub could not be verified."""

    code = "tls"
    exit_code = 4
    hint = "check the address; if the hub's certificate changed on purpose, log in again"


class FingerprintMismatch(TLSError):
    """The hub's certificate does not match the pinned fingerprint."""

    code = "fingerprint_mismatch"


class NetworkError(FreightError):
    """The hub could not be reached."""

    code = "network"
    exit_code = 6
    hint = "check the address and that the hub is running; run the command again to resume"
    # True when no connection was made at all: another node of a cluster may
    # take the request instead, and it cannot have been done twice.
    unreached = False


class StalledError(NetworkError):
    """No progress was acknowledged within the stall timeout."""

    code = "stalled"


class NodeUnavailable(NetworkError):
    """This hub node does not serve now (an admin drains it, or it cannot
    reach the cluster's database): a client goes to another node."""

    code = "node_unavailable"
    hint = "log in with several node addresses (freight login https://A,https://B) to move on"


class HeldElsewhere(NetworkError):
    """Another hub node is still receiving this upload (its lease has not
    lapsed yet): trying again shortly resumes it here."""

    code = "held_elsewhere"


class RemoteError(FreightError):
    """The hub refused or failed the request."""

    code = "remote"
    exit_code = 7
    hint = "the message says why; run the command again once that is resolved"


class Elsewhere(RemoteError):
    """The far end of a connection is attached to another node of the
    cluster, and this client's other connections keep it where it is."""

    code = "elsewhere"
    hint = "use another client (a separate freight command) for this peer"


class NotFound(RemoteError):
    """No such file on the hub."""

    code = "not_found"
    hint = "run: freight ls"


class Gone(RemoteError):
    """What was asked for existed but is no longer there as it was."""

    code = "gone"
    hint = "ask for a new link"


class Conflict(RemoteError):
    """The request conflicts with the hub's state."""

    code = "conflict"
    hint = "something else holds it right now; try again when it is done"


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
    hint = "run the same command again to resume"


class UnknownUser(RemoteError):
    """No such user on the hub."""

    code = "unknown_user"
    hint = "check the user name with whoever runs the other end"


class SelfConnect(UsageError):
    """A connection needs two different accounts."""

    code = "self_connect"
    hint = "log in as another account on one of the two ends"


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
    hint = "start the other end, then run the command again"


class ConnectionEnded(RemoteError):
    """The relayed connection was ended by the peer, the hub or an admin."""

    code = "connection_ended"
    hint = "open a new connection"


class SenderRestarted(ConnectionEnded):
    """The program offering the code started again (claim anew to resume)."""

    code = "sender_restarted"


class Busy(RemoteError):
    """The recipients' queues are full (a slow consumer): the message was
    offered until its timeout and not taken."""

    code = "busy"
    hint = "send more slowly, or try again once the receiving application catches up"


class JobFailed(RemoteError):
    """A transfer job ended without its files: every manner was refused or
    failed (the reasons are in the message and in ``freight job show``)."""

    code = "job_failed"
    hint = "see the attempts and their reasons: freight job show ID"


class JobMismatch(JobFailed):
    """What a job's receiver holds differs from what its sender declared."""

    code = "job_mismatch"
    hint = "send the files again; see: freight job show ID"


class NoRecipient(RemoteError):
    """A message reached no recipient; ``reason`` says why (no_host,
    no_app, no_interest, ticket_gone, or another reason the hub gave)."""

    code = "no_recipient"
    exit_code = 9
    hint = "check the destination, the application name and the message type"

    def __init__(self, message: str = "", *, hint: str | None = None, reason: str = "") -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class StorageError(FreightError):
    """A local file could not be read or written."""

    code = "storage"
    exit_code = 8
    hint = "check the free space and the permissions of the local path"


def code_to_error(code: str, message: str, *, hint: str | None = None) -> FreightError:
    """The exception a wire error ``code`` stands for (a plain RemoteError,
    naming the code, when no class has it). ``hint`` replaces the class's
    own (``""`` when ``message`` already ends with one)."""
    cls = registered().get(code)
    if cls is None or cls is FreightError:
        return RemoteError(f"{message} [{code}]", hint=hint)
    return cls(message, hint=hint)


# OSErrors about the network rather than the local disk.
_NETWORK_ERRNOS = frozenset(
    {
        errno.EADDRINUSE,
        errno.EADDRNOTAVAIL,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
    }
)


def from_exception(exc: BaseException) -> FreightError | None:
    """The Freight error for an exception of a library underneath (the OS,
    TLS, aiohttp, msgspec), or None for one that is not Freight's to explain
    (a bug, or an exception of the caller's own). A FreightError is itself."""
    if isinstance(exc, FreightError):
        return exc
    # ssl, msgspec and socket are looked up, not imported: an exception of a
    # module nobody imported was not raised (and a command that needs none of
    # them does not pay for loading them).
    ssl, msgspec, socket = _loaded("ssl"), _loaded("msgspec"), _loaded("socket")
    # aiohttp keeps the TLS failure under its own exception.
    tls = exc if ssl and isinstance(exc, ssl.SSLError) else getattr(exc, "certificate_error", None)
    if ssl and isinstance(tls, ssl.SSLCertVerificationError):
        return TLSError(
            f"the hub's certificate could not be verified: {getattr(tls, 'verify_message', None) or tls}"
        )
    if ssl and isinstance(tls, ssl.SSLError):
        return TLSError(f"TLS failed: {getattr(tls, 'reason', None) or tls}")
    if msgspec and isinstance(exc, msgspec.MsgspecError):
        return RemoteProtocolError(f"a malformed message: {exc}")
    if (
        type(exc).__module__.split(".")[0] == "aiohttp"
        or isinstance(exc, ConnectionError | TimeoutError)
        or (socket and isinstance(exc, socket.gaierror))
        or (isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS)
    ):
        return NetworkError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename is not None else ""
        return StorageError(f"{exc.strerror or exc}{where}")
    return None


def _loaded(name: str) -> ModuleType | None:
    return sys.modules.get(name)
