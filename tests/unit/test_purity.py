"""freight.protocol stays sans-I/O: no event loop, sockets, clocks or threads,
and nothing from the rest of Freight."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import freight.protocol

PACKAGE_DIR = Path(freight.protocol.__file__).parent
MODULES = sorted(
    f"freight.protocol.{info.name}" for info in pkgutil.iter_modules([str(PACKAGE_DIR)])
)
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "select", "selectors", "threading"}
FORBIDDEN |= {"datetime", "random"}  # clocks and randomness are passed in, never read


def test_every_module_is_listed() -> None:
    names = {name.rsplit(".", 1)[1] for name in MODULES}
    assert names >= {"frames", "messages", "stream", "codec", "seal", "bucket", "retry"}
    assert names >= {"limits", "errors"}


def test_importing_the_protocol_loads_no_io_modules() -> None:
    # ``time`` is loaded by the interpreter itself at start-up, so it cannot be
    # checked this way; the source check below covers it.
    code = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert "freight" in loaded  # the check ran
    assert loaded.isdisjoint({"asyncio", "socket", "ssl", "select", "selectors", "threading"})
    outside = {
        name
        for name in json.loads(out)
        if name.startswith("freight.") and not name.startswith("freight.protocol")
    }
    assert outside == set()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a module of freight.protocol."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
            elif node.level == 1:
                found.append((node.lineno, f"freight.protocol.{node.module or ''}"))
            else:  # from .. import x reaches outside the package
                found.append((node.lineno, "freight." + "." * (node.level - 2)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.append((node.lineno, "__import__"))
    return found


def violations(path: Path) -> list[str]:
    bad = []
    for lineno, name in imports_of(path):
        root = name.split(".")[0]
        inside = name == "freight.protocol" or name.startswith("freight.protocol.")
        impure = root in FORBIDDEN or root == "importlib" or name == "__import__"
        if impure or (root == "freight" and not inside):
            bad.append(f"{path.name}:{lineno} imports {name}")
    return bad


def test_protocol_sources_import_nothing_impure() -> None:
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(files) == len(MODULES) + 1  # the modules and __init__.py
    assert [v for path in files for v in violations(path)] == []


def test_source_check_catches_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import time\n"
        "from asyncio import sleep\n"
        "from .. import errors\n"
        "from freight.hub import app\n"
        "from .frames import FrameDecoder\n"
        "import msgspec\n"
        "def f():\n"
        "    import socket\n"
    )
    assert violations(sample) == [
        "sample.py:1 imports time",
        "sample.py:2 imports asyncio",
        "sample.py:3 imports freight.",
        "sample.py:4 imports freight.hub",
        "sample.py:8 imports socket",
    ]
