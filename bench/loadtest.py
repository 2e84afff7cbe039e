"""The load tester's own targets (docs/benchmarks.md "Load tester").

    python bench/loadtest.py capacity [--agents 2000] [--pairs 50] [--rate 400] [--seconds 90]
    python bench/loadtest.py soak [--minutes 30]
    python bench/loadtest.py acceptance [--sheet examples/hub-check.csv] [--duration 5m]

``capacity``: one ``freight loadtest`` process (``--start-hub``: the hub
is its child, on the other core) with ``--agents`` idle agents and
``--pairs`` connections each offered ``--rate`` messages of 128 B a second
(an open model: 50 x 400 = 20,000 a second). Reports the agents attached,
the messages offered (sent) and answered a second over the steady part,
and the tester process's own CPU (its /proc utime + stime; the hub, a child
it has not waited for, is not in it).

``soak``: a light sheet for ``--minutes``; the tester's resident memory
sampled every 10 s, reported as first minute vs the rest (flat: within
±10 %).

``acceptance``: the scaled acceptance sheet against a hub of its own;
every expect's verdict and how long after the run's end the summary was
printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of one process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return (int(stat[11]) + int(stat[12])) / TICK, rss


class Tester:
    """``freight loadtest SHEET …`` with its JSON report and /proc samples."""

    def __init__(self, sheet: str, *args: str, every: float = 1.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-loadtest-"))
        path = self.dir / "sheet.csv"
        path.write_text(sheet)
        env = {**os.environ, "FREIGHT_CONFIG_DIR": str(self.dir / "cfg")}
        cmd = [sys.executable, "-m", "freight", "loadtest", str(path), "--start-hub", "--json"]
        self.proc = subprocess.Popen(
            [*cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.samples: list[tuple[float, float, int]] = []  # (time, cpu s, rss)
        self.every = every
        self.stderr = ""
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            try:
                cpu, rss = usage(self.proc.pid)
            except (OSError, IndexError):
                return
            self.samples.append((time.monotonic(), cpu, rss))
            time.sleep(self.every)

    def report(self, timeout: float) -> dict:
        chunks: list[str] = []
        self.printed = 0.0  # wall-clock time the report's last byte came

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                chunks.append(line)
                self.printed = time.time()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
        self.proc.wait(timeout=timeout)
        reader.join(10)
        out = "".join(chunks)
        self.ended = time.monotonic()
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise SystemExit(f"no report; stderr:\n{self.stderr[-3000:]}") from None


def capacity(a: argparse.Namespace) -> None:
    sheet = (
        "id,count,role,peer,app,size,rate,attach_at,ramp\n"
        f"idle,{a.agents},agent-idle,,,,,0s,{a.ramp}s\n"
        f"echo,{a.pairs},listen,*,bench,,,0s,5s\n"
        f"talk,{a.pairs},connect,echo,bench,128,{a.rate}/s,{a.ramp}s,5s\n"
    )
    t = Tester(sheet, "--duration", f"{a.seconds}s", "--seed", "1")
    report = t.report(a.seconds + 900)
    rows = report["rows"]
    cpu = [100 * (b[1] - x[1]) / (b[0] - x[0]) for x, b in itertools.pairwise(t.samples)]
    busy = cpu[-int(a.seconds - a.ramp - 10) :] if len(cpu) > 20 else cpu
    talk = rows["talk"]
    seconds = report["seconds"] - a.ramp
    out = {
        "agents": a.agents,
        "agents_attached_peak": rows["idle"]["attached_peak"],
        "agents_attached_end": rows["idle"]["attached"],
        "offered_per_second": a.pairs * a.rate,
        "sent_per_second": round(talk["sent"] / seconds),
        "answered_per_second": round(talk["operations"] / seconds),
        "latency_p50_ms": round(talk["latency"].get("p50", 0) * 1000, 1),
        "latency_p99_ms": round(talk["latency"].get("p99", 0) * 1000, 1),
        "tester_cpu_percent_median": round(statistics.median(busy), 1) if busy else None,
        "tester_rss_mib_max": round(max(s[2] for s in t.samples) / 2**20, 1),
        "errors": talk["errors"] | rows["idle"]["errors"],
    }
    print(json.dumps(out, indent=2))


def soak(a: argparse.Namespace) -> None:
    sheet = (
        "id,count,role,peer,app,size,rate,attach_at,ramp,faults\n"
        "idle,200,agent-idle,,,,,0s,20s,reconnect_storm@10m\n"
        "echo,20,listen,*,soak,,,0s,5s,\n"
        "talk,20,connect,echo,soak,1KiB,50/s,5s,5s,drop_every(5m±1m)\n"
        "up,2,push,,,uniform(64KiB;4MiB),1/s,5s,0s,\n"
    )
    t = Tester(sheet, "--duration", f"{a.minutes}m", "--seed", "1", every=10.0)
    report = t.report(a.minutes * 60 + 900)
    rss = [(s[0] - t.samples[0][0], s[2] / 2**20) for s in t.samples]
    first = [r for at, r in rss if 60 <= at < 120]
    rest = [r for at, r in rss if at >= 120]
    base = statistics.median(first)
    # Ten-minute means after five minutes of warming up, first and last.
    early = [r for at, r in rss if 300 <= at < 900]
    late = [r for at, r in rss if at >= rss[-1][0] - 600]
    print(
        json.dumps(
            {
                "minutes": a.minutes,
                "samples": len(rss),
                "rss_mib_second_minute": round(base, 1),
                "rss_mib_min_after": round(min(rest), 1),
                "rss_mib_max_after": round(max(rest), 1),
                "change_percent": round(100 * (max(rest) - base) / base, 1),
                "rss_mib_mean_minutes_5_to_15": round(statistics.mean(early), 1) if early else None,
                "rss_mib_mean_last_10_minutes": round(statistics.mean(late), 1),
                "change_of_means_percent": round(
                    100 * (statistics.mean(late) - statistics.mean(early)) / statistics.mean(early),
                    1,
                )
                if early
                else None,
                "operations": {r: v["operations"] for r, v in report["rows"].items()},
                "rss_every_minute": [round(r, 1) for at, r in rss[::6]],
            },
            indent=2,
        )
    )


def acceptance(a: argparse.Namespace) -> None:
    sheet = Path(a.sheet).read_text()
    seconds = float(a.duration.rstrip("m")) * 60 if a.duration.endswith("m") else None
    t = Tester(sheet, "--duration", a.duration, "--seed", "42")
    report = t.report(3600)
    del seconds
    print(json.dumps({
        "passed": report["passed"],
        "expect": report["expect"],
        "hub_restarts": report["hub_restarts"],
        "summary_after_end_s": round(t.printed - report["ended_at"], 2),
        "exit_after_end_s": round(time.time() - report["ended_at"], 1),
        "latency_ms": {r: {k: round(v * 1000, 1) for k, v in x["latency"].items()}
                       for r, x in report["rows"].items() if x["latency"]},
        "rows": {r: {k: v[k] for k in ("clients", "attached", "operations", "errors", "lost",
                                       "verified", "faults", "recovered")}
                 for r, v in report["rows"].items()},
    }, indent=2))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capacity")
    c.add_argument("--agents", type=int, default=2000)
    c.add_argument("--pairs", type=int, default=50)
    c.add_argument("--rate", type=int, default=400)
    c.add_argument("--ramp", type=int, default=60)
    c.add_argument("--seconds", type=int, default=120)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=int, default=30)
    q = sub.add_parser("acceptance")
    q.add_argument("--sheet", default=str(ROOT / "examples" / "hub-check.csv"))
    q.add_argument("--duration", default="5m")
    a = p.parse_args()
    {"capacity": capacity, "soak": soak, "acceptance": acceptance}[a.cmd](a)


if __name__ == "__main__":
    main()
