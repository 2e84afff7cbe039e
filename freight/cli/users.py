"""Accounts: ``freight users ls|add|disable|enable|pending|approve|refuse|
passwd|role`` (admins), ``freight register`` (anyone, where the hub allows
it), and for anyone's own account ``freight passwd``, ``freight logout`` and
``freight keys ls|rm`` (admins may name another account with ``--user``)."""

from __future__ import annotations

import getpass
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from ..client.api import Client
from ..client.config import ClientConfig
from ..client.relay import identity_key
from ..errors import UsageError
from ..names import check_new_password, check_user_name
from ..protocol.e2e import public_of
from ..units import UNLIMITED_WORDS, format_bytes, parse_rate, parse_size
from .common import HubOpt, JsonOpt, on_hub
from .output import err_console, print_json

users_app = typer.Typer(help="Accounts on the hub (admin accounts only).", no_args_is_help=True)
apps_app = typer.Typer(
    help="Application names hosts listen on, as the hub approves them (freight hub "
    "--app-approval; admin accounts only).",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="Identity keys your devices prove themselves with (connect, listen, agents).",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Account name (1-64 of A-Z a-z 0-9 _ . -).")]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password(s) from standard input.")
]


def read_stdin_lines(count: int, what: str) -> list[str]:
    lines = [sys.stdin.readline() for _ in range(count)]
    if "" in lines:  # end of input before enough lines
        raise UsageError(f"--password-stdin needs {what} on standard input")
    return [line.rstrip("\r\n") for line in lines]


def ask_new_password(prompt: str) -> str:
    """Ask twice without echo; the two answers must match."""
    first = getpass.getpass(prompt)
    if getpass.getpass("Repeat it: ") != first:
        raise UsageError("the two passwords do not match; nothing changed")
    return check_new_password(first)


def show_user(u: dict[str, Any], verb: str) -> None:
    err_console.print(f"{verb} user {u['name']} ({u['role']})", markup=False)


