"""The scenario sheet of ``freight loadtest``: a CSV file whose rows are
populations of simulated clients (docs/loadtest.md).

``parse_scenario(text)`` turns the sheet into a :class:`Scenario` of typed
:class:`Row` values or raises :class:`ScenarioError` naming the line, the
row and the column at fault. Nothing here does I/O: the runner reads the
file (and any ``file:PATH`` size) itself.

Bounds: a sheet of at most 1 MiB, 1,000 rows, 1,000 characters a cell,
100,000 clients in all; a row at most 16 faults and 16 expect clauses.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from ..errors import UsageError
from ..units import parse_size

MAX_SHEET: Final = 1 << 20  # bytes
MAX_ROWS: Final = 1000
MAX_CELL: Final = 1000  # characters
MAX_CLIENTS: Final = 100_000  # in all rows together
MAX_CLAUSES: Final = 16  # faults, and expect clauses, per row
MAX_SECONDS: Final = 7 * 86400.0  # any time in the sheet
MAX_RATE: Final = 1_000_000.0  # operations per second
T = TypeVar("T")

ROLES: Final = (
    "agent-idle",
    "push",
    "pull",
    "send",
    "receive",
    "connect",
    "listen",
    "message",
    "request",
    "forward",
    "garbage",
)
# A role that talks to a peer row, and the role that peer row must have.
PEER_ROLE: Final = {
    "connect": "listen",
    "message": "listen",
    "request": "listen",
    "forward": "listen",
    "send": "receive",
}
APP_ROLES: Final = frozenset({"connect", "listen", "message", "request", "forward"})
# Applications that share messaging hosts (the ``hosts`` column).
HOSTED_ROLES: Final = frozenset({"message", "request"})
SIZED_ROLES: Final = frozenset({"push", "pull", "send", "connect", "message", "request", "forward"})
TRANSPORTS: Final = ("auto", "ws", "http", "tls", "direct")
MANNERS: Final = ("auto", "relay", "direct", "ref")

COLUMNS: Final = (
    "id",
    "count",
    "role",
    "peer",
    "app",
    "size",
    "rate",
    "transport",
    "manner",
    "attach_at",
    "ramp",
    "end",
    "faults",
    "expect",
    "hosts",
)
REQUIRED: Final = ("id", "count", "role")

# Faults at a time (``drop@30s``), on a period (``drop_every(30s±10s)``),
# with a rate (``slow_reader(64KiB)``) or bare (``bad_tls``).
TIMED_FAULTS: Final = ("drop", "half_open", "garbage", "reconnect_storm", "hub_kill", "stall")
FAULTS: Final = (*TIMED_FAULTS, "drop_every", "slow_reader", "bad_tls")

# What an expect clause may test, and the kind of value it compares.
LATENCY_METRICS: Final = ("min", "p50", "p90", "p99", "p99.9", "max", "mean")
PERCENT_METRICS: Final = ("attached", "verified", "recovered")
COUNT_METRICS: Final = ("errors", "loss")  # also as a percentage: loss<0.1%
RATE_METRICS: Final = ("throughput",)  # bytes per second
FLAG_METRICS: Final = ("hub_alive",)
OPS: Final = ("<=", ">=", "==", "<", ">", "=")

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_CALL = re.compile(r"^([a-z_]+)\((.*)\)$")
_CLAUSE = re.compile(r"^([a-z_][a-z0-9_.]*)\s*(<=|>=|==|<|>|=)\s*(.+)$")


class ScenarioError(UsageError):
    """The scenario sheet is wrong; the message names the line, row and column."""

    code = "bad_scenario"
    hint = "fix the sheet (docs/loadtest.md describes every column)"


@dataclass(frozen=True)
class Size:
    """Bytes per operation: ``fixed`` (``low`` only), ``uniform`` between
    ``low`` and ``high``, ``lognormal`` with median ``low`` and shape
    ``sigma``, or the size of ``file`` (read by the runner)."""

    kind: str
    low: int = 0
    high: int = 0
    sigma: float = 0.0
    file: str = ""


@dataclass(frozen=True)
class Rate:
    """``per_client`` (N/s for each client: open model), ``total`` (N/s
    shared by the row: open model) or ``concurrency`` (N operations in
    flight per client, each starting when the last ends: closed model)."""

    kind: str
    value: float


@dataclass(frozen=True)
class Fault:
    """``kind`` at ``at`` seconds, or every ``every`` ± ``jitter`` seconds,
    or with a ``rate`` in bytes per second (``slow_reader``)."""

    kind: str
    at: float | None = None
    every: float | None = None
    jitter: float = 0.0
    rate: int | None = None


@dataclass(frozen=True)
class Expect:
    """``metric op value``: latencies in seconds, percentages in percent,
    counts as counts (``percent`` set when written with ``%``), throughput
    in bytes per second; ``hub_alive`` has no op."""

    metric: str
    op: str = ""
    value: float = 0.0
    percent: bool = False
    text: str = ""


@dataclass(frozen=True)
class Row:
    line: int
    id: str
    count: int
    role: str
    peer: str = ""
    app: str = ""
    size: Size | None = None
    rate: Rate | None = None
    transport: str = "auto"
    manner: str = "auto"
    attach_at: float = 0.0
    ramp: float = 0.0
    end: float | None = None
    faults: tuple[Fault, ...] = ()
    expect: tuple[Expect, ...] = ()
    hosts: int | None = None  # message and request rows: the messaging hosts they share


@dataclass(frozen=True)
class Scenario:
    rows: tuple[Row, ...]
    by_id: dict[str, Row] = field(default_factory=dict, compare=False, repr=False)

    @property
    def clients(self) -> int:
        return sum(r.count for r in self.rows)

    def row(self, row_id: str) -> Row:
        return self.by_id[row_id]


class _Cell:
    """Where a value came from, for the error message."""

    def __init__(self, line: int, row_id: str, column: str) -> None:
        self.line, self.row_id, self.column = line, row_id, column

    def error(self, message: str) -> ScenarioError:
        where = f"line {self.line}"
        if self.row_id:
            where += f" (row {self.row_id!r})"
        return ScenarioError(f"{where}, column {self.column}: {message}")


def parse_duration(text: str) -> float:
    """Seconds from ``0``, ``500ms``, ``30s``, ``5m`` or ``1h`` (a bare
    number is seconds); raises ``ValueError`` with the reason."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"{text[:40]!r} is not a time like 500ms, 30s, 5m or 1h")
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    value = float(match.group(1)) * scale
    if not value <= MAX_SECONDS:
        raise ValueError(f"{text[:40]!r} is longer than 7 days")
    return value


