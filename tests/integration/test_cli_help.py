"""Every command's --help reads like git's or rsync's at 80 columns: a usage
line, the description in whole paragraphs, options with a word for their
value (none for flags), every option and argument explained, no line broken
before it had to be. The whole tree is walked in one process; the real
command is run too, to see it uses the same help."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from freight.cli.helptext import paragraphs, summary
from freight.cli.main import command
from tests.support import PYTHON

WIDTH = 80
TYPE_MARKS = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\]|[a-z_]+)>|\{[a-z_]+\}")


def walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            yield from walk(sub, (*path, name))


TREE = command()
COMMANDS = list(walk(TREE))


def help_of(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        command().main([*path, "--help"], prog_name="freight")
    return out.getvalue()


def words(text: str) -> str:
    return " ".join(text.split())


def test_the_whole_tree_is_walked() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "push", "pull", "admin events", "agents cmd", "collected get"} <= names
    assert len(names) > 40


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "freight")
def test_help_reads_well(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = dict(COMMANDS)[path]
    text = help_of(path, monkeypatch)
    lines = text.splitlines()
    assert lines[0].startswith(f"Usage: {' '.join(('freight', *path))}"), lines[0]
    assert not TYPE_MARKS.search(text), TYPE_MARKS.search(text)
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)

    flat = words(text)
    for para in paragraphs(cmd.help or ""):
        assert words(para) in flat, f"paragraph cut or changed: {para!r}"
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    for param in params:
        assert (param.help or "").strip(), f"{param.name} has no help"
        assert words(param.help) in flat, param.name
        if param.param_type_name == "option":
            long = max(param.opts, key=len)
            options = lines[lines.index("Options:") :]
            row = next(line for line in options if re.match(rf"  (-\w, )?{long}\b", line))
            value = row.split(long, 1)[1].split("  ")[0].strip()
            if param.is_flag:
                assert value in ("", "/ --no-" + long[2:]), row  # a flag takes no value
            else:
                assert re.fullmatch(r"[A-Z][A-Z0-9_:=.]*", value), row
    for name, sub in getattr(cmd, "commands", {}).items():
        assert words(summary(sub)) in flat, name
        assert summary(sub).endswith((".", ")")), (name, summary(sub))

    assert_no_early_breaks(lines)


def assert_no_early_breaks(lines: list[str]) -> None:
    """A line continued on the next must have had no room for the next
    line's first word: paragraphs are filled, not cut where the source
    text happened to have a line break."""
    section = "description"
    for prev, line in itertools.pairwise(lines):
        if re.fullmatch(r"[A-Z][a-z]+:", line):
            section = line
            continue
        if not line.strip() or not prev.strip() or re.fullmatch(r"[A-Z][a-z]+:", prev):
            continue
        if section == "description":
            continuation = True
        else:
            continuation = line.startswith("    ") and not line.strip().startswith("-")
        if continuation and re.fullmatch(r"  (-\w, )?--[\w-]+( [A-Z][A-Z0-9_:=.]*)?", prev):
            continue  # an option too wide for the column: its help starts below it
        if continuation:
            # "[default: 30]" and "quoted text" are kept on one line.
            first_word = re.match(r'\[[^\]]*\]|"[^"]*"|\S+', line.strip()).group(0)  # type: ignore[union-attr]
            assert len(prev) + 1 + len(first_word) > WIDTH, f"broken early:\n{prev}\n{line}"


def test_the_real_command_prints_the_same_help() -> None:
    res = subprocess.run(
        [PYTHON, "-m", "freight", "push", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": str(WIDTH), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Usage: freight push [OPTIONS] PATHS...")
    assert "--limit RATE" in res.stdout and "<bool>" not in res.stdout
    assert re.search(r"^  -q, --quiet +No progress output\.$", res.stdout, re.M)


def test_a_usage_error_is_plain_and_names_the_argument() -> None:
    res = subprocess.run(
        [PYTHON, "-m", "freight", "pull"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": str(WIDTH), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == "Usage: freight pull [OPTIONS] NAME [DEST]"
    assert "Missing argument 'NAME'" in res.stderr
    assert "╭" not in res.stderr  # no box drawing around a one-line error