@users_app.command("ls")
def users_ls(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List the hub's accounts: name, role, state, created, space used and quota."""
    rows = on_hub(hub_url, lambda hub: hub.users())
    if json_out:
        print_json(rows)
        return
    for u in rows:
        when = datetime.fromtimestamp(u["created"]).strftime("%Y-%m-%d %H:%M")
        state = "disabled" if u["disabled"] else u.get("state", "active")
        limit = format_bytes(u["quota"]) if u.get("quota") else "no quota"
        used = format_bytes(u.get("used", 0))
        typer.echo(f"{u['name']:<24} {u['role']:<6} {state:<8}  {when}  {used:>10} / {limit}")


@users_app.command("add")
def users_add(
    name: NameArg,
    password_stdin: PasswordStdinOpt = False,
    admin: Annotated[bool, typer.Option("--admin", help="Make it an admin account.")] = False,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add an account. Asks for its password twice (or reads one line with --password-stdin)."""

    async def go(hub: Client) -> Any:
        check_user_name(name)
        if password_stdin:
            (password,) = read_stdin_lines(1, "the password")
            check_new_password(password)
        else:
            password = ask_new_password(f"Password for the new user {name}: ")
        return await hub.add_user(name, password, admin=admin)

    user = on_hub(hub_url, go)
    if json_out:
        print_json(user)
    else:
        show_user(user, "Added")


def set_disabled(name: str, disabled: bool, hub_url: str | None, json_out: bool) -> None:
    action = "disable" if disabled else "enable"
    user = on_hub(hub_url, lambda hub: (hub.disable_user if disabled else hub.enable_user)(name))
    if json_out:
        print_json(user)
    else:
        show_user(user, action.capitalize() + "d")


@users_app.command("disable")
def users_disable(name: NameArg, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Disable an account; its logins stop working at once."""
    set_disabled(name, True, hub_url, json_out)


@users_app.command("enable")
def users_enable(name: NameArg, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Enable an account again (it has to log in afresh)."""
    set_disabled(name, False, hub_url, json_out)


@users_app.command("quota")
def users_quota(
    name: NameArg,
    size: Annotated[
        str, typer.Argument(help="Bytes the account may hold on the hub, e.g. 50G; none: no quota.")
    ],
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set an account's disk quota: its files and unfinished uploads on the
    hub. An upload that would go over it is refused when it starts."""
    value = 0 if size.strip().lower() in UNLIMITED_WORDS else parse_size(size)
    user = on_hub(hub_url, lambda hub: hub.set_quota(name, value))
    if json_out:
        print_json(user)
    elif value:
        err_console.print(f"{name} may hold {format_bytes(value)} on the hub", markup=False)
    else:
        err_console.print(f"{name} has no quota", markup=False)


@users_app.command("cap")
def users_cap(
    name: NameArg,
    rate: Annotated[str, typer.Argument(help="Bytes/s, e.g. 20M; off (or 0): no cap.")],
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cap an account's bandwidth through the hub: each of its pushes and
    pulls, and its relayed connections (send, receive, cp, pipes) together.
    Agents: freight agents cap."""
    value = parse_rate(rate)
    user = on_hub(hub_url, lambda hub: hub.set_user_cap(name, value))
    if json_out:
        print_json(user)
    else:
        shown = f"{format_bytes(value)}/s" if value else "no cap"
        err_console.print(f"{name}: {shown}", markup=False)


@users_app.command("pending")
def users_pending(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List the registrations that wait for an admin's approval (freight hub
    --registration approval); approve or refuse each by name."""
    rows = on_hub(hub_url, lambda hub: hub.users_in_state("pending"))
    if json_out:
        print_json(rows)
        return
    for u in rows:
        when = datetime.fromtimestamp(u["created"]).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{u['name']:<24} registered {when}")
    err_console.print(f"{len(rows)} account(s) wait for approval", markup=False)


@users_app.command("approve")
def users_approve(name: NameArg, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Approve a registration that waits: the account may log in."""
    user = on_hub(hub_url, lambda hub: hub.approve_user(name))
    if json_out:
        print_json(user)
    else:
        show_user(user, "Approved")


@users_app.command("refuse")
def users_refuse(name: NameArg, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Refuse a registration that waits: the name stays taken and never logs in."""
    user = on_hub(hub_url, lambda hub: hub.refuse_user(name))
    if json_out:
        print_json(user)
    else:
        show_user(user, "Refused")


@users_app.command("passwd")
def users_passwd(
    name: NameArg,
    password_stdin: PasswordStdinOpt = False,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set another account's password; every login of it ends at once.
    Asks twice (or reads one line with --password-stdin). Your own: freight passwd."""

    async def go(hub: Client) -> Any:
        check_user_name(name)
        if password_stdin:
            (password,) = read_stdin_lines(1, "the new password")
            check_new_password(password)
        else:
            password = ask_new_password(f"New password for {name}: ")
        return await hub.reset_password(name, password)

    res = on_hub(hub_url, go)
    if json_out:
        print_json(res)
    else:
        err_console.print(
            f"Password set for {res['user']}; ended {res['revoked_tokens']} login(s)",
            markup=False,
        )


@users_app.command("role")
def users_role(
    name: NameArg,
    role: Annotated[str, typer.Argument(help="admin or user.")],
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make an account an admin or an ordinary user. The last enabled admin
    keeps its role: make another account admin first."""
    if role not in ("admin", "user"):
        raise UsageError(f"ROLE is admin or user, not {role!r}")
    user = on_hub(hub_url, lambda hub: hub.set_role(name, role))
    if json_out:
        print_json(user)
    else:
        what = "an admin" if user["role"] == "admin" else "an ordinary user"
        err_console.print(f"{user['name']} is now {what}", markup=False)


def register_account(
    url: Annotated[str, typer.Argument(help="Hub address, e.g. https://hub.example:8443")],
    user: Annotated[str, typer.Option("--user", "-u", help="The account name you want.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    fingerprint: Annotated[
        str | None,
        typer.Option(help="Expected certificate fingerprint (SHA256:...), checked and pinned."),
    ] = None,
    trust_on_first_use: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use",
            help="Pin whatever certificate the hub presents if none is pinned yet, without "
            "asking (needed instead of --fingerprint when there is no terminal to ask on).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Register an account of your own on a hub that allows it (freight hub
    --registration open|approval), pinning its certificate as freight login
    does. Says whether the account is active or waits for an administrator;
    then log in with freight login."""
    from ..client.login import register
    from ..client.session import hostport, parse_hub_url
    from .common import run_async

    check_user_name(user)
    ask = sys.stdin.isatty() and not password_stdin

    def confirm(seen: str) -> bool:
        return typer.confirm("Trust this hub and pin its certificate?", err=True)

    def password() -> str:
        if password_stdin:
            (line,) = read_stdin_lines(1, "the password")
            return check_new_password(line)
        return ask_new_password(f"Password for {user}@{hostport(parse_hub_url(url))}: ")

    async def go() -> dict[str, Any]:
        return await register(
            url,
            user,
            password,
            fingerprint=fingerprint,
            trust_on_first_use=trust_on_first_use,
            confirm=confirm if ask else None,
            notice=lambda text: err_console.print(text, markup=False),
        )

    res = run_async(go)
    if json_out:
        print_json(res)
    elif res["state"] == "pending":
        err_console.print(
            f"Registered {res['user']} at {res['hub']}; the account waits for an "
            "administrator's approval (then: freight login)",
            markup=False,
        )
    else:
        err_console.print(
            f"Registered {res['user']} at {res['hub']}; the account is active: "
            f"freight login {res['hub']} --user {res['user']}",
            markup=False,
        )


def passwd(
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read two lines from standard input: current, then new."
        ),
    ] = False,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change your own password; your other logins are signed out."""

    async def go(hub: Client) -> Any:
        if password_stdin:
            current, new = read_stdin_lines(2, "two lines (current password, then new)")
            check_new_password(new)
        else:
            current = getpass.getpass("Current password: ")
            new = ask_new_password("New password: ")
        return await hub.passwd(current, new)

    res = on_hub(hub_url, go)
    if json_out:
        print_json(res)
    else:
        err_console.print(
            f"Password changed for {res['user']}; signed out {res['revoked_tokens']} other "
            "login(s)",
            markup=False,
        )


def logout(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Log out: the hub revokes this login (closing what it holds open) and
    it is forgotten here. If the hub cannot be reached nothing is forgotten:
    run it again later."""

    async def go(hub: Client) -> dict[str, Any]:
        revoked = await hub.logout()
        return {"hub": hub.hub, "revoked": revoked}

    res = on_hub(hub_url, go)
    if json_out:
        print_json(res)
    else:
        err_console.print(f"Logged out of {res['hub']}", markup=False)


UserOpt = Annotated[
    str | None, typer.Option("--user", "-u", help="Another account's keys (admins only).")
]


@keys_app.command("ls")
def keys_ls(user: UserOpt = None, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List the account's identity keys, newest first; * marks this device's."""
    if user:
        check_user_name(user)
    res = on_hub(hub_url, lambda hub: hub.keys(user))
    if json_out:
        print_json(res)
        return
    mine = "" if user else _this_device()
    for k in res["keys"]:
        when = datetime.fromtimestamp(k["created"]).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{'*' if k['key'] == mine else ' '} {k['key']}  {when}")
    err_console.print(f"{len(res['keys'])} of at most {res['max']} keys of {res['user']}")


def _this_device() -> str:
    config = ClientConfig()
    return public_of(identity_key(config)).hex() if (config.root / "identity.key").exists() else ""


@keys_app.command("rm")
def keys_rm(
    key: Annotated[str, typer.Argument(help="The key, or its first 8 or more hex digits.")],
    user: UserOpt = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove an identity key; the logins that registered it end at once."""
    if user:
        check_user_name(user)
    res = on_hub(hub_url, lambda hub: hub.remove_key(key, user))
    if json_out:
        print_json(res)
    else:
        err_console.print(
            f"Removed key {res['key'][:16]}… of {res['user']}; ended {res['logins_ended']} "
            "login(s)",
            markup=False,
        )


AppNameArg = Annotated[str, typer.Argument(help="Application name (1-64 of A-Z a-z 0-9 _ . : -).")]


@apps_app.command("ls")
def apps_ls(
    state: Annotated[
        str | None, typer.Option("--state", help="Only those pending, approved or refused.")
    ] = None,
    hub_url: HubOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List application names with their state, who asked first and who decided."""
    if state is not None and state not in ("pending", "approved", "refused"):
        raise UsageError(f"--state is pending, approved or refused, not {state!r}")
    rows = on_hub(hub_url, lambda hub: hub.apps_list(state))
    if json_out:
        print_json(rows)
        return
    for a in rows:
        when = datetime.fromtimestamp(a["requested"]).strftime("%Y-%m-%d %H:%M")
        decided = f"by {a['decided_by']}" if a["decided_by"] else ""
        typer.echo(f"{a['name']:<24} {a['state']:<8}  {when}  {a['requested_by']:<16} {decided}")
    err_console.print(f"{len(rows)} application(s)", markup=False)


def decide_app(name: str, approve: bool, hub_url: str | None, json_out: bool) -> None:
    row = on_hub(hub_url, lambda hub: hub.decide_app(name, approve))
    if json_out:
        print_json(row)
    elif approve:
        err_console.print(
            f"Approved application {name}: hosts listening on it take its messages now",
            markup=False,
        )
    else:
        err_console.print(f"Refused application {name}", markup=False)


@apps_app.command("approve")
def apps_approve(name: AppNameArg, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Approve an application name: the hosts that listen on it take its
    messages at once (they need not register again)."""
    decide_app(name, True, hub_url, json_out)


@apps_app.command("refuse")
def apps_refuse(name: AppNameArg, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """Refuse an application name: no host takes its messages."""
    decide_app(name, False, hub_url, json_out)


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    app.add_typer(apps_app, name="apps")
    app.command("passwd")(passwd)
    app.command("register")(register_account)
    app.command("logout")(logout)
