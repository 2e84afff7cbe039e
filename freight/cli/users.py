"""Accounts: ``freight users ls|add|disable|enable`` (admins) and
``freight passwd`` (anyone, for their own account)."""

from __future__ import annotations

import getpass
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from ..client.config import ClientConfig
from ..client.session import HubSession
from ..errors import NotFound, UsageError
from ..names import check_new_password, check_user_name
from ..units import UNLIMITED_WORDS, format_bytes, parse_size
from .common import HubOpt, JsonOpt, run_async
from .output import err_console, print_json

users_app = typer.Typer(help="Accounts on the hub (admin accounts only).", no_args_is_help=True)

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


async def call(hub_url: str | None, method: str, path: str, body: Any = None) -> Any:
    async with HubSession.from_config(ClientConfig(), hub_url) as session:
        try:
            return await session.request(method, path, body)
        except NotFound as exc:
            raise NotFound(exc.message, hint="run: freight users ls") from None


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


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.command("passwd")(passwd)
