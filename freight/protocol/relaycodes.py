"""Every code the hub's relay answers with, and the reasons a connection ends.

Clients branch on these codes, never on the English ``message`` beside them
(docs/protocol.md §12). A code travels in ``Error.code`` (the answer to a
``Listen``/``Unlisten``/``Dial``/``Offer``/``Claim`` with its ``rid``) or in
``Hangup.code`` (why connection ``cid`` ended). Codes are stable: a new reason
gets a new code, an old code never changes meaning.
"""

from __future__ import annotations

import enum
from typing import Final


class RefusalCode(enum.StrEnum):
    """Why the hub refused a relay request (``Error.code`` with its ``rid``)."""

    USAGE = "usage"  # a request the protocol does not allow (e.g. Listen on code:…)
    LIMIT_REACHED = "limit_reached"  # an account cap: listens, connections or codes
    CONFLICT = "conflict"  # the name/connection/code is held by someone else
    UNKNOWN_USER = "unknown_user"  # no such (enabled) account to dial
    SELF_CONNECT = "self_connect"  # a dial to one's own account
    CODE_UNKNOWN = "code_unknown"  # expired or never offered
    FORBIDDEN = "forbidden"  # resuming someone else's code
    CODE_BURNED = "code_burned"  # too many failed claims: the code stopped working
    ELSEWHERE = "elsewhere"  # another node of the cluster holds it (Error.at: that node)


class HangupCode(enum.StrEnum):
    """Why a connection ended (``Hangup.code``); ``by`` says who ended it."""

    CLOSED = "closed"  # an end closed it normally
    ABORTED = "aborted"  # an end stopped with an error
    REPLACED = "replaced"  # a new dial of the same pair replaced it
    SENDER_RESTARTED = "sender_restarted"  # the code's sending process offered it again
    RECEIVER_RESTARTED = "receiver_restarted"  # the code's receiving process claimed again
    PEER_GONE = "peer_gone"  # an end stayed away longer than the grace period
    FLOW_VIOLATION = "flow_violation"  # a sender ignored Pause
    KILLED = "killed"  # an admin ended it
    NOT_LISTENING = "not_listening"  # the accepting client no longer listens
    BUSY = "busy"  # too many connections wait to be accepted
    CODE_BURNED = "code_burned"  # the code stopped working while it was pending
    WRONG_CODE = "wrong_code"  # the claimant's code did not verify


# Who ended a connection (``Hangup.by``).
BY_PEER: Final = "peer"
BY_HUB: Final = "hub"
BY_ADMIN: Final = "admin"

# Codes after which the receiving side of ``freight receive`` claims again and
# resumes (the offering process started again), instead of failing.
RESUMABLE_HANGUPS: Final = frozenset({HangupCode.SENDER_RESTARTED})
