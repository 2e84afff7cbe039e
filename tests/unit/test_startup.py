"""Start-up stays cheap: ``freight --version`` and ``freight --help`` load
none of the heavy libraries (typer, pydantic, aiohttp, cryptography, rich),
and a command's help does not load the SDK. Checked on ``sys.modules`` of
a real run, not on a stopwatch, so a busy machine cannot make it flaky.
The top level's help, answered without the command tree, is the tree's
own rendering byte for byte, and each command is found in the module the
table in freight.cli.toplevel names."""

from __future__ import annotations

import contextlib
import io
import json
import os
import ssl
import subprocess
import sys

import pytest

from freight import __version__
from freight.cli import toplevel
from freight.cli.main import command, modules_for
from freight.client import config

HEAVY = {"typer", "click", "pydantic", "aiohttp", "cryptography", "rich", "msgspec", "ssl"}
SDK = {"aiohttp", "cryptography", "blake3", "zstandard", "freight.client.api"}

TREE = command()


def loaded_by(*args: str) -> tuple[str, set[str]]:
    """What ``freight ARGS`` prints, and the modules it had loaded at exit."""
    code = (
        "import json, sys\n"
        f"sys.argv = ['freight', *{list(args)!r}]\n"
        "from freight.cli.main import run\n"
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('\\n' + json.dumps(sorted(sys.modules)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    return res.stdout, set(json.loads(res.stderr.splitlines()[-1]))


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules} | modules


@pytest.mark.parametrize("args", [["--version"], ["version"]])
def test_the_version_loads_nothing_heavy(args: list[str]) -> None:
    out, modules = loaded_by(*args)
    assert out == f"{__version__}\n"
    assert not roots(modules) & (HEAVY | SDK), sorted(roots(modules) & (HEAVY | SDK))
    assert not {m for m in modules if m.startswith("freight.") and m != "freight.cli.toplevel"} - {
        "freight.cli",
        "freight.cli.main",
    }


def test_the_top_help_loads_nothing_heavy() -> None:
    out, modules = loaded_by("--help")
    assert out.startswith("Usage: freight [OPTIONS] COMMAND [ARGS]...\n")
    assert "  push " in out and "--ca-file PEM" in out
    assert not roots(modules) & (HEAVY | SDK), sorted(roots(modules) & (HEAVY | SDK))


def test_a_commands_help_does_not_load_the_sdk() -> None:
    out, modules = loaded_by("push", "--help")
    assert out.startswith("Usage: freight push [OPTIONS] PATHS...")
    assert not roots(modules) & SDK, sorted(roots(modules) & SDK)
    assert "freight.cli.relay" not in modules and "freight.cli.agents" not in modules


@pytest.mark.parametrize("columns", [40, 57, 80, 200])
def test_the_fast_top_help_is_the_trees_own(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        TREE.main(["--help"], prog_name="freight")
    assert toplevel.help_text() == out.getvalue()


def test_the_table_lists_every_command_in_order() -> None:
    assert list(toplevel.COMMANDS) == list(TREE.commands)


@pytest.mark.parametrize("name", list(toplevel.COMMANDS))
def test_each_command_is_in_the_modules_the_table_names(name: str) -> None:
    part = command(toplevel.COMMANDS[name][0])
    sub, whole = part.commands[name], TREE.commands[name]
    assert sub.help == whole.help
    assert [p.name for p in sub.params] == [p.name for p in whole.params]
    assert sorted(getattr(sub, "commands", {})) == sorted(getattr(whole, "commands", {}))


def test_the_help_names_the_variables_the_client_reads() -> None:
    assert f"${config.PROXY_ENV}." in toplevel.PROXY_HELP
    assert f"${config.CA_FILE_ENV}." in toplevel.CA_FILE_HELP


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ([], None),
        (["ls"], "ls"),
        (["--proxy", "none", "ls", "-x"], "ls"),
        (["--proxy=none", "push", "a"], "push"),
        (["--ca-file", "ca.pem", "--proxy", "http://p:3128", "admin", "events"], "admin"),
        (["--help", "ls"], None),
        (["--version"], None),
    ],
)
def test_the_command_is_found_after_freights_own_options(args: list[str], name: str | None) -> None:
    assert toplevel.command_name(args) == name


def test_an_unknown_command_gets_the_whole_tree() -> None:
    assert modules_for(["nosuch"]) is None
    assert modules_for(["--proxy", "none", "cp", "a", "b"]) == ("agents",)


def test_the_sdk_loads_transfers_and_ciphers_only_when_used() -> None:
    code = (
        "import json, sys\nimport freight\nfreight.Client\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    modules = set(json.loads(out))
    later = {
        "cryptography",
        "zstandard",
        "freight.client.relay",
        "freight.client.transfer",
        "freight.transport.dataconn",
        "freight.protocol.stream",
    }
    assert not roots(modules) & later, sorted(roots(modules) & later)
    assert "aiohttp" in modules  # REST calls need it: the SDK is usable as loaded


def test_a_command_does_not_load_pydantic() -> None:
    """typer 0.29 builds a pydantic TypeAdapter for every parameter: about
    60 ms of every command (pyproject pins typer below it)."""
    _, modules = loaded_by("ls", "--hub", "https://127.0.0.1:9", "--json")
    assert "pydantic" not in roots(modules)
    assert "freight.client.api" in modules  # the command did run


def test_a_command_does_not_read_the_system_ca_store_for_aiohttp() -> None:
    """aiohttp reads the system CA bundle twice at import (~45 ms); the
    command imports it without (client.trust.import_web_client)."""
    code = (
        "import json, sys\n"
        "sys.argv = ['freight', 'ls', '--hub', 'https://127.0.0.1:9', '--json']\n"
        "from freight.cli.main import run\n"
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n"
        "import ssl\n"
        "from aiohttp import connector\n"
        "stats = [c.cert_store_stats()['x509'] for c in\n"
        "         (connector._SSL_CONTEXT_VERIFIED, connector._SSL_CONTEXT_UNVERIFIED)]\n"
        "sys.stderr.write('\\n' + json.dumps([stats, ssl.create_default_context().cert_store_stats()]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    aiohttp_defaults, fresh = json.loads(res.stderr.splitlines()[-1])
    assert aiohttp_defaults == [0, 0]
    # The store itself is untouched: a context made afterwards reads it.
    cafile = ssl.get_default_verify_paths().cafile
    if not (cafile and os.path.exists(cafile)):
        pytest.skip("this machine has no system CA bundle")
    assert fresh["x509_ca"] > 0
