"""Help that reads like git's or rsync's: a usage line, the description in
paragraphs, then arguments, options and commands in two columns, wrapped
to the terminal and never wider than 80 columns.

Typer's own rendering (which changes from release to release) printed
``<bool>`` after every flag, type names such as ``<str>`` or ``{paths}``
where a word belongs, and kept the line breaks of docstrings, so sentences
broke in the middle. Here every command of the tree gets the renderer
below, installed once by ``plain_help``; an option's value is named by its
``metavar``, by ``METAVARS`` for the options many commands share, or else by
its name in capitals.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Iterator
from typing import Any

MAX_WIDTH = 80
MAX_FIRST_COLUMN = 28

# The word after an option that takes a value, where the option's name
# alone does not say what to give.
METAVARS = {
    "--agents": "GLOB",
    "--arg": "KEY=VALUE",
    "--as": "NAME",
    "--bandwidth": "BUDGET",
    "--ca-file": "PEM",
    "--cert": "PEM",
    "--checkpoint-interval": "SIZE",
    "--code": "CODE",
    "--collect-reserve": "SIZE",
    "--compress": "LEVEL",
    "--data": "DIR",
    "--data-path": "MODE",
    "--database-url": "URL",
    "--every": "DURATION",
    "--exclude": "GLOB",
    "--fingerprint": "SHA256:HEX",
    "--from": "ACCOUNT",
    "--hub": "URL",
    "--include": "GLOB",
    "--key": "PEM",
    "--kind": "KIND",
    "--limit": "RATE",
    "--listen": "HOST:PORT",
    "--max-size": "SIZE",
    "--max-codes": "N",
    "--max-connections": "N",
    "--max-connections-per-address": "N",
    "--max-relay-connections": "N",
    "--account-connections": "N",
    "--account-streams": "N",
    "--relay-queue": "SIZE",
    "--name": "NAME",
    "--output": "DIR",
    "--parallel": "N",
    "--policy": "NAME",
    "--proxy": "URL",
    "--purge-after": "HOURS",
    "--relay-window": "SIZE",
    "--root": "DIR",
    "--transport": "MODE",
    "--ttl": "DURATION",
    "--user": "NAME",
    "--wait": "SECONDS",
}


def plain_help(root: Any) -> None:
    """Give ``root`` and every command under it this module's help and
    usage lines (error messages show the usage line too)."""
    for cmd in _walk(root):
        # On the instance, so Typer's classes and their other behaviour stay.
        cmd.format_help = _bound(format_help, cmd)
        cmd.format_usage = _bound(format_usage, cmd)
        for param in cmd.params:
            if param.param_type_name == "argument" and param.metavar is None:
                # Also what "Missing argument 'NAME'" says.
                param.metavar = param.name.upper()


def _walk(cmd: Any) -> Iterator[Any]:
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _walk(sub)


def _bound(fn: Any, cmd: Any) -> Any:
    def method(ctx: Any, formatter: Any) -> None:
        fn(cmd, ctx, formatter)

    return method


def width() -> int:
    return max(40, min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns))


# --- the parts -----------------------------------------------------------------


def usage_line(cmd: Any, ctx: Any) -> str:
    pieces = ["[OPTIONS]"] if any(_shown_options(cmd, ctx)) else []
    for param in cmd.get_params(ctx):
        if param.param_type_name == "argument" and not getattr(param, "hidden", False):
            word = _argument_word(param)
            pieces.append(word if param.required else f"[{word}]")
    if hasattr(cmd, "commands"):
        pieces.append("COMMAND [ARGS]...")
    return fill_usage(f"Usage: {ctx.command_path} {' '.join(pieces)}".rstrip())


def fill_usage(text: str) -> str:
    return textwrap.fill(
        text, width(), subsequent_indent=" " * 7, break_long_words=False, break_on_hyphens=False
    )


def format_usage(cmd: Any, ctx: Any, formatter: Any) -> None:
    formatter.write(usage_line(cmd, ctx) + "\n")


def format_help(cmd: Any, ctx: Any, formatter: Any) -> None:
    arguments = [
        (_argument_word(p), p.help or "")
        for p in cmd.get_params(ctx)
        if p.param_type_name == "argument" and not getattr(p, "hidden", False)
    ]
    options = [(_option_words(p), _option_help(p)) for p in _shown_options(cmd, ctx)]
    commands = [
        (name, summary(sub))
        for name, sub in getattr(cmd, "commands", {}).items()
        if not getattr(sub, "hidden", False)
    ]
    sections = [("Arguments", arguments), ("Options", options), ("Commands", commands)]
    formatter.write(compose(usage_line(cmd, ctx), paragraphs(cmd.help or ""), sections))


def compose(usage: str, description: list[str], sections: list[tuple[str, Any]]) -> str:
    """A whole help text: the usage line, the description's paragraphs, then
    each section that has rows, in two columns."""
    out = [usage]
    if description:
        out.append("")
        out += _indented(description, 2)
    for title, rows in sections:
        if rows:
            out += ["", f"{title}:", *two_columns(rows)]
    return "\n".join(out) + "\n"


def _shown_options(cmd: Any, ctx: Any) -> list[Any]:
    return [
        p
        for p in cmd.get_params(ctx)
        if p.param_type_name == "option" and not getattr(p, "hidden", False)
    ]


def _argument_word(param: Any) -> str:
    word = str(param.metavar or param.name.upper())
    return word + "..." if param.nargs != 1 and not word.endswith("...") else word


def _option_words(param: Any) -> str:
    names = sorted(param.opts, key=lambda o: (o.startswith("--"), o))
    text = ", ".join(names)
    if param.secondary_opts:
        text += " / " + ", ".join(param.secondary_opts)
    if not param.is_flag and not getattr(param, "count", False):
        longest = max(param.opts, key=len)
        text += " " + str(param.metavar or METAVARS.get(longest) or param.name.upper())
    return text


def _option_help(param: Any) -> str:
    text = " ".join((param.help or "").split())
    extra = []
    default = param.default
    shown = getattr(param, "show_default", True)
    if (
        not param.is_flag
        and shown is not False
        and default not in (None, "", (), [])
        and not callable(default)
    ):
        extra.append(f"default: {_value(default)}")
    envvar = param.envvar
    if isinstance(envvar, str) and f"${envvar}" not in text:
        extra.append(f"env: {envvar}")
    if param.required:
        extra.append("required")
    if extra:
        text = f"{text} [{'; '.join(extra)}]".strip()
    return text


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    return str(value)


def paragraphs(text: str) -> list[str]:
    """A docstring as paragraphs: lines joined into one unless the paragraph
    is preformatted (starts with ``\\b``, as in click, or has indented
    lines); text after a form feed is for the code only."""
    import inspect  # not at the top: ``freight --help`` renders without it

    text = inspect.cleandoc(text.partition("\f")[0])
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.splitlines()
        if lines[0].strip() == "\b" or any(line.startswith(" ") for line in lines):
            out.append("\n".join(line for line in lines if line.strip() != "\b"))
        else:
            out.append(" ".join(block.split()))
    return out


def summary(cmd: Any) -> str:
    """The one line a command gets in its group's list: its short help, or
    the first paragraph of its help."""
    if getattr(cmd, "short_help", None):
        return " ".join(str(cmd.short_help).split())
    found = paragraphs(cmd.help or "")
    return found[0] if found else ""


def _indented(paras: list[str], indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    for i, para in enumerate(paras):
        if i:
            out.append("")
        if "\n" in para:
            out += [pad + line for line in para.splitlines()]
        else:
            out += _wrap(para, width(), pad, pad)  # the width counts the indent
    return out


def two_columns(rows: list[tuple[str, str]]) -> list[str]:
    """``  term  text`` rows; the text column starts where the longest term
    (up to MAX_FIRST_COLUMN) ends, longer terms put their text below."""
    column = min(MAX_FIRST_COLUMN, max(len(term) for term, _ in rows)) + 4
    out = []
    for term, text in rows:
        first = f"  {term}"
        if not text:
            out.append(first)
            continue
        lines = _wrap(text, width() - column, "", "")
        if len(first) + 2 <= column:
            out.append(first.ljust(column) + lines[0])
            rest = lines[1:]
        else:
            out.append(first)
            rest = lines
        out += [" " * column + line for line in rest]
    return out


# "[default: 30]" and "quoted examples" stay on one line: their spaces
# become no-break spaces (textwrap breaks only at ASCII white space) until
# the text is wrapped.
_KEEP_TOGETHER = re.compile(r'\[[^\]]*\]|"[^"]*"')
_NBSP = "\u00a0"


def _wrap(text: str, room: int, first: str, later: str) -> list[str]:
    glued = _KEEP_TOGETHER.sub(lambda m: m.group(0).replace(" ", _NBSP), text)
    lines = textwrap.wrap(
        glued,
        max(20, room),
        initial_indent=first,
        subsequent_indent=later,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]
    return [line.replace(_NBSP, " ") for line in lines]