def _bytes(text: str) -> int:
    try:
        value = parse_size(text)
    except UsageError:
        raise ValueError(f"{text[:40]!r} is not a size like 512, 1KiB, 64MiB or 1.5G") from None
    return value


def split_clauses(text: str) -> list[str]:
    """``a;b(c;d);e`` → ``["a", "b(c;d)", "e"]``: semicolons inside
    parentheses belong to their call."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("a ')' without its '('")
        elif ch == ";" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("a '(' without its ')'")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_size_cell(text: str) -> Size:
    t = text.strip()
    if t.startswith("file:"):
        path = t[5:].strip()
        if not path or "\x00" in path:
            raise ValueError("file: needs a path, e.g. file:/data/sample.bin")
        return Size("file", file=path)
    call = _CALL.match(t)
    if call is None:
        return Size("fixed", low=_bytes(t))
    name, args = call.group(1), [a.strip() for a in call.group(2).split(";")]
    if name == "uniform" and len(args) == 2:
        low, high = _bytes(args[0]), _bytes(args[1])
        if low > high:
            raise ValueError(f"uniform({args[0]};{args[1]}): the first bound is the larger")
        return Size("uniform", low=low, high=high)
    if name == "lognormal" and len(args) == 2:
        median = _bytes(args[0])
        try:
            sigma = float(args[1])
        except ValueError:
            sigma = -1.0
        if not 0 < sigma <= 4:
            raise ValueError(f"lognormal's shape {args[1][:20]!r} must be a number in (0, 4]")
        return Size("lognormal", low=median, sigma=sigma)
    raise ValueError(
        f"{t[:40]!r} is not a size: use 1KiB, uniform(1MiB;64MiB), lognormal(64KiB;1.5) "
        "or file:PATH"
    )


def parse_rate_cell(text: str) -> Rate:
    t = text.strip().lower()
    kind = "per_client"
    if t.startswith("concurrency:"):
        try:
            n = int(t[12:])
        except ValueError:
            n = 0
        if not 1 <= n <= 10_000:
            raise ValueError(f"{text[:40]!r}: concurrency is a whole number from 1 to 10000")
        return Rate("concurrency", float(n))
    if t.startswith("total:"):
        kind, t = "total", t[6:]
    if not t.endswith("/s"):
        raise ValueError(f"{text[:40]!r} is not a rate: use 50/s, total:1000/s or concurrency:4")
    try:
        value = float(t[:-2])
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_RATE:
        raise ValueError(f"{text[:40]!r}: a rate is more than 0 and at most 1000000/s")
    return Rate(kind, value)


def parse_fault(text: str) -> Fault:
    t = text.strip()
    if t == "bad_tls":
        return Fault("bad_tls")
    if "@" in t:
        kind, _, when = t.partition("@")
        if kind not in TIMED_FAULTS:
            raise ValueError(f"{kind[:30]!r} is not a timed fault ({', '.join(TIMED_FAULTS)})")
        return Fault(kind, at=parse_duration(when))
    call = _CALL.match(t)
    if call and call.group(1) == "drop_every":
        period, sep, jitter = call.group(2).replace("+-", "±").partition("±")
        every = parse_duration(period)
        spread = parse_duration(jitter) if sep else 0.0
        if every <= 0 or spread >= every:
            raise ValueError(f"{t[:40]!r}: the period must be positive and larger than its jitter")
        return Fault("drop_every", every=every, jitter=spread)
    if call and call.group(1) == "slow_reader":
        rate = _bytes(call.group(2))
        if rate <= 0:
            raise ValueError("slow_reader needs a rate above 0, e.g. slow_reader(64KiB)")
        return Fault("slow_reader", rate=rate)
    raise ValueError(
        f"{t[:40]!r} is not a fault: use drop@T, drop_every(T±J), slow_reader(RATE), "
        "half_open@T, garbage@T, bad_tls, reconnect_storm@T, hub_kill@T or stall@T"
    )


def parse_expect(text: str) -> Expect:
    t = text.strip()
    if t in FLAG_METRICS:
        return Expect(t, text=t)
    clause = _CLAUSE.match(t)
    if clause is None:
        raise ValueError(f"{t[:40]!r} is not a clause like p99<50ms, errors=0 or attached>=99%")
    metric, op, raw = clause.group(1), clause.group(2), clause.group(3).strip()
    op = "==" if op == "=" else op
    percent = raw.endswith("%")
    number = raw[:-1] if percent else raw
    if metric in LATENCY_METRICS:
        value = parse_duration(raw)
    elif metric in PERCENT_METRICS:
        if not percent:
            raise ValueError(f"{metric} is a percentage: write {metric}{op}{raw}%")
        value = float(number)
        if not 0 <= value <= 100:
            raise ValueError(f"{raw!r} is not a percentage from 0% to 100%")
    elif metric in COUNT_METRICS:
        value = float(number)
        if value < 0 or (percent and value > 100):
            raise ValueError(f"{raw!r} is not a count (or a percentage with %)")
    elif metric in RATE_METRICS:
        value = float(_bytes(raw.removesuffix("/s").removesuffix("/S")))
    else:
        known = LATENCY_METRICS + PERCENT_METRICS + COUNT_METRICS + RATE_METRICS + FLAG_METRICS
        raise ValueError(f"{metric[:30]!r} is not a metric ({', '.join(known)})")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{raw!r} is not a finite number")
    return Expect(metric, op, value, percent and metric in COUNT_METRICS, t)


def _clauses(text: str, parse: Callable[[str], T], what: str) -> tuple[T, ...]:
    parts = split_clauses(text)
    if len(parts) > MAX_CLAUSES:
        raise ValueError(f"at most {MAX_CLAUSES} {what} in a row")
    return tuple(parse(p) for p in parts)


def _row(line: int, cells: dict[str, str]) -> Row:
    row_id = cells.get("id", "")
    where = _Cell(line, row_id if _ID.match(row_id) else "", "id")
    if not _ID.match(row_id):
        raise where.error(
            f"{row_id[:40]!r} is not a row id (a letter, then up to 31 letters, digits, - or _)"
        )
    values: dict[str, object] = {}
    for column, text in cells.items():
        if column == "id" or not text:
            continue
        where = _Cell(line, row_id, column)
        try:
            values[column] = _cell(column, text)
        except ValueError as e:
            raise where.error(str(e)) from None
    for column in REQUIRED[1:]:
        if column not in values:
            raise _Cell(line, row_id, column).error("is required")
    row = Row(line=line, id=row_id, **values)  # type: ignore[arg-type]
    _check_row(row)
    return row


def _cell(column: str, text: str) -> object:
    if column in ("count", "hosts"):
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_CLIENTS:
            raise ValueError(f"{text[:40]!r} is not a whole number from 1 to {MAX_CLIENTS}")
        return int(text)
    if column == "role":
        if text not in ROLES:
            raise ValueError(f"{text[:40]!r} is not a role ({', '.join(ROLES)})")
        return text
    if column == "peer":
        if text != "*" and not _ID.match(text):
            raise ValueError(f"{text[:40]!r} is not a row id or *")
        return text
    if column == "app":
        if not _APP.match(text):
            raise ValueError(
                f"{text[:40]!r} is not an application name (1-64 of A-Z a-z 0-9 . _ -)"
            )
        return text
    if column == "transport":
        if text not in TRANSPORTS:
            raise ValueError(f"{text[:40]!r} is not a transport ({', '.join(TRANSPORTS)})")
        return text
    if column == "manner":
        if text not in MANNERS:
            raise ValueError(f"{text[:40]!r} is not a manner ({', '.join(MANNERS)})")
        return text
    if column in ("attach_at", "ramp", "end"):
        return parse_duration(text)
    if column == "size":
        return parse_size_cell(text)
    if column == "rate":
        return parse_rate_cell(text)
    if column == "faults":
        return _clauses(text, parse_fault, "faults")
    if column == "expect":
        return _clauses(text, parse_expect, "expect clauses")
    raise AssertionError(column)


def _check_row(row: Row) -> None:
    def fail(column: str, message: str) -> ScenarioError:
        return _Cell(row.line, row.id, column).error(message)

    if row.role in PEER_ROLE and not row.peer:
        raise fail("peer", f"a {row.role} row needs a peer: the id of a {PEER_ROLE[row.role]} row")
    if row.role in APP_ROLES and not row.app:
        raise fail("app", f"a {row.role} row needs an application name")
    if row.size is not None and row.role not in SIZED_ROLES:
        raise fail("size", f"a {row.role} row moves no data: leave size empty")
    if row.role in SIZED_ROLES and row.size is None:
        raise fail("size", f"a {row.role} row needs a size, e.g. 1KiB or uniform(1MiB;64MiB)")
    if row.end is not None and row.end <= row.attach_at + row.ramp:
        raise fail("end", "the row ends before its clients have all started (attach_at + ramp)")
    for fault in row.faults:
        if fault.kind == "slow_reader" and row.role not in ("listen", "receive", "pull"):
            raise fail("faults", "slow_reader applies to listen, receive and pull rows")
    if row.hosts is not None:
        if row.role not in HOSTED_ROLES:
            raise fail("hosts", "hosts applies to message and request rows (applications)")
        if row.hosts > row.count:
            raise fail("hosts", f"{row.hosts} hosts for {row.count} clients: at most one each")


def check_workers(scenario: Scenario, workers: int) -> None:
    """Each messaging host's applications run in one process: a row's
    ``hosts`` must share evenly among ``--workers N`` (client i runs in
    worker i mod N, on host i mod hosts; a host per client needs nothing)."""
    for row in scenario.rows:
        if row.hosts not in (None, row.count) and row.hosts % workers:
            raise _Cell(row.line, row.id, "hosts").error(
                f"{row.hosts} hosts do not share evenly among {workers} workers: "
                f"make it a multiple of {workers}"
            )


def parse_scenario(text: str) -> Scenario:
    """The sheet's text → its rows, checked one by one and then together
    (peers name rows of the right role, ids are unique)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SHEET:
        raise ScenarioError(f"the sheet is larger than {MAX_SHEET} bytes")
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ScenarioError(
            "the sheet is empty: its first line names the columns (id,count,role,…)"
        )
    try:
        records = list(csv.reader(io.StringIO("\n".join(line for _, line in lines))))
    except csv.Error as e:
        raise ScenarioError(f"not a CSV sheet: {e}") from None
    header = [c.strip().lower() for c in records[0]]
    head_line = lines[0][0]
    for column in header:
        if column not in COLUMNS:
            raise ScenarioError(
                f"line {head_line}: {column[:40]!r} is not a column ({', '.join(COLUMNS)})"
            )
    if len(set(header)) != len(header):
        raise ScenarioError(f"line {head_line}: a column is named twice")
    for column in REQUIRED:
        if column not in header:
            raise ScenarioError(f"line {head_line}: the sheet needs a {column!r} column")
    if len(records) - 1 > MAX_ROWS:
        raise ScenarioError(f"at most {MAX_ROWS} rows in a sheet")
    if len(records) != len(lines):  # a quoted cell ran over a line end
        raise ScenarioError("a cell holds a line break; keep each row on one line")
    rows: list[Row] = []
    for (line, _), record in zip(lines[1:], records[1:], strict=True):
        if len(record) > len(header):
            raise ScenarioError(f"line {line}: {len(record)} cells for {len(header)} columns")
        cells = {c: v.strip() for c, v in zip(header, record, strict=False)}
        for column, value in cells.items():
            if len(value) > MAX_CELL:
                raise _Cell(line, "", column).error(f"longer than {MAX_CELL} characters")
        rows.append(_row(line, cells))
    if not rows:
        raise ScenarioError("the sheet has no rows under its header")
    return _checked(rows)


