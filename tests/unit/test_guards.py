"""Architecture guards: the rules of the codebase, checked on its source.

Every background task is started by ``freight.tasks.Supervisor.spawn``; every
``asyncio.Queue`` has a bound; ``BaseException`` is caught only in
``freight/tasks.py``; no import cycle; no module over 600 lines.

Each guard has a KNOWN list of offenders allowed (file and count), empty
since the redesign removed the last ones. The lists may only shrink: a new
offender fails, and so does a fixed one still listed.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grimp

import freight

PACKAGE = Path(freight.__file__).parent
ROOT = PACKAGE.parent
SUPERVISOR = "freight/tasks.py"
MAX_LINES = 600

# Offenders allowed, as `path: count` (none: every one was fixed). A guard
# that fails names the file; fix the code rather than listing it here.
KNOWN_BARE_TASKS: dict[str, int] = {}
KNOWN_UNBOUNDED_QUEUES: dict[str, int] = {}
KNOWN_BASE_EXCEPTION: dict[str, int] = {}
KNOWN_LONG_MODULES: dict[str, int] = {}
# Import cycles allowed, each the set of modules it joins (imports inside
# functions count: they are how the hub's cycle was hidden until it was removed).
KNOWN_CYCLES: list[frozenset[str]] = []


def sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def dotted(node: ast.expr) -> str:
    """``asyncio.get_running_loop().create_task`` → ``asyncio.get_running_loop().create_task``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{dotted(node.func)}()"
    return "?"


def names_from_asyncio(tree: ast.Module) -> set[str]:
    """Names this module imported with ``from asyncio import …``."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "asyncio"
        for alias in node.names
    }


def bare_tasks(tree: ast.Module) -> int:
    """``asyncio.create_task``/``ensure_future`` and a loop's ``create_task``;
    a TaskGroup's ``tg.create_task`` is structured and allowed."""
    direct = names_from_asyncio(tree) & {"create_task", "ensure_future"}

    def bare(name: str) -> bool:
        owner, _, attr = name.rpartition(".")
        on_a_loop = owner.endswith(
            ("get_running_loop()", "get_event_loop()", "new_event_loop()")
        ) or owner.rpartition(".")[2] in ("loop", "_loop")
        return (
            name in direct
            or name in ("asyncio.create_task", "asyncio.ensure_future")
            or (attr == "create_task" and on_a_loop)
        )

    return sum(
        1 for node in ast.walk(tree) if isinstance(node, ast.Call) and bare(dotted(node.func))
    )


def unbounded_queues(tree: ast.Module) -> int:
    """``asyncio.Queue()`` (or Lifo/Priority) with no maxsize, or one <= 0."""
    kinds = {"Queue", "LifoQueue", "PriorityQueue"}
    direct = names_from_asyncio(tree) & kinds
    count = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name not in direct and name not in {f"asyncio.{k}" for k in kinds}:
            continue
        size = node.args[0] if node.args else None
        for kw in node.keywords:
            if kw.arg == "maxsize":
                size = kw.value
        if size is None or (
            isinstance(size, ast.Constant) and isinstance(size.value, int) and size.value <= 0
        ):
            count += 1
    return count


def _is_base_exception(node: ast.expr | None) -> bool:
    if node is None:  # a bare ``except:`` catches BaseException too
        return True
    if isinstance(node, ast.Tuple):
        return any(_is_base_exception(e) for e in node.elts)
    return dotted(node) in ("BaseException", "builtins.BaseException")


def base_exception_catches(tree: ast.Module) -> int:
    """``except BaseException`` (or bare ``except:``) and ``suppress(BaseException)``."""

    def catches(node: ast.AST) -> bool:
        if isinstance(node, ast.ExceptHandler):
            return _is_base_exception(node.type)
        return (
            isinstance(node, ast.Call)
            and dotted(node.func) in ("suppress", "contextlib.suppress")
            and any(_is_base_exception(arg) for arg in node.args)
        )

    return sum(1 for node in ast.walk(tree) if catches(node))


