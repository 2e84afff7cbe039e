"""What the hub and its agents agree on outside the frames: how an agent
signs its login, and the names under which agent commands and collection
uploads park files in an account's store (docs/protocol.md 13).

Both sides import these from here, so an agent never imports the hub.
"""

from __future__ import annotations

# A ``send_file`` command's upload lands in the agent's files as SENT_PREFIX + ID,
# a ``receive_file`` command's download waits there as INBOX_PREFIX + ID.
SENT_PREFIX = ".sent/"
INBOX_PREFIX = ".inbox/"
# A collection upload of content DIGEST lands as UPLOAD_PREFIX + DIGEST.
UPLOAD_PREFIX = ".collect/"
# Commands that move a file between an agent and the hub's store.
FILE_COMMANDS = ("send_file", "receive_file")
# Every command an admin may queue for an agent (the collector also queues ``upload``).
COMMAND_KINDS = (
    "list_dir",
    "reload_config",
    "ping",
    "rescan",
    "resend_offers",
    "forward_allow",
    *FILE_COMMANDS,
)


def login_message(name: str, challenge: str, fingerprint: str) -> bytes:
    """What an agent signs to log in: its name, the hub's fresh challenge
    and the fingerprint of the certificate it sees (tls-server-end-point
    channel binding: a signature made through a man-in-the-middle names the
    wrong certificate and is refused)."""
    return f"freight agent login v1\0{name}\0{challenge}\0{fingerprint}".encode()
