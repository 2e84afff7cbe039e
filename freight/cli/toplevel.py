"""What ``freight`` knows about its commands before loading any of them:
which module defines each one, and the top level's help, so ``freight
--help`` and ``freight --version`` answer without importing the command
tree (typer, pydantic, aiohttp). tests/unit/test_startup.py checks that this
help is, byte for byte, what the command tree renders (and that the
variables named here are the ones freight.client.config reads)."""

from __future__ import annotations

DESCRIPTION = "Move files between machines that cannot reach each other directly, through a hub."
VERSION_HELP = "Print the version and exit."
PROXY_HELP = (
    "HTTP proxy for this command, http://HOST:PORT or http://USER:PASS@HOST:PORT, or "
    "'none' to connect directly; wins over the proxy saved at login and HTTPS_PROXY. "
    "Same as $FREIGHT_PROXY."
)
CA_FILE_HELP = (
    "Trust the CA certificates in this PEM file (chain and host name checked) instead "
    "of the pinned fingerprint, for this command. Same as $FREIGHT_CA_FILE."
)
OPTIONS = (
    ("--version", VERSION_HELP),
    ("--proxy URL", PROXY_HELP),
    ("--ca-file PEM", CA_FILE_HELP),
    ("--help", "Show this message and exit."),
)
# The options of ``freight`` itself that take a value (they may come
# before the command's name).
VALUE_OPTIONS = ("--proxy", "--ca-file")

# Every command in the order ``freight --help`` lists it: the modules of
# freight.cli it needs, and its one-line summary.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "version": ((), "Print the version."),
    "hub": (("hubcmd",), "Run a hub on one HTTPS port."),
    "login": (
        ("files",),
        "Log in to a hub and pin its certificate (trust on first use, like SSH).",
    ),
    "push": (("files",), "Upload files and folders to the hub."),
    "pull": (("files",), "Download a file or a folder from the hub."),
    "ls": (("files",), "List your files on the hub, or a folder on an agent (AGENT:/path)."),
    "rm": (("files",), "Delete files from the hub."),
    "passwd": (("users",), "Change your own password; your other logins are signed out."),
    "register": (
        ("users",),
        "Register an account of your own on a hub that allows it (freight hub --registration "
        "open|approval), pinning its certificate as freight login does. Says whether the "
        "account is active or waits for an administrator; then log in with freight login.",
    ),
    "logout": (
        ("users",),
        "Log out: the hub revokes this login (closing what it holds open) and it is "
        "forgotten here. If the hub cannot be reached nothing is forgotten: run it again later.",
    ),
    "send": (("relay",), "Send files to whoever has the code; prints the code and waits."),
    "receive": (("relay",), "Receive what a sender offers under CODE (resumes if run again)."),
    "connect": (
        ("relay",),
        "Open an end-to-end encrypted pipe to PEER's APP: standard input goes there, what "
        "comes back goes to standard output.",
    ),
    "listen": (("relay",), "Accept end-to-end encrypted pipes for APP (see connect)."),
    "cp": (
        ("agents",),
        "Copy files to or from an agent, like cp and scp: DEST names the copy, or is a folder "
        "to copy into (a trailing / demands one). Resumable: run it again. Existing files are "
        "replaced only with --overwrite (on an agent, only if it allows that).",
    ),
    "share": (("links",), "Share one of your files on the hub through a link; prints the link."),
    "fetch": (("links",), "Fetch a shared link into a file (resumes if run again)."),
    "daemon": (
        ("msg",),
        "Be this user's messaging host: stay attached to the hub and serve applications on "
        "msg.sock in the config folder (freight msg, the SDK's freight.messaging.connect).",
    ),
    "probe": (
        ("probe",),
        "Measure the path to the hub: capacity, available bandwidth and round-trip time.",
    ),
    "forward": (
        ("tunnel",),
        "Forward a local port through the hub, like ssh -L: every connection to it is carried "
        "end-to-end encrypted to DEST, which connects to TARGET.",
    ),
    "expose": (
        ("tunnel",),
        "Expose a port of this machine through the hub, like ssh -R, to the named accounts "
        "only: they reach it with freight forward PORT YOU:NAME.",
    ),
    "events": (
        ("observe",),
        "Show the hub's event log (admins), filtered and sorted, or as CSV.",
    ),
    "transfers": (
        ("observe",),
        "Show transfers in flight: pushes, pulls and relayed connections.",
    ),
    "status": (
        ("observe",),
        "Show the hub at a glance (admins): uptime, who is attached, throughput.",
    ),
    "loadtest": (
        ("loadtest",),
        "Run simulated clients from a scenario sheet against a hub, with faults; live figures, "
        "then a summary with each expect clause's verdict (exit 1 if any failed).",
    ),
    "admin": (("files", "relay", "tunnel", "observe"), "Hub administration (admin accounts only)."),
    "users": (("users",), "Accounts on the hub (admin accounts only)."),
    "keys": (
        ("users",),
        "Identity keys your devices prove themselves with (connect, listen, agents).",
    ),
    "apps": (
        ("users",),
        "Application names hosts listen on, as the hub approves them (freight hub "
        "--app-approval; admin accounts only).",
    ),
    "agents": (("agents", "tunnel"), "Enrolled agents (admin accounts only)."),
    "agent": (("agentcmd",), "Run this machine as an agent."),
    "collect": (("collect",), "Collection policies (admin accounts only)."),
    "collected": (("collect",), "What collection has gathered."),
    "links": (
        ("links",),
        "Links you shared and links shared with you; revoke one with: freight links revoke ID.",
    ),
    "msg": (
        ("msg",),
        "Send and receive messages between applications on hosts (end-to-end encrypted). "
        "Uses this user's freight daemon when one runs; otherwise the command is its own host.",
    ),
    "job": (
        ("job",),
        "Transfer jobs: the sender proposes a manner (direct, relay, by reference), the "
        "receiver accepts or refuses it; each job ends with its bytes and BLAKE3 checked.",
    ),
    "conns": (
        ("observe",),
        "Your live relayed connections; end one with: freight conns kill ID.",
    ),
}


def command_name(args: list[str]) -> str | None:
    """The command ``args`` run (the first word after freight's own
    options), or None when there is none or freight's own --help comes first."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--help":
            return None
        if arg in VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg
    return None


def help_text() -> str:
    """``freight --help``, as the command tree prints it at this width."""
    from .helptext import compose, fill_usage

    return compose(
        fill_usage("Usage: freight [OPTIONS] COMMAND [ARGS]..."),
        [DESCRIPTION],
        [("Options", list(OPTIONS)), ("Commands", [(n, s) for n, (_, s) in COMMANDS.items()])],
    )