def scan(check: Callable[[ast.Module], int], *, exempt: str = "") -> Counter[str]:
    found: Counter[str] = Counter()
    for path, tree in sources():
        if path != exempt and (n := check(tree)):
            found[path] = n
    return found


def assert_only_shrinks(found: Mapping[str, int], known: Mapping[str, int], what: str) -> None:
    new = {path: n for path, n in found.items() if n > known.get(path, 0)}
    assert not new, (
        f"new {what} (file: count now, KNOWN allows {dict(known)}): {new}. "
        "Fix them rather than listing them."
    )
    fixed = {path: (n, found.get(path, 0)) for path, n in known.items() if found.get(path, 0) < n}
    assert not fixed, (
        f"fewer {what} than listed (file: (listed, now)): {fixed}. "
        "Well done: lower or remove these entries in KNOWN so they stay fixed."
    )


def test_tasks_are_started_by_the_supervisor() -> None:
    found = scan(bare_tasks, exempt=SUPERVISOR)
    assert_only_shrinks(found, KNOWN_BARE_TASKS, "bare create_task/ensure_future calls")


def test_queues_are_bounded() -> None:
    assert_only_shrinks(scan(unbounded_queues), KNOWN_UNBOUNDED_QUEUES, "unbounded asyncio queues")


def test_base_exception_is_caught_only_by_the_supervisor() -> None:
    found = scan(base_exception_catches, exempt=SUPERVISOR)
    assert_only_shrinks(found, KNOWN_BASE_EXCEPTION, "except/suppress(BaseException)")


def test_modules_stay_small() -> None:
    lengths = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    grown = {path: n for path, n in long.items() if n > KNOWN_LONG_MODULES.get(path, MAX_LINES)}
    assert not grown, f"modules over {MAX_LINES} lines (or longer than listed): {grown}"
    shorter = {
        path: (n, lengths.get(path, 0))
        for path, n in KNOWN_LONG_MODULES.items()
        if lengths.get(path, 0) < n
    }
    assert not shorter, (
        f"listed long modules got shorter (listed, now): {shorter}; lower their entries "
        f"(remove them once at or under {MAX_LINES})"
    )


def import_cycles() -> list[frozenset[str]]:
    """Strongly connected sets of modules in freight's import graph (grimp
    reads every import statement, inside functions too; ``if TYPE_CHECKING:``
    imports are left out: they name types and load nothing)."""
    graph = grimp.build_graph("freight", exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # Tarjan's algorithm, iterative.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[frozenset[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(frozenset(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def test_no_import_cycles() -> None:
    found = import_cycles()
    new = [sorted(c) for c in found if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"new import cycles: {new}"
    for known in KNOWN_CYCLES:
        still = set().union(*(c for c in found if c <= known))
        assert still == known, (
            f"a listed import cycle shrank to {sorted(still)} (gone: {sorted(known - still)}); "
            "update KNOWN_CYCLES"
        )


def test_the_guards_see_what_they_look_for() -> None:
    # Each checker on a sample, so a guard that silently matches nothing fails.
    sample = ast.parse(
        "import asyncio, contextlib\n"
        "from asyncio import Queue, ensure_future\n"
        "async def f(tg, loop):\n"
        "    asyncio.create_task(g())\n"
        "    ensure_future(g())\n"
        "    asyncio.get_running_loop().create_task(g())\n"
        "    loop.create_task(g())\n"
        "    tg.create_task(g())\n"  # a TaskGroup: fine
        "    asyncio.Queue()\n"
        "    Queue(0)\n"
        "    asyncio.Queue(maxsize=8)\n"  # bounded: fine
        "    asyncio.Queue(depth)\n"  # bounded by a name: fine
        "    try:\n"
        "        pass\n"
        "    except BaseException:\n"
        "        raise\n"
        "    except (OSError, BaseException):\n"
        "        raise\n"
        "    except Exception:\n"  # fine
        "        pass\n"
        "    with contextlib.suppress(BaseException):\n"
        "        pass\n"
    )
    assert bare_tasks(sample) == 4
    assert unbounded_queues(sample) == 2
    assert base_exception_catches(sample) == 3
    assert import_cycles() is not None
