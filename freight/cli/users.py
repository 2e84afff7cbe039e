"""Accounts: ``freight users ls|add|disable|enable`` (admins), and for
anyone's own account ``freight passwd``, ``freight logout`` and ``freight
keys ls|rm`` (admins may name another account with ``--user``)."""

from __future__ import annotations

import getpass
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from ..client.config import ClientConfig
from ..client.relay import identity_key
from ..client.session import HubSession
from ..errors import NotFound, NotLoggedIn, UsageError
from ..names import check_new_password, check_user_name
from ..protocol.e2e import public_of
from ..units import UNLIMITED_WORDS, format_bytes, parse_size
from .common import HubOpt, JsonOpt, run_async
from .output import err_console, print_json

users_app = typer.Typer(help="Accounts on the hub (admin accounts only).", no_args_is_help=True)
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


async def call(
    hub_url: str | None,
    method: str,
    path: str,
    body: Any = None,
    *,
    hint: str = "run: freight users ls",
) -> Any:
    async with HubSession.from_config(ClientConfig(), hub_url) as session:
        try:
            return await session.request(method, path, body)
        except NotFound as exc:
            raise NotFound(exc.message, hint=hint) from None


def show_user(u: dict[str, Any], verb: str) -> None:
    err_console.print(f"{verb} user {u['name']} ({u['role']})", markup=False)


@users_app.command("ls")
def users_ls(hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List the hub's accounts: name, role, state, created, space used and quota."""
    rows = run_async(lambda: call(hub_url, "GET", "/v1/users"))
    if json_out:
        print_json(rows)
        return
    for u in rows:
        when = datetime.fromtimestamp(u["created"]).strftime("%Y-%m-%d %H:%M")
        state = "disabled" if u["disabled"] else "active"
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

    async def go() -> Any:
        check_user_name(name)
        if password_stdin:
            (password,) = read_stdin_lines(1, "the password")
            check_new_password(password)
        else:
            password = ask_new_password(f"Password for the new user {name}: ")
        body = {"name": name, "password": password, "admin": admin}
        return await call(hub_url, "POST", "/v1/users", body)

    user = run_async(go)
    if json_out:
        print_json(user)
    else:
        show_user(user, "Added")


def set_disabled(name: str, disabled: bool, hub_url: str | None, json_out: bool) -> None:
    action = "disable" if disabled else "enable"

    async def go() -> Any:
        check_user_name(name)
        return await call(hub_url, "POST", f"/v1/users/{name}/{action}")

    user = run_async(go)
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

    async def go() -> Any:
        check_user_name(name)
        return await call(hub_url, "PUT", f"/v1/users/{name}/quota", {"quota": value})

    user = run_async(go)
    if json_out:
        print_json(user)
    elif value:
        err_console.print(f"{name} may hold {format_bytes(value)} on the hub", markup=False)
    else:
        err_console.print(f"{name} has no quota", markup=False)


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

    async def go() -> Any:
        if password_stdin:
            current, new = read_stdin_lines(2, "two lines (current password, then new)")
            check_new_password(new)
        else:
            current = getpass.getpass("Current password: ")
            new = ask_new_password("New password: ")
        return await call(hub_url, "POST", "/v1/passwd", {"current": current, "new": new})

    res = run_async(go)
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
    config = ClientConfig()

    async def go() -> dict[str, Any]:
        url, _ = config.current(hub_url)
        async with HubSession.from_config(config, url) as session:
            try:
                await session.request("POST", "/v1/logout")
                revoked = True
            except NotLoggedIn:  # expired or revoked already: nothing left to revoke
                revoked = False
        config.forget_login(url)
        return {"hub": url, "revoked": revoked}

    res = run_async(go)
    if json_out:
        print_json(res)
    else:
        err_console.print(f"Logged out of {res['hub']}", markup=False)


KEYS_HINT = "run: freight keys ls"
UserOpt = Annotated[
    str | None, typer.Option("--user", "-u", help="Another account's keys (admins only).")
]


@keys_app.command("ls")
def keys_ls(user: UserOpt = None, hub_url: HubOpt = None, json_out: JsonOpt = False) -> None:
    """List the account's identity keys, newest first; * marks this device's."""
    query = f"?user={check_user_name(user)}" if user else ""
    res = run_async(lambda: call(hub_url, "GET", "/v1/keys" + query))
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
    query = f"?user={check_user_name(user)}" if user else ""

    async def go() -> Any:
        full = key.lower()
        if len(full) != 64:
            listed = await call(hub_url, "GET", "/v1/keys" + query, hint=KEYS_HINT)
            found = [k["key"] for k in listed["keys"] if k["key"].startswith(full)]
            if len(full) < 8 or len(found) != 1:
                raise UsageError(
                    f"{key!r} names {len(found)} keys; give 8 or more hex digits of one key",
                    hint=KEYS_HINT,
                )
            full = found[0]
        return await call(hub_url, "DELETE", f"/v1/keys/{full}{query}", hint=KEYS_HINT)

    res = run_async(go)
    if json_out:
        print_json(res)
    else:
        err_console.print(
            f"Removed key {res['key'][:16]}… of {res['user']}; ended {res['logins_ended']} "
            "login(s)",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    app.command("passwd")(passwd)
    app.command("logout")(logout)