def _checked(rows: list[Row]) -> Scenario:
    by_id: dict[str, Row] = {}
    for row in rows:
        if row.id in by_id:
            raise _Cell(row.line, row.id, "id").error(
                f"{row.id!r} is the id of line {by_id[row.id].line} too"
            )
        by_id[row.id] = row
    for row in rows:
        if row.role == "listen" and row.peer not in ("", "*"):
            raise _Cell(row.line, row.id, "peer").error(
                "a listen row accepts from anyone: leave peer empty or write *"
            )
        if not row.peer or row.peer == "*":
            if row.peer == "*" and row.role in PEER_ROLE:
                raise _Cell(row.line, row.id, "peer").error(
                    f"a {row.role} row names one row as its peer, not *"
                )
            continue
        peer = by_id.get(row.peer)
        if peer is None:
            raise _Cell(row.line, row.id, "peer").error(f"no row has the id {row.peer!r}")
        want = PEER_ROLE.get(row.role)
        if want is not None and peer.role != want:
            raise _Cell(row.line, row.id, "peer").error(
                f"row {peer.id!r} is a {peer.role} row; a {row.role} row's peer is a {want} row"
            )
        if want == "listen" and peer.app and row.app and peer.app != row.app:
            raise _Cell(row.line, row.id, "app").error(
                f"{row.app!r} differs from the application its peer row {peer.id!r} listens on "
                f"({peer.app!r})"
            )
    total = sum(r.count for r in rows)
    if total > MAX_CLIENTS:
        raise ScenarioError(f"{total} clients in all; at most {MAX_CLIENTS}")
    return Scenario(tuple(rows), by_id)
