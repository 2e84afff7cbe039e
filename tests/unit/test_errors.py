"""The error-code registry: one class per code, each with an exit code and a
hint; the drawing of the tree in freight/errors.py matches the code; and every
exception crossing a boundary (a wire code in a hub answer or an Error frame,
a library's exception at the CLI's exit) comes out as a typed FreightError."""

from __future__ import annotations

import ast
import asyncio
import errno
import importlib
import pkgutil
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import typer
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import freight
import freight.errors as errors
import freight.hub
from freight.cli.common import run_async
from freight.errors import EXIT_CODES, FreightError, claimed_twice, code_to_error, registered
from freight.protocol.relaycodes import RefusalCode

PACKAGE = Path(freight.__file__).parent
# Classes that carry, per instance, the code of the refusal they stand for
# (each such code is checked against the registry below).
CARRIERS = {"freight.hub.relayconn.RelayRefused"}


def _load_everything() -> None:
    for info in pkgutil.walk_packages(freight.__path__, "freight."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


_load_everything()


def freight_classes() -> list[type[FreightError]]:
    out: list[type[FreightError]] = []
    todo = [FreightError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("freight."):
            out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_every_code_has_one_class() -> None:
    assert claimed_twice() == [], "two classes claim one code"
    for cls in freight_classes():
        if qualname(cls) in CARRIERS:
            continue
        assert "code" in cls.__dict__, f"{qualname(cls)} has no code of its own"
        assert registered()[cls.code] is cls


def test_every_code_has_an_exit_code_and_a_hint() -> None:
    for code, cls in registered().items():
        if not cls.__module__.startswith("freight."):
            continue  # a test's own subclass
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
        assert cls.exit_code in EXIT_CODES, (code, cls.exit_code)
        if cls is not FreightError:
            assert cls.exit_code != 1, f"{code}: pick the exit code of its kind"
            assert cls.hint, f"{code} ({cls.__name__}) has no hint"


def test_wire_codes_come_back_as_their_class() -> None:
    for code, cls in registered().items():
        if cls is FreightError:
            continue
        exc = code_to_error(code, "from the wire")
        assert type(exc) is cls and exc.message == "from the wire"
    unknown = code_to_error("no_such_code", "what the hub said")
    assert type(unknown) is errors.RemoteError
    assert "no_such_code" in unknown.message


def _drawing() -> list[tuple[int, str, int | None, str]]:
    """(depth, name, exit code or None, module) per line of the drawing."""
    doc = errors.__doc__ or ""
    rows = []
    for line in doc.splitlines():
        m = re.match(r"^    ([│├└─ ]*)(\w+)\s*(?:exit (\d+))?\s*([\w.]*)$", line)
        if m is None or not (m.group(2)[0].isupper()):
            continue
        depth = len(m.group(1)) // 4
        rows.append((depth, m.group(2), int(m.group(3)) if m.group(3) else None, m.group(4)))
    return rows


def test_the_drawing_in_errors_matches_the_code() -> None:
    drawn: dict[str, tuple[str | None, int | None, str]] = {}
    parents: list[str] = []
    for depth, name, exit_code, module in _drawing():
        del parents[depth:]
        drawn[name] = (parents[-1] if parents else None, exit_code, module or "errors")
        parents.append(name)
    actual: dict[str, tuple[str | None, int | None, str]] = {}
    for cls in freight_classes():
        parent = cls.__bases__[0]
        parent_name = parent.__name__ if cls is not FreightError else None
        changes_exit = cls is FreightError or cls.exit_code != parent.exit_code
        actual[cls.__name__] = (
            parent_name,
            cls.exit_code if changes_exit else None,
            cls.__module__.removeprefix("freight."),
        )
    assert drawn == actual, "redraw the tree in freight/errors.py's docstring"


def _literal_codes(sources: dict[str, str] | None = None) -> set[tuple[str, str]]:
    """Codes written as literals where an error is sent: ``RelayRefused("code",
    …)``, ``Error(code="…")`` frames and ``{"code": "…"}`` answers."""
    if sources is None:
        sources = {
            path.relative_to(PACKAGE.parent).as_posix(): path.read_text()
            for path in PACKAGE.rglob("*.py")
        }
    found = set()
    for where, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "RelayRefused" and node.args and isinstance(node.args[0], ast.Constant):
                    found.add((where, str(node.args[0].value)))
                if name == "Error":
                    for kw in node.keywords:
                        if kw.arg == "code" and isinstance(kw.value, ast.Constant):
                            found.add((where, str(kw.value.value)))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        found.add((where, value.value))
    return found


def test_every_code_sent_as_a_literal_has_a_class() -> None:
    sample = 'RelayRefused("a", "m")\nError(code="b")\nx = {"code": "c"}\n'
    assert _literal_codes({"x.py": sample}) == {("x.py", "a"), ("x.py", "b"), ("x.py", "c")}
    found = _literal_codes()
    # The relay's answers are typed codes: every refusal the hub can send
    # must come back on the client as its own class.
    found |= {("freight/protocol/relaycodes.py", str(c)) for c in RefusalCode}
    missing = {(where, code) for where, code in found if code not in registered()}
    assert not missing, f"error codes sent without a class in the registry: {missing}"


def _exit_of(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    async def fail() -> None:
        raise exc

    with pytest.raises(typer.Exit) as info:
        run_async(fail)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("freight: error: "), lines
    return info.value.exit_code, lines[0]


@pytest.mark.parametrize(
    ("exc", "exit_code"),
    [
        (FileNotFoundError(2, "No such file or directory", "/nowhere/x"), 8),
        (PermissionError(13, "Permission denied", "/etc/shadow"), 8),
        (ConnectionResetError(104, "Connection reset by peer"), 6),
        (TimeoutError(), 6),
        (OSError(errno.EADDRINUSE, "Address already in use"), 6),
        (aiohttp.ServerDisconnectedError(), 6),
        (aiohttp.ClientPayloadError("cut short"), 6),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), 4),
        (msgspec.ValidationError("Expected `int`, got `str`"), 5),
        (errors.NotFound("no such file: x"), 7),
        (errors.QuotaExceeded("over"), 7),
    ],
)
def test_the_cli_maps_what_crosses_its_boundary(
    exc: BaseException, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = _exit_of(exc, capsys)
    assert code == exit_code, line
    assert "Traceback" not in line


def test_every_registered_class_exits_with_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    for cls in registered().values():
        if cls is FreightError or not cls.__module__.startswith("freight."):
            continue
        code, line = _exit_of(cls("it failed"), capsys)
        assert code == cls.exit_code and "it failed" in line and cls.hint in line


def test_a_bug_is_not_dressed_up_as_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    async def bug() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_async(bug)
    with pytest.raises(asyncio.CancelledError):
        run_async(_cancelled)


async def _cancelled() -> None:
    raise asyncio.CancelledError


def _hub_errors_middleware() -> Any:
    """The hub's middleware that turns a FreightError into its JSON answer,
    wherever the hub's modules keep it."""
    for info in pkgutil.iter_modules(freight.hub.__path__, "freight.hub."):
        found = getattr(importlib.import_module(info.name), "errors_middleware", None)
        if found is not None:
            return found
    raise AssertionError("no errors_middleware in freight.hub")


async def test_a_hub_handler_that_fails_with_a_bug_answers_typed_json() -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        raise KeyError("a bug")

    app = web.Application(middlewares=[_hub_errors_middleware()])
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as http:
        resp = await http.get("/broken")
        assert resp.status == 500
        body = await resp.json()
        assert body["error"]["code"] == "remote"
        assert "its log says why" in body["error"]["message"]
        assert "a bug" not in body["error"]["message"]  # no internals leak to the client
        resp = await http.get("/no-such-route")
        assert resp.status == 404  # aiohttp's own answers pass through


async def test_a_hub_handler_answers_every_error_as_typed_json() -> None:
    classes = [
        cls
        for cls in registered().values()
        if cls is not FreightError and cls.__module__.startswith("freight.")
    ]

    async def fail(request: web.Request) -> web.StreamResponse:
        raise classes[int(request.match_info["i"])]("it failed")

    app = web.Application(middlewares=[_hub_errors_middleware()])
    app.router.add_get("/{i}", fail)
    async with TestClient(TestServer(app)) as http:
        for i, cls in enumerate(classes):
            resp = await http.get(f"/{i}")
            body = await resp.json()
            assert resp.status >= 400, cls
            assert body == {"error": {"code": cls.code, "message": "it failed"}}
            # and the client raises it again as the same class
            assert type(code_to_error(body["error"]["code"], "x")) is cls
